"""Every recorded answer of a real Moodle 5.0 (``tests/moodle_golden/``) replayed against the sandbox over HTTP.

Each recording has an entry in ``REPLAYS``: a function that builds a site in the state the real Moodle was in for
that call (the README of the folder tells the story), and, for upload.php (recorded without a request file), the
request itself. REST requests are read from ``NAME.request.txt``. Answers are compared byte for byte, with the HTTP
status and, where headers were recorded, the Content-Type; the only values replaced before comparing are those an
entry names in ``varying`` (a new draft area's random ``itemid``).

The recordings come from two sites: "site A" (November 2026: PY101 "Intro", then "Intro to Python", created as
course 2, students 3 and 4) and "site B" (December 2026: course 2 "Python 101", later course 6 "Phantom Zebra",
both moved into the missing category 999999; on December 3, users 1806 ``alice084236`` and 1807 ``bob084236``
created, then refused creations and per-user updates).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from lms_api.moodle.encoding import encode_params
from moodle_sandbox.errors import MoodleException
from moodle_sandbox.phpform import parse_php_form
from moodle_sandbox.server import SandboxServer
from moodle_sandbox.site import SandboxSite
from tests.support.paths import GOLDEN_DIR

GOLDEN_URL = "http://127.0.0.1:8088"
TOKEN = "golden-replay-token-0123456789abcd"
SITE_INFO = "core_webservice_get_site_info"
HELLO = b"print('hello from moodle')"  # 26 bytes, as the recorded hello.py
NOTES = b"notes for the lesson"  # 20 bytes, as the recorded notes.txt
MISSING_CATEGORY = 999999
ALICE, BOB = 1806, 1807  # the users core_user_create_users__two created on site B


def golden_bytes(name: str) -> bytes:
    """A recorded file, e.g. ``error_bad_token.json`` or ``debug_mode/error_bad_token.json``."""
    return (GOLDEN_DIR / name).read_bytes()


def golden_text(name: str) -> str:
    return golden_bytes(name).decode()


def golden_json(name: str) -> Any:
    return json.loads(golden_bytes(name))


# --- Building sites ---------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rest(site: SandboxSite, function: str, **params: Any) -> Any:
    """A call made while building a site; it must succeed."""
    form, _ = parse_php_form([("wstoken", site.token), ("wsfunction", function), *encode_params(params)], 5000)
    return site.rest(form)


def site_a(now: int = 1795619432, debug: bool = False, **options: Any) -> SandboxSite:
    """Site A as installed: its front page, Category 1, the admin, and the students without idnumbers."""
    site = SandboxSite(TOKEN, base_url=GOLDEN_URL, clock=Clock(now), debug=debug, **options)
    state = site.state
    for course_id in (2, 3, 4, 5):
        del state.courses[course_id]
    for category_id in (2, 3):
        del state.categories[category_id]
    for user_id in (5, 6):
        del state.users[user_id]
    for notification_id in (3, 4):
        del state.notifications[notification_id]
    state.categories[1].coursecount = 0
    state.sequences["course"] = 1
    front = state.courses[1]
    front.shortname, front.fullname, front.sortorder = "realmoodle", "Real Moodle Test", 0
    front.timecreated, front.timemodified = 1795619321, 1795619361
    for user_id in (3, 4):
        state.users[user_id].idnumber = ""
    return site


def site_a_with_course(debug: bool = False, now: int = 1795619432) -> SandboxSite:
    """After core_course_create_courses.request.txt."""
    site = site_a(now, debug)
    rest(site, "core_course_create_courses", courses=[{"fullname": "Intro", "shortname": "PY101", "categoryid": 1}])
    return site


def site_a_with_updated_course(debug: bool = False, now: int = 1795619432) -> SandboxSite:
    """After core_course_update_courses.request.txt as well."""
    site = site_a_with_course(debug, now)
    update = {"id": 2, "fullname": "Intro to Python", "summary": "Updated via REST"}
    rest(site, "core_course_update_courses", courses=[update])
    return site


def site_a_enrolled() -> SandboxSite:
    """After enrol_manual_enrol_users.request.txt as well."""
    site = site_a_with_updated_course()
    site.clock.now = 1795619440
    enrolments = [{"roleid": 5, "userid": user_id, "courseid": 2} for user_id in (3, 4)]
    rest(site, "enrol_manual_enrol_users", enrolments=enrolments)
    return site


def site_a_without_students() -> SandboxSite:
    """Before core_user_create_users.request.txt: the admin and the guest only."""
    site = site_a()
    for user_id in (3, 4):
        del site.state.users[user_id]
    site.state.sequences["user"] = 2
    return site


def site_a_without_notifications(debug: bool = False) -> SandboxSite:
    site = site_a(debug=debug)
    site.state.notifications.clear()
    return site


def site_a_with_notifications() -> SandboxSite:
    """The two notifications the CLI script sent to the admin, four seconds before the calls."""
    site = site_a(now=1795619453)
    for notification in site.state.notifications.values():
        notification.timecreated = 1795619449
    return site


def site_a_site_info() -> SandboxSite:
    """The "fullapi" service holds every function of the recorded site, and the admin has their private key."""
    recorded = golden_json("core_webservice_get_site_info.json")
    site = site_a(service_functions=[function["name"] for function in recorded["functions"]])
    site.private_access_key = recorded["userprivateaccesskey"]
    return site


def site_a_limited_service(debug: bool = False) -> SandboxSite:
    """The second token's "limitedapi" service, which holds only core_webservice_get_site_info."""
    return site_a(debug=debug, service_functions=[SITE_INFO])


