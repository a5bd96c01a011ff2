"""Background jobs in a real ``pserve``: stopping the process cancels the queued jobs and lets the running one end
its Moodle call, never cutting one short."""

import json
import signal

import requests

from tests.integration.test_server_limits import (
    MOODLE_TOKEN,
    SECRET,
    moodle_calls_in_flight,
    queue_delays,
    start_gateway,
)
from tests.support.credentials import mint
from tests.support.timing import eventually

ENROL = "enrol_manual_enrol_users"


def sandbox_calls(moodle):
    response = requests.get(f"{moodle}/__sandbox__/calls", headers={"X-Sandbox-Token": MOODLE_TOKEN}, timeout=5)
    return response.json()["calls"].get(ENROL, 0)


def test_a_stopping_gateway_cancels_queued_jobs_and_ends_the_running_call(spawn, standalone_sandbox, tmp_path):
    moodle = standalone_sandbox(MOODLE_TOKEN)
    gateway, base, log_file = start_gateway(spawn, tmp_path, moodle, JOBS_WORKERS="1")
    queue_delays(moodle, ENROL, 2.0)
    headers = {"Authorization": f"Bearer {mint('enrol:write jobs:read', secret=SECRET)}", "Prefer": "respond-async"}
    body = {"enrolments": [{"roleid": "student", "userid": 3, "courseid": 2}]}
    answers = [requests.post(f"{base}/api/moodle/enrol", json=body, headers=headers, timeout=10) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [202, 202]
    first, second = (answer.json()["data"]["id"] for answer in answers)
    eventually(lambda: moodle_calls_in_flight(moodle) == 1, "the first job's call at Moodle", 10)

    gateway.send_signal(signal.SIGTERM)

    assert gateway.wait(20) == 0
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    stopping = next(event for event in events if event["event"] == "jobs.stopping")
    assert (stopping["queued"], stopping["running"]) == (1, 1)
    ended = {event["job_id"]: event for event in events if event["event"] == "job.finished"}
    assert ended[first]["state"] == "succeeded"  # its one call ended, not cut
    assert second not in ended  # cancelled while queued: it never started
    assert [event["job_id"] for event in events if event["event"] == "job.started"] == [first]
    audited = {event["job_id"]: event for event in events if event["event"] == "audit" and "state" in event}
    assert (audited[first]["state"], audited[first]["moodle_functions"]) == ("succeeded", [ENROL])
    assert (audited[second]["state"], audited[second]["outcome"]) == ("cancelled", "jobcancelled")
    assert audited[second]["moodle_functions"] == []
    assert [event["event"] for event in events if event["event"].startswith(("server.stopped", "jobs."))] == [
        "server.stopped",
        "jobs.stopping",
        "jobs.stopped",
    ]
    assert sandbox_calls(moodle) == 1
