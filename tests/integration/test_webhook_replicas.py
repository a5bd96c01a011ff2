"""A webhook delivered to one gateway process drops the cache entries of another that shares its Redis: a course
changed in Moodle's own UI is read again on every replica once Moodle's event arrives, and the event is done once
however many replicas it is delivered to."""

import uuid
from urllib.parse import urlencode

import requests

from lms_api.moodle.encoding import encode_params
from tests.support.credentials import mint
from tests.support.processes import clean_env, wait_for_port
from tests.support.servers import free_port

SECRET = "webhook-replica-secret-" + "w" * 40
WEBHOOK_SECRET = "webhook-replica-webhook-secret-" + "h" * 32
MOODLE_TOKEN = "webhook-replicas-token"
COURSE = 2


def test_a_course_event_posted_to_one_replica_drops_the_course_on_the_other(spawn, standalone_sandbox, own_redis):
    _, redis_url = own_redis  # of this test's own: a shared Redis holds other tests' entries and deliveries
    moodle = standalone_sandbox(MOODLE_TOKEN)
    env = clean_env(
        MOODLE_BASE_URL=moodle,
        MOODLE_TOKEN=MOODLE_TOKEN,
        JWT_SECRET=SECRET,
        REDIS_URL=redis_url,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    ports = [free_port(), free_port()]
    replicas = [spawn("pserve", "production.ini", f"http_port={port}", env=env) for port in ports]
    for port, replica in zip(ports, replicas, strict=True):
        wait_for_port(port, replica)
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    reader = {"Authorization": "Bearer " + mint("courses:read", secret=SECRET, sub="webhook-replicas")}

    def read_on_b():
        response = requests.get(f"{b}/api/moodle/courses/{COURSE}", headers=reader, timeout=10)
        assert response.status_code == 200, response.text
        return response.headers["Cache-Status"], response.json()["data"]["fullname"]

    def deliver(replica):
        fields = {
            "eventname": "\\core\\event\\course_updated",
            "objectid": str(COURSE),
            "courseid": str(COURSE),
            "userid": "2",
            "relateduserid": "",
            "contextinstanceid": str(COURSE),
            "timecreated": "1700000000",
        }
        headers = {"Authorization": f"Bearer {WEBHOOK_SECRET}", "Content-Type": "application/x-www-form-urlencoded"}
        url = f"{replica}/api/moodle/webhooks/moodle"
        response = requests.post(url, data=urlencode(fields), headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    read_on_b()
    status, before = read_on_b()
    assert status.startswith("lms_api; hit; ttl=")
    renamed = f"Renamed in Moodle {uuid.uuid4().hex[:6]}"
    form = {"wstoken": MOODLE_TOKEN, "wsfunction": "core_course_update_courses", "moodlewsrestformat": "json"}
    params = encode_params({"courses": [{"id": COURSE, "fullname": renamed}]})
    requests.post(f"{moodle}/webservice/rest/server.php", data=[*form.items(), *params], timeout=10).raise_for_status()
    assert read_on_b()[1] == before  # B keeps the course as it was cached

    handled = deliver(a)

    assert handled["handled"] is True and handled["dropped"] == ["courses"]
    assert read_on_b() == ("lms_api; fwd=uri-miss; stored", renamed)
    assert deliver(b) == {"event": "\\core\\event\\course_updated", "duplicate": True}  # done once for both
    assert read_on_b()[0].startswith("lms_api; hit; ttl=")