def site_b(now: int = 1796114188, python_sortorder: int = 10004) -> SandboxSite:
    """Site B with course 2 "Python 101" in Category 1; the other seeded courses are gone."""
    site = SandboxSite(TOKEN, base_url=GOLDEN_URL, clock=Clock(now))
    state = site.state
    for course_id in (3, 4, 5):
        del state.courses[course_id]
    course = state.courses[2]
    course.fullname, course.summary = "Python 101", "Test course for the REST gateway"
    course.sortorder = python_sortorder
    course.newsitems, course.enablecompletion, course.startdate, course.enddate = 1, 0, 0, 0
    course.timecreated = course.timemodified = 1796112546
    return site


def site_b_python_moved() -> SandboxSite:
    """Course 2 after a move into category 999999; its course cache had last been rebuilt in the same second."""
    site = site_b(now=1796114138)
    site.state.courses[2].cacherev = 1796114138
    answer = rest(site, "core_course_update_courses", courses=[{"id": 2, "categoryid": MISSING_CATEGORY}])
    assert answer["warnings"][0]["warningcode"] == "invalidrecordunknown"
    return site


def site_b_zebra() -> SandboxSite:
    """Course 6 "Phantom Zebra" just created in Category 1 (its creation rebuilt the cache up to 1796114190)."""
    site = site_b()
    created = rest(
        site,
        "core_course_create_courses",
        courses=[{"fullname": "Phantom Zebra", "shortname": "PHANTOMZ", "categoryid": 1}],
    )
    assert created == [{"id": 6, "shortname": "PHANTOMZ"}]
    zebra = site.state.courses[6]
    zebra.contextid, zebra.cacherev = 1821, 1796114190
    return site


def site_b_zebra_moved() -> SandboxSite:
    """After core_course_update_courses__category_missing.request.txt."""
    site = site_b_zebra()
    answer = rest(site, "core_course_update_courses", courses=[{"id": 6, "categoryid": MISSING_CATEGORY}])
    assert answer["warnings"][0]["warningcode"] == "invalidrecordunknown"
    return site


def replay_on(site: SandboxSite, name: str) -> Any:
    """The call recorded as ``name`` made again while building a site."""
    request = recorded_request(name)
    form, _ = parse_php_form([("wstoken", site.token), ("wsfunction", request.function), *request.params], 5000)
    return site.rest(form)


def site_b_before_users() -> SandboxSite:
    """Site B on December 3: 1805 user ids used, and a theme cache purged since December 1."""
    site = site_b(now=1796287358)
    site.state.sequences["user"] = ALICE - 1
    site.theme_revision = 1796286571
    return site


def site_b_with_users() -> SandboxSite:
    """After core_user_create_users__two.request.txt: alice with a password, bob with createpassword."""
    site = site_b_before_users()
    assert replay_on(site, "core_user_create_users__two.json") == golden_json("core_user_create_users__two.json")
    return site


