"""CachedMoodle, the Moodle that services are handed, on a real MoodleClient and a Moodle mocked with ``responses``:
cached reads, writes that drop their groups once they have ended (whatever their outcome), and what it leaves to the
client."""

import io
import json
from contextlib import nullcontext
from typing import IO, NamedTuple

import pytest
import responses

from lms_api.cache.cachedmoodle import CachedMoodle
from lms_api.cache.localstore import LocalStore
from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import AnswerShape, CacheGroup, MoodleFunction, write
from tests.unit.lms_api.cache.support import MAX_BYTES, TTLS, make_read_cache
from tests.unit.mocked_moodle import (
    INVALID_PARAMETER_BODY,
    KNOWN_FUNCTIONS,
    TOKEN,
    UPLOAD_URL,
    URL,
    add,
    form_of,
    prime,
    reset,
    sent_functions,
    site_info_body,
    ws_function,
)

GET_COURSES = MoodleFunction.GET_COURSES
CREATE_COURSES = MoodleFunction.CREATE_COURSES
NEW_COURSE = {"fullname": "Written", "shortname": "W1", "categoryid": 1}


class Upload(NamedTuple):
    filename: str
    stream: IO[bytes]
    content_type: str


class Site:
    """Moodle's courses as the mocked Moodle answers them; ``created`` is what a create answers."""

    def __init__(self, rsps):
        self.courses = [{"id": 2, "fullname": "Before the write"}]
        rsps.add_callback(responses.POST, URL, callback=self.listing, match=[ws_function(GET_COURSES)])

    def listing(self, request):
        return 200, {}, json.dumps(self.courses)


@pytest.fixture
def cache(clock):
    return make_read_cache(LocalStore(MAX_BYTES, clock), clock)


@pytest.fixture
def front(client, rsps, cache):
    prime(client, rsps)
    return CachedMoodle(client, cache, refresh=False)


def moodle_calls(rsps, function):
    return [dict(form_of(call.request)).get("wsfunction") for call in rsps.calls].count(function)


def test_a_cached_read_asks_moodle_once_and_then_answers_from_the_cache(front, rsps):
    Site(rsps)

    answers = [front.call(GET_COURSES) for _ in range(3)]

    assert answers == [[{"id": 2, "fullname": "Before the write"}]] * 3
    assert moodle_calls(rsps, GET_COURSES) == 1


def test_a_refresh_asks_moodle_each_time(client, rsps, cache):
    prime(client, rsps)
    Site(rsps)

    for _ in range(3):
        CachedMoodle(client, cache, refresh=True).call(GET_COURSES)

    assert moodle_calls(rsps, GET_COURSES) == 3


@pytest.mark.parametrize("ttls", [{**TTLS, "courses": 0}, TTLS])
def test_a_read_not_kept_goes_to_moodle_each_time(client, rsps, clock, ttls):
    prime(client, rsps, (*KNOWN_FUNCTIONS, MoodleFunction.GET_CATEGORIES))
    front = CachedMoodle(client, make_read_cache(LocalStore(MAX_BYTES, clock), clock, ttls=ttls), refresh=False)
    function = GET_COURSES if ttls["courses"] == 0 else MoodleFunction.GET_CATEGORIES  # no TTL, or no group
    add(rsps, function, json=[])

    for _ in range(2):
        front.call(function)

    assert moodle_calls(rsps, function) == 2


def test_the_site_info_is_read_once_when_the_function_list_is_not_known_yet(client, rsps, cache):
    add(rsps, MoodleFunction.SITE_INFO, json=site_info_body())

    info = CachedMoodle(client, cache, refresh=False).call(MoodleFunction.SITE_INFO)

    assert info["sitename"] == "Moodle test"
    assert sent_functions(rsps) == [MoodleFunction.SITE_INFO]  # not once to check it is offered, then again


def test_a_cached_answer_is_not_served_for_a_function_the_token_no_longer_has(front, client, rsps):
    Site(rsps)
    front.call(GET_COURSES)
    client.forget_functions()
    add(rsps, MoodleFunction.SITE_INFO, json=site_info_body([CREATE_COURSES]))

    with pytest.raises(ApiError) as refused:
        front.call(GET_COURSES)

    assert refused.value.code == ErrorCode.FUNCTION_NOT_AVAILABLE
    assert moodle_calls(rsps, GET_COURSES) == 1


# -- writes drop what they change ------------------------------------------------------------------


