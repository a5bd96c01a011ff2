"""Each caller's draft items are its own: attaching, or adding files to, an item another caller uploaded or the gateway
never issued is a 404 draftnotfound, with the same answer as for an item that does not exist."""

import pytest
import redis
import requests
from pyramid.request import Request, apply_request_extensions

from lms_api import drafts, redisstate
from lms_api.drafts import DRAFT_LIFETIME_S, KEY_PREFIX, LocalDraftOwners, RedisDraftOwners
from tests.support.credentials import mint
from tests.support.sandbox import sandbox_calls
from tests.support.servers import free_port, start_redis_server
from tests.support.timing import FakeClock

ADA = mint("files:write", sub="ada")
BO = mint("files:write", sub="bo")
UPLOAD = "/api/moodle/files/upload"
ATTACH = "/api/moodle/files/attach"
HELLO = ("file", "hello.py", b"print('hello')\n")


def upload(gateway, token, itemid=None):
    if itemid is None:
        return gateway.upload(UPLOAD, [HELLO], token)
    return gateway.upload(UPLOAD, [("file", "more.txt", b"more")], token, fields=[("itemid", str(itemid))])


def attach(gateway, token, itemid):
    return gateway.post(ATTACH, {"courseid": 2, "draftitemid": itemid, "name": "Hello"}, token)


def calls(sandbox):
    counted = sandbox_calls(sandbox)
    return counted.get("upload.php", 0), counted.get("local_course_add_new_course_module_resource", 0)


def assert_draft_not_found(response, itemid):
    assert response.status_int == 404
    error = response.json["error"]
    assert error["code"] == "draftnotfound"
    assert error["details"] == {"draftitemid": itemid}
    return error["message"].replace(str(itemid), "N")


def test_a_caller_attaches_its_own_draft(gateway):
    itemid = upload(gateway, ADA).json["data"]["itemid"]

    assert attach(gateway, ADA, itemid).status_int == 201


def test_another_callers_draft_is_answered_as_a_missing_one_and_moodle_is_not_called(gateway, sandbox):
    itemid = upload(gateway, ADA).json["data"]["itemid"]
    before = calls(sandbox)

    others = assert_draft_not_found(attach(gateway, BO, itemid), itemid)
    guessed = assert_draft_not_found(attach(gateway, BO, 1), 1)
    added = assert_draft_not_found(upload(gateway, BO, itemid), itemid)

    assert others == guessed == added
    assert calls(sandbox) == before
    assert upload(gateway, ADA, itemid).status_int == 201  # the owner still adds to it


def test_an_id_the_gateway_never_issued_is_refused_even_when_moodle_has_it(gateway, sandbox):
    # A draft made in Moodle behind the gateway's back, by another client of the same token.
    made = requests.post(
        sandbox.url + "/webservice/upload.php",
        data={"token": sandbox.site.token, "itemid": "0", "filepath": "/"},
        files={"file_1": ("elsewhere.txt", b"made elsewhere")},
        timeout=10,
    )
    itemid = made.json()[0]["itemid"]

    assert_draft_not_found(attach(gateway, ADA, itemid), itemid)
    assert_draft_not_found(upload(gateway, ADA, itemid), itemid)


def test_two_gateways_sharing_redis_share_who_owns_each_draft(make_gateway, empty_redis):
    first, second = make_gateway(REDIS_URL=empty_redis), make_gateway(REDIS_URL=empty_redis)
    itemid = upload(first, ADA).json["data"]["itemid"]

    assert_draft_not_found(attach(second, BO, itemid), itemid)
    assert upload(second, ADA, itemid).status_int == 201
    assert attach(second, ADA, itemid).status_int == 201
    ttl = redis.Redis.from_url(empty_redis).ttl(KEY_PREFIX + str(itemid))
    assert DRAFT_LIFETIME_S - 60 < ttl <= DRAFT_LIFETIME_S


def test_adding_files_does_not_renew_a_drafts_lifetime(empty_redis):
    owners = RedisDraftOwners.from_url(empty_redis)
    owners.remember(7, "ada")
    stored = redis.Redis.from_url(empty_redis)
    stored.expire(KEY_PREFIX + "7", 100)

    owners.remember(7, "ada")

    assert 0 < stored.ttl(KEY_PREFIX + "7") <= 100  # -1 (no expiry) and -2 (no key) are not a lifetime
    assert stored.get(KEY_PREFIX + "7") == b"ada"