def site_b_after_failed_batch() -> SandboxSite:
    """After core_user_create_users__batch_one_bad.request.txt, which created nobody."""
    site = site_b_with_users()
    with pytest.raises(MoodleException):
        replay_on(site, "core_user_create_users__batch_one_bad.json")
    return site


def site_b_alice_updated() -> SandboxSite:
    """After core_user_update_users.request.txt (alice renamed Alicia, in Oslo)."""
    site = site_b_with_users()
    assert replay_on(site, "core_user_update_users.json") == {"warnings": []}
    return site


def site_b_after_mixed_update() -> SandboxSite:
    """After core_user_update_users__mixed.request.txt: bob renamed Robert, the missing user warned about."""
    site = site_b_alice_updated()
    assert replay_on(site, "core_user_update_users__mixed.json") == golden_json("core_user_update_users__mixed.json")
    return site


def debug_site() -> SandboxSite:
    return site_a(debug=True)


# --- The replays ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """An upload.php request: ``files`` as (field, file name, bytes)."""

    files: tuple[tuple[str, str, bytes], ...] = ()
    token: str = TOKEN
    fields: tuple[tuple[str, str], ...] = (("filearea", "draft"), ("itemid", "0"))


@dataclass(frozen=True)
class Replay:
    site: Callable[[], SandboxSite]
    upload: Upload | None = None
    token: str = TOKEN
    varying: tuple[str, ...] = ()  # JSON keys whose recorded values cannot be reproduced