def test_a_write_drops_its_groups_and_the_next_read_asks_moodle(front, rsps):
    site = Site(rsps)
    front.call(GET_COURSES)
    add(rsps, CREATE_COURSES, json=[{"id": 3, "shortname": "W1"}])

    front.call(CREATE_COURSES, {"courses": [NEW_COURSE]})
    site.courses = [*site.courses, {"id": 3, "fullname": "Written"}]

    assert [course["id"] for course in front.call(GET_COURSES)] == [2, 3]
    assert moodle_calls(rsps, GET_COURSES) == 2


def test_a_write_that_drops_no_group_keeps_the_entries(front, rsps):
    Site(rsps)
    front.call(GET_COURSES)
    add(rsps, MoodleFunction.ENROL_USERS, body="null")

    front.call(MoodleFunction.ENROL_USERS, {"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2}]})
    front.call(GET_COURSES)

    assert moodle_calls(rsps, GET_COURSES) == 1


@pytest.mark.parametrize(
    "failure",
    [
        {"body": INVALID_PARAMETER_BODY},  # Moodle's own error: it may have written part of it
        {"body": reset()},  # sent, then the connection dropped: the outcome is unknown
        {"status": 502, "body": "Bad gateway"},
    ],
    ids=["moodle-error", "reset-after-sending", "http-502"],
)
def test_a_write_that_fails_drops_its_groups_too(front, rsps, failure):
    Site(rsps)
    front.call(GET_COURSES)
    add(rsps, CREATE_COURSES, **failure)

    with pytest.raises(MoodleError):
        front.call(CREATE_COURSES, {"courses": [NEW_COURSE]})
    front.call(GET_COURSES)

    assert moodle_calls(rsps, GET_COURSES) == 2


def test_a_read_that_overlaps_a_write_is_never_served_after_it(front, client, cache, rsps):
    """The drop comes once the write has ended: what a read fetched while the write was in Moodle's hands, from
    before the write, is kept under the old generation, which the drop leaves behind."""
    site = Site(rsps)
    overlapping = []

    def create(request):
        # Another request reads while this write is in Moodle's hands, before it is applied.
        overlapping.append(CachedMoodle(client, cache, refresh=False).call(GET_COURSES))
        site.courses = [*site.courses, {"id": 3, "fullname": "Written"}]
        return 200, {}, json.dumps([{"id": 3, "shortname": "W1"}])

    rsps.add_callback(responses.POST, URL, callback=create, match=[ws_function(CREATE_COURSES)])

    front.call(CREATE_COURSES, {"courses": [NEW_COURSE]})

    assert [course["id"] for course in overlapping[0]] == [2]
    assert [course["id"] for course in front.call(GET_COURSES)] == [2, 3]


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ({"json": [{"itemid": 7, "filename": "notes.txt"}]}, nullcontext()),
        ({"status": 502, "body": "Bad gateway"}, pytest.raises(MoodleError)),  # it may have reached Moodle
    ],
    ids=["uploaded", "http-502"],
)
def test_an_upload_drops_the_groups_its_line_names_as_any_write(front, rsps, monkeypatch, answer, outcome):
    """An upload drops no group today; one its line names later is dropped, whatever the upload's outcome."""
    monkeypatch.setattr(MoodleFunction.UPLOAD, "behaviour", write(AnswerShape.LIST, drops=(CacheGroup.COURSES,)))
    Site(rsps)
    front.call(GET_COURSES)
    rsps.add(responses.POST, UPLOAD_URL, **answer)

    with outcome:
        front.upload([Upload("notes.txt", io.BytesIO(b"notes"), "text/plain")], itemid=7)
    front.call(GET_COURSES)

    assert moodle_calls(rsps, GET_COURSES) == 2


# -- what the client does --------------------------------------------------------------------------


def test_what_is_not_a_call_is_the_clients(front, client, rsps):
    rsps.add(responses.POST, UPLOAD_URL, json=[{"itemid": 7, "filename": "notes.txt"}])

    uploaded = front.upload([Upload("notes.txt", io.BytesIO(b"notes"), "text/plain")], itemid=7)

    assert uploaded == [{"itemid": 7, "filename": "notes.txt"}]
    assert front.max_input_vars == client.max_input_vars
    assert TOKEN not in front.clean(f"failed with {TOKEN}")
    front.require(GET_COURSES, CREATE_COURSES)
    with pytest.raises(ApiError) as refused:
        front.require(MoodleFunction.GET_CATEGORIES)
    assert refused.value.code == ErrorCode.FUNCTION_NOT_AVAILABLE

    front.forget_functions()
    add(rsps, MoodleFunction.SITE_INFO, json=site_info_body())
    front.require(GET_COURSES)

    assert moodle_calls(rsps, MoodleFunction.SITE_INFO) == 2  # the function list was read again