def test_a_second_upload_to_a_draft_never_changes_its_owner_in_redis(empty_redis):
    first, other_replica = RedisDraftOwners.from_url(empty_redis), RedisDraftOwners.from_url(empty_redis)
    first.remember(7, "ada")

    other_replica.remember(7, "bo")

    assert redis.Redis.from_url(empty_redis).get(KEY_PREFIX + "7") == b"ada"
    assert other_replica.owner(7) == first.owner(7) == "ada"


def test_a_draft_uploaded_while_redis_was_down_is_still_its_owners_once_redis_is_back(
    make_gateway, own_redis, monkeypatch
):
    monkeypatch.setattr(redisstate, "RETRY_AFTER_S", 0.0)  # Redis is asked again on the next call, not 5 s later
    process, url = own_redis
    gateway = make_gateway(REDIS_URL=url)
    process.kill()
    process.wait(10)
    itemid = upload(gateway, ADA).json["data"]["itemid"]
    restarted, _ = start_redis_server(port=int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        refused = attach(gateway, BO, itemid)
        attached = attach(gateway, ADA, itemid)
        stored = redis.Redis.from_url(url).get(KEY_PREFIX + str(itemid))
    finally:
        restarted.terminate()
        restarted.wait(10)

    assert_draft_not_found(refused, itemid)
    assert attached.status_int == 201
    assert stored is None  # the owner came from this process's memory, not from the Redis now answering
    events = [line["event"] for line in gateway.log_lines if line["event"].startswith("drafts.")]
    assert events == ["drafts.redis_unavailable", "drafts.redis_restored"]


def test_without_redis_answering_the_process_still_knows_the_drafts_it_issued():
    owners = RedisDraftOwners.from_url(f"redis://127.0.0.1:{free_port()}/0")

    owners.remember(7, "ada")

    assert owners.link.down
    assert owners.owner(7) == "ada"
    assert owners.owner(8) is None


def test_a_draft_is_forgotten_when_moodle_deletes_it():
    clock = FakeClock()
    owners = LocalDraftOwners(clock)
    owners.remember(7, "ada")
    clock.advance(DRAFT_LIFETIME_S - 1)
    owners.remember(7, "bo")  # the first upload's owner and lifetime stand

    assert owners.owner(7) == "ada"
    clock.advance(1)
    assert owners.owner(7) is None


def test_the_in_process_store_is_bounded_and_forgets_the_oldest_first(monkeypatch):
    monkeypatch.setattr(drafts, "MAX_LOCAL_DRAFTS", 3)
    owners = LocalDraftOwners(FakeClock())

    for itemid in range(1, 6):
        owners.remember(itemid, "ada")

    assert [owners.owner(itemid) for itemid in range(1, 6)] == [None, None, "ada", "ada", "ada"]


@pytest.mark.parametrize("redis_url", [None, "redis"], ids=["in-process", "redis"])
def test_the_store_follows_the_settings(make_gateway, empty_redis, redis_url):
    gateway = make_gateway(**({"REDIS_URL": empty_redis} if redis_url else {}))

    requests = [Request.blank("/"), Request.blank("/")]
    for request in requests:
        request.registry = gateway.router.registry
        apply_request_extensions(request)

    assert isinstance(requests[0].draft_owners, RedisDraftOwners if redis_url else LocalDraftOwners)
    assert requests[1].draft_owners is requests[0].draft_owners  # one store, made at start


def test_the_files_stored_before_a_refused_one_are_the_callers_to_attach(make_sandbox, make_gateway):
    small = make_sandbox(max_bytes=10)
    gateway = make_gateway(base_url=small.url, token=small.site.token)

    refused = gateway.upload(UPLOAD, [("file", "small.txt", b"short"), ("file", "big.bin", b"x" * 20)], ADA)

    assert refused.json["error"]["code"] == "fileoversized"
    itemid = refused.json["error"]["details"]["itemid"]
    assert_draft_not_found(attach(gateway, BO, itemid), itemid)
    assert attach(gateway, ADA, itemid).status_int == 201