REPLAYS: dict[str, Replay] = {
    # Courses, site A.
    "core_course_create_courses.json": Replay(site_a),
    "core_course_get_courses__before.json": Replay(site_a),
    "core_course_update_courses.json": Replay(site_a_with_course),
    "core_course_get_courses.json": Replay(site_a_with_updated_course),
    "core_course_get_courses__by_ids.json": Replay(site_a_with_updated_course),
    "error_duplicate_shortname.json": Replay(site_a_with_updated_course),
    "error_update_nonexistent_course.json": Replay(site_a_with_updated_course),
    "debug_mode/error_update_nonexistent_course.json": Replay(lambda: site_a_with_updated_course(debug=True)),
    "error_invalid_parameter_type_courseids.json": Replay(site_a_with_updated_course),
    "error_missing_parameter_create_course.json": Replay(site_a_with_updated_course),
    "debug_mode/error_missing_parameter_create_course.json": Replay(debug_site),
    # Courses, site B.
    "core_course_get_courses__ids_missing.json": Replay(lambda: site_b(python_sortorder=10003)),
    "core_course_search_courses.json": Replay(site_b),
    "core_course_get_courses_by_field__id.json": Replay(site_b_python_moved),
    "core_course_get_courses_by_field__id_missing.json": Replay(site_b),
    "core_course_get_courses_by_field__ids_missing.json": Replay(site_b),
    "core_course_update_courses__category_missing.json": Replay(site_b_zebra),
    "core_course_get_courses_by_field__category_missing.json": Replay(site_b_zebra_moved),
    "core_course_search_courses__category_missing.json": Replay(site_b_zebra_moved),
    # Enrolment.
    "enrol_manual_enrol_users.json": Replay(site_a_with_updated_course),
    "core_enrol_get_enrolled_users.json": Replay(site_a_enrolled),
    "error_enrol_nonexistent_course.json": Replay(site_a_enrolled),
    "debug_mode/error_enrol_nonexistent_course.json": Replay(lambda: site_a_with_course(debug=True)),
    "error_enrol_nonexistent_user.json": Replay(site_b),
    # Users.
    "core_user_create_users.json": Replay(site_a_without_students),
    "error_duplicate_username.json": Replay(site_a),
    "debug_mode/error_duplicate_username.json": Replay(debug_site),
    "error_weak_password.json": Replay(site_a),
    "core_user_get_users_by_field.json": Replay(site_a),
    "core_user_get_users_by_field__two.json": Replay(site_a),
    "core_user_get_users_by_field__nomatch.json": Replay(site_a),
    "error_missing_parameter.json": Replay(site_a),
    "debug_mode/error_missing_parameter.json": Replay(debug_site),
    # Users, site B (December 3).
    "core_user_create_users__two.json": Replay(site_b_before_users),
    "core_user_create_users__batch_one_bad.json": Replay(site_b_with_users),
    "core_user_get_users_by_field__after_failed_batch.json": Replay(site_b_after_failed_batch),
    "core_user_create_users__duplicate_email.json": Replay(site_b_after_failed_batch),
    "core_user_create_users__bad_email.json": Replay(site_b_after_failed_batch),
    "core_user_create_users__uppercase_username.json": Replay(site_b_after_failed_batch),
    "core_user_create_users__no_password.json": Replay(site_b_after_failed_batch),
    "core_user_create_users__same_username_twice.json": Replay(site_b_after_failed_batch),
    "core_user_update_users.json": Replay(site_b_with_users),
    "core_user_update_users__missing_id.json": Replay(site_b_alice_updated),
    "core_user_update_users__mixed.json": Replay(site_b_alice_updated),
    "core_user_get_users_by_field__after_mixed_update.json": Replay(site_b_after_mixed_update),
    "core_user_update_users__bad_email.json": Replay(site_b_after_mixed_update),
    "core_user_update_users__duplicate_username.json": Replay(site_b_after_mixed_update),
    "core_user_update_users__weak_password.json": Replay(site_b_after_mixed_update),
    "core_user_update_users__suspend.json": Replay(site_b_after_mixed_update),
    # Notifications.
    "message_popup_get_popup_notifications.json": Replay(site_a_without_notifications),
    "message_popup_get_unread_popup_notification_count.json": Replay(site_a_without_notifications),
    "message_popup_get_popup_notifications__with_two_unread.json": Replay(site_a_with_notifications),
    "message_popup_get_popup_notifications__limit1.json": Replay(site_a_with_notifications),
    "message_popup_get_unread_popup_notification_count__two_unread.json": Replay(site_a_with_notifications),
    "message_popup_get_popup_notifications__student_other_user.json": Replay(site_a_with_notifications),
    "error_invalid_parameter_type.json": Replay(site_a_without_notifications),
    "debug_mode/error_invalid_parameter_type.json": Replay(lambda: site_a_without_notifications(debug=True)),
    "error_popup_notifications_nonexistent_user.json": Replay(site_b),
    "message_popup_get_unread_popup_notification_count__missing_user.json": Replay(site_b),
    # The REST server's own checks.
    "core_webservice_get_site_info.json": Replay(site_a_site_info),
    "error_bad_token.json": Replay(site_a, token="not-the-token"),
    "debug_mode/error_bad_token.json": Replay(debug_site, token="not-the-token"),
    "error_function_not_in_service.json": Replay(site_a_limited_service),
    "debug_mode/error_function_not_in_service.json": Replay(lambda: site_a_limited_service(debug=True)),
    "error_missing_wsfunction.json": Replay(site_a),
    # Functions a stock Moodle 5.0 does not have.
    "core_message_get_popup_notifications.json": Replay(site_a),
    "debug_mode/core_message_get_popup_notifications.json": Replay(debug_site),
    "core_message_get_unread_popup_notifications_count.json": Replay(site_a),
    "mod_resource_add_resource.json": Replay(site_a),
    "debug_mode/mod_resource_add_resource.json": Replay(debug_site),
    # upload.php (recorded without request files).
    "upload_draft.json": Replay(site_a, Upload(files=(("file_1", "hello.py", HELLO),)), varying=("itemid",)),
    "upload_draft_two_files.json": Replay(
        site_a,
        Upload(files=(("file_1", "hello.py", HELLO), ("file_2", "notes.txt", NOTES))),
        varying=("itemid",),
    ),
    "upload_error_no_file.json": Replay(site_a, Upload()),
    "upload_error_bad_token.json": Replay(site_a, Upload(files=(("file_1", "hello.py", HELLO),), token="wrong")),
    "debug_mode/upload_error_bad_token.json": Replay(
        debug_site, Upload(files=(("file_1", "hello.py", HELLO),), token="wrong")
    ),
}


def recordings() -> list[str]:
    """Every recorded answer in the folder, debug mode included, e.g. ``debug_mode/error_bad_token.json``."""
    return sorted(path.relative_to(GOLDEN_DIR).as_posix() for path in GOLDEN_DIR.rglob("*.json"))


@dataclass(frozen=True)
class RecordedRequest:
    function: str
    params: list[tuple[str, str]]
    status: int


def recorded_request(name: str) -> RecordedRequest:
    """``NAME.request.txt``: the URL, the REST server's own parameters, one ``key=value`` a line, the status."""
    lines = golden_text(name.removesuffix(".json") + ".request.txt").splitlines()
    head = dict(word.split("=", 1) for word in lines[1].split(" "))
    assert head["wstoken"] == "<token>" and head["moodlewsrestformat"] == "json", lines[1]
    status = lines[-1]
    assert re.fullmatch(r"HTTP \d{3}", status), status
    params = []
    for line in lines[2:-1]:
        key, equals, value = line.partition("=")
        assert equals, line
        params.append((key, value))
    return RecordedRequest(head["wsfunction"], params, int(status.split()[1]))


def recorded_content_type(name: str) -> str | None:
    path = GOLDEN_DIR / (name.removesuffix(".json") + ".headers.txt")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        header, _, value = line.partition(":")
        if header.lower() == "content-type":
            return value.strip()
    raise AssertionError(f"{path.name} has no Content-Type")


def replace_varying(actual: bytes, recorded: bytes, keys: tuple[str, ...]) -> bytes:
    """``actual`` with the value of each ``"key":`` put back to the recorded one, occurrence by occurrence."""
    for key in keys:
        pattern = re.compile(rb'("' + re.escape(key.encode()) + rb'":)(-?\d+|"(?:[^"\\]|\\.)*")')
        wanted = [match.group(2) for match in pattern.finditer(recorded)]
        found = pattern.findall(actual)
        assert len(found) == len(wanted), f"{key}: {len(found)} in the answer, {len(wanted)} recorded"
        actual = _put_back(pattern, actual, wanted)
    return actual


def _put_back(pattern: re.Pattern[bytes], actual: bytes, values: list[bytes]) -> bytes:
    remaining = iter(values)
    return pattern.sub(lambda match: match.group(1) + next(remaining), actual)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    """One server for every replay; each replay puts its own site behind it."""
    sandbox = SandboxServer(SandboxSite(TOKEN)).start()
    yield sandbox
    sandbox.stop()


def send(server: SandboxServer, name: str, replay: Replay) -> tuple[requests.Response, int]:
    if replay.upload is not None:
        upload = replay.upload
        files = [(field, (filename, content)) for field, filename, content in upload.files]
        data = [("token", upload.token), *upload.fields]
        response = requests.post(f"{server.url}/webservice/upload.php", data=data, files=files or None, timeout=10)
        return response, 200
    request = recorded_request(name)
    data = [
        ("wstoken", replay.token),
        ("wsfunction", request.function),
        ("moodlewsrestformat", "json"),
        *request.params,
    ]
    response = requests.post(f"{server.url}/webservice/rest/server.php", data=data, timeout=10)
    return response, request.status


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_the_sandbox_answers_every_recorded_call_like_the_real_moodle(server, name):
    replay = REPLAYS[name]
    site = replay.site()
    assert site.debug == name.startswith("debug_mode/")
    server.site = site
    site.base_url = GOLDEN_URL  # the recorded site's address, which the answers repeat
    response, status = send(server, name, replay)
    recorded = golden_bytes(name)
    assert response.status_code == status
    assert replace_varying(response.content, recorded, replay.varying) == recorded
    content_type = recorded_content_type(name)
    if content_type is not None:
        assert response.headers["Content-Type"] == content_type


def test_every_recording_has_a_replay_and_every_replay_a_recording():
    assert sorted(REPLAYS) == recordings()


def test_every_rest_recording_has_its_request_and_a_json_content_type():
    for name in recordings():
        if REPLAYS[name].upload is None:
            assert recorded_request(name).status == 200, name  # Moodle's REST server answers errors with 200 too
            assert recorded_content_type(name) == "application/json", name


def test_the_varying_values_are_only_the_new_draft_item():
    """The replaced itemids are one new draft area per answer, as upload.php gives."""
    for name in ("upload_draft.json", "upload_draft_two_files.json"):
        recorded = golden_json(name)
        assert len({entry["itemid"] for entry in recorded}) == 1
    assert {replay.varying for replay in REPLAYS.values()} == {(), ("itemid",)}
