"""Background jobs on RQ (``JOBS_ENGINE=rq``): the gateway queues them in a real Redis, a real ``lms-api worker``
process runs them against a sandbox over HTTP; any gateway on the same Redis reads and cancels them, and a worker
killed mid-job leaves an exact record and no call sent twice."""

import json
import signal
import subprocess
import time

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from lms_api.jobqueue import QUEUE
from moodle_sandbox.server import start_sandbox
from tests.functional.test_enrol import STUDENTS, enrolled, new_course
from tests.support.credentials import mint
from tests.support.paths import ROOT
from tests.support.processes import clean_env
from tests.support.sandbox import moodle_call, sandbox_calls
from tests.support.timing import eventually

ENROL = "enrol_manual_enrol_users"
ASYNC = {"Prefer": "respond-async"}
WRITER = mint("enrol:write users:write users:read jobs:read")
OTHER = mint("enrol:write jobs:read", sub="user-2")
SECRET = "rq-jobs-secret-" + "r" * 40
ALIVE_S = 3  # the workers' JOBS_WORKER_TTL_S
TWO_ENROLMENTS_A_CALL = "9"  # 3 reserved fields + two enrolments of three
FINISHED = {"succeeded", "failed", "partial", "cancelled"}


@pytest.fixture
def site():
    """A sandbox over HTTP taking two enrolments a call, each call answered after 200 ms."""
    server = start_sandbox(max_input_vars=int(TWO_ENROLMENTS_A_CALL), latency_ms=200)
    yield server
    server.stop()


@pytest.fixture
def rq_redis(empty_redis):
    """The gateway's Redis, where the tests read RQ's own keys."""
    return redis.Redis.from_url(empty_redis)


@pytest.fixture
def rq_gateway(make_gateway, site, empty_redis):
    """A gateway (WebTest) on RQ; ``rq_gateway()`` makes another on the same Redis, as a replica or a restart."""

    def build():
        return make_gateway(
            base_url=site.url,
            token=site.site.token,
            MOODLE_MAX_INPUT_VARS=TWO_ENROLMENTS_A_CALL,
            JOBS_ENGINE="rq",
            REDIS_URL=empty_redis,
        )

    return build


@pytest.fixture
def worker(spawn, site, empty_redis):
    """``start()``: an ``lms-api worker`` process on the gateway's Redis and the sandbox, under production.ini."""

    def start(name):
        env = clean_env(
            MOODLE_BASE_URL=site.url,
            MOODLE_TOKEN=site.site.token,
            MOODLE_MAX_INPUT_VARS=TWO_ENROLMENTS_A_CALL,
            JWT_SECRET=SECRET,
            JOBS_ENGINE="rq",
            REDIS_URL=empty_redis,
            JOBS_WORKER_TTL_S=str(ALIVE_S),
        )
        return spawn("lms-api", "worker", "--ini", str(ROOT / "production.ini"), env=env, log=f"{name}.log")

    return start


def enrolments(courses):
    return {
        "enrolments": [
            {"roleid": "student", "userid": user, "courseid": course} for course in courses for user in STUDENTS
        ]
    }


def job_of(gateway, location, token=WRITER):
    time.sleep(0.05)  # polled in loops: within the caller's rate budget
    response = gateway.get(location, token)
    assert response.status_int == 200, response.text
    return response.json["data"]


def finished(gateway, location, seconds=30):
    eventually(lambda: job_of(gateway, location)["state"] in FINISHED, "the job finished", seconds)
    return job_of(gateway, location)


def test_an_async_enrolment_runs_in_the_worker_and_any_gateway_on_the_redis_answers_it(
    rq_gateway, site, worker, tmp_path
):
    gateway = rq_gateway()
    course = new_course(site)

    response = gateway.post("/api/moodle/enrol", enrolments([course]), WRITER, headers=ASYNC)

    assert response.status_int == 202, response.text
    location = response.headers["Location"]
    assert response.json["data"]["state"] == "queued"
    worker("worker")
    restarted = rq_gateway()  # a new app on the same Redis: nothing of the first one's memory
    done = finished(restarted, location)
    assert done["state"] == "succeeded", done
    assert done["result"] == {"enrolled": 5, "calls": 3}
    assert done["progress"] == {"done": 5, "total": 5}
    assert sorted(enrolled(site, course)) == STUDENTS
    audits = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines() if '"audit"' in line]
    assert [(a["job_id"], a["state"], a["outcome"], a["moodle_functions"][-3:]) for a in audits] == [
        (done["id"], "succeeded", "ok", [ENROL, ENROL, ENROL])  # after the site info the worker reads first
    ]
    assert sandbox_calls(site)[ENROL] == 3
    listed = restarted.get("/api/moodle/jobs", WRITER).json["data"]
    assert [job["id"] for job in listed["jobs"]] == [done["id"]]
    assert gateway.get(location, OTHER, status=404).json["error"]["code"] == "jobnotfound"
    assert restarted.get("/api/moodle/jobs", OTHER).json["data"]["total"] == 0
    for replica in (gateway, restarted):  # counted in Redis by the worker: every replica shows them
        text = metrics(replica)
        assert 'lms_api_rq_jobs_total{kind="enrol",state="succeeded"} 1.0' in text
        assert 'lms_api_rq_job_duration_seconds_count{kind="enrol"} 1.0' in text
        assert 'lms_api_rq_job_duration_seconds_bucket{kind="enrol",le="+Inf"} 1.0' in text
        assert "lms_api_jobs_queued 0.0" in text
        assert "lms_api_rq_workers 1.0" in text


def metrics(gateway):
    return gateway.get("/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).text


def test_the_queue_depth_is_the_rq_queue_length(rq_gateway, site):
    gateway = rq_gateway()
    for _ in range(2):
        gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC)

    text = metrics(rq_gateway())
    assert "lms_api_jobs_queued 2.0" in text
    assert "lms_api_rq_workers 0.0" in text  # what to alert on: jobs waiting, no worker to run them


def test_async_user_creation_and_update_run_in_the_worker(rq_gateway, site, worker):
    gateway = rq_gateway()
    worker("worker")
    users = [
        {
            "username": f"rq{index}",
            "password": "Passw0rd!x",
            "firstname": "R",
            "lastname": "Q",
            "email": f"rq{index}@example.org",
        }
        for index in range(3)
    ]

    created = finished(
        gateway, gateway.post("/api/moodle/users", {"users": users}, WRITER, headers=ASYNC).headers["Location"]
    )

    assert created["state"] == "succeeded", created
    ids = [user["id"] for user in created["result"]["created"]]
    assert [user["username"] for user in created["result"]["created"]] == ["rq0", "rq1", "rq2"]
    by_id = f"/api/moodle/users/by-field?field=id&values={ids[0]}"
    assert gateway.get(by_id, WRITER).json["data"]["users"][0]["firstname"] == "R"  # now kept in the shared cache
    changes = {"users": [{"id": user_id, "firstname": "Changed"} for user_id in ids]}
    updated = finished(gateway, gateway.patch("/api/moodle/users", changes, WRITER, headers=ASYNC).headers["Location"])
    assert updated["state"] == "succeeded", updated
    found = moodle_call(site, "core_user_get_users_by_field", field="id", values=ids)
    assert {user["firstname"] for user in found} == {"Changed"}
    assert rq_gateway().get(by_id, WRITER).json["data"]["users"][0]["firstname"] == "Changed"  # the job dropped it


def test_progress_is_seen_mid_job_and_a_cancel_stops_it_between_two_calls(rq_gateway, site, worker, rq_redis):
    gateway = rq_gateway()
    courses = [new_course(site) for _ in range(4)]  # 20 enrolments, ten calls of 200 ms
    worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments(courses), WRITER, headers=ASYNC).headers["Location"]

    eventually(lambda: 0 < job_of(gateway, location)["progress"]["done"] < 20, "progress mid-job", 20)
    running = job_of(gateway, location)
    assert running["state"] == "running"
    assert running["progress"]["done"] % 2 == 0
    meta = Job.fetch(running["id"], connection=rq_redis, serializer=JSONSerializer).meta["progress"]  # as RQ shows it
    assert meta["total"] == 20 and running["progress"]["done"] <= meta["done"] < 20
    cancelled = rq_gateway().delete(location, WRITER).json["data"]  # another replica cancels it
    assert cancelled["state"] == "running"

    done = finished(gateway, location)
    assert done["state"] == "cancelled", done
    applied = done["error"]["details"]["applied"]
    assert applied == list(range(done["progress"]["done"])) and 0 < len(applied) < 20
    assert done["error"]["details"]["not_attempted"] == list(range(len(applied), 20))
    assert sandbox_calls(site)[ENROL] == len(applied) // 2
    assert gateway.delete(location, WRITER, status=409).json["error"]["code"] == "jobfinished"


def test_a_job_cancelled_while_queued_is_never_run(rq_gateway, site, worker, rq_redis):
    gateway = rq_gateway()
    location = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC).headers[
        "Location"
    ]

    assert gateway.delete(location, WRITER).json["data"]["state"] == "cancelled"
    assert not Job.exists(location.rsplit("/", 1)[1], connection=rq_redis)  # its items are out of Redis
    worker("worker")
    after = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC).headers["Location"]
    assert finished(gateway, after)["state"] == "succeeded"
    assert job_of(gateway, location)["state"] == "cancelled"
    assert sandbox_calls(site)[ENROL] == 3  # the later job's alone


def test_a_worker_killed_mid_job_leaves_an_exact_record_and_no_call_is_sent_twice(rq_gateway, site, worker):
    gateway = rq_gateway()
    courses = [new_course(site) for _ in range(4)]
    first = worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments(courses), WRITER, headers=ASYNC).headers["Location"]
    eventually(lambda: job_of(gateway, location)["progress"]["done"] >= 4, "some calls made", 20)
    eventually(lambda: site.in_flight_state()["in_flight"] == 1, "a call in flight", 5)

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert job_of(gateway, location)["state"] == "running"  # until its heartbeat lapses
    worker("second")  # another worker on the queue must not take the job again

    lost = finished(gateway, location, seconds=ALIVE_S + 10)
    time.sleep(1)  # a resend, if any, would have reached the sandbox by now

    assert lost["state"] == "failed", lost
    error = lost["error"]
    assert error["code"] == "joblost"
    details = error["details"]
    done = lost["progress"]["done"]
    assert details["outcome"] == "unknown"
    assert details["applied"] == list(range(done)) and done >= 4
    assert details["unknown"] == [done, done + 1]
    assert details["not_applied"] == list(range(done + 2, 20))
    assert sandbox_calls(site)[ENROL] == done // 2 + 1  # the applied calls and the one in flight, each once
    assert rq_gateway().get(location, WRITER).json["data"] == lost
    assert 'lms_api_rq_jobs_total{kind="enrol",state="failed"} 1.0' in metrics(gateway)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "the worker needs JOBS_ENGINE=rq, MOODLE_BASE_URL and MOODLE_TOKEN"),
        ({"JOBS_ENGINE": "rq"}, "JOBS_ENGINE=rq needs REDIS_URL"),
    ],
)
def test_a_worker_without_its_queue_or_moodle_stops_with_one_line(spawn, environ, message):
    env = clean_env(MOODLE_BASE_URL="https://moodle.example.edu", MOODLE_TOKEN="t", JWT_SECRET=SECRET, **environ)
    process = spawn("lms-api", "worker", "--ini", str(ROOT / "production.ini"), env=env)

    _, errors = process.communicate(timeout=30)

    assert process.returncode == 2
    assert message in errors and "Traceback" not in errors


def test_a_worker_paused_past_its_heartbeat_is_declared_lost_and_sends_nothing_more(rq_gateway, site, worker):
    gateway = rq_gateway()
    courses = [new_course(site) for _ in range(4)]
    paused = worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments(courses), WRITER, headers=ASYNC).headers["Location"]
    eventually(lambda: job_of(gateway, location)["progress"]["done"] >= 2, "some calls made", 20)

    paused.send_signal(signal.SIGSTOP)
    lost = finished(gateway, location, seconds=ALIVE_S + 10)
    paused.send_signal(signal.SIGCONT)
    time.sleep(1)  # its call in flight ends; it must send no other

    assert lost["error"]["code"] == "joblost"
    done = lost["progress"]["done"]
    assert sandbox_calls(site)[ENROL] <= done // 2 + 1
    assert job_of(gateway, location) == lost  # the worker, woken, leaves the record as the replica wrote it
    assert paused.poll() is None  # and goes on serving the queue
    after = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC)
    assert finished(gateway, after.headers["Location"])["state"] == "succeeded"


def test_a_worker_told_to_stop_ends_its_job_first(rq_gateway, site, worker, tmp_path):
    gateway = rq_gateway()
    stopping = worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC).headers[
        "Location"
    ]
    eventually(lambda: job_of(gateway, location)["state"] == "running", "the job started", 20)

    stopping.send_signal(signal.SIGTERM)

    try:
        stopped = stopping.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not stop; its log:\n" + (tmp_path / "worker.log").read_text()[-4000:])
    assert stopped == 0
    assert job_of(gateway, location)["state"] == "succeeded"
    assert sandbox_calls(site)[ENROL] == 3


def test_a_worker_killed_mid_creation_leaves_the_created_users_ids(rq_gateway, site, worker):
    gateway = rq_gateway()
    first = worker("worker")
    users = [
        {
            "username": f"lost{n}",
            "password": "Passw0rd!x",
            "firstname": "L",
            "lastname": "U",
            "email": f"lost{n}@example.org",
        }
        for n in range(12)
    ]  # one user a call under max_input_vars 9
    location = gateway.post("/api/moodle/users", {"users": users}, WRITER, headers=ASYNC).headers["Location"]
    eventually(lambda: job_of(gateway, location)["progress"]["done"] >= 3, "some users created", 20)

    first.send_signal(signal.SIGKILL)
    lost = finished(gateway, location, seconds=ALIVE_S + 10)

    details = lost["error"]["details"]
    done = lost["progress"]["done"]
    on_site = {
        user["username"]: user["id"]
        for user in moodle_call(
            site, "core_user_get_users_by_field", field="username", values=[f"lost{n}" for n in range(12)]
        )
    }
    assert details["created"] == [{"index": n, "id": on_site[f"lost{n}"], "username": f"lost{n}"} for n in range(done)]
    assert details["unknown"] == [done] and details["not_applied"] == list(range(done + 1, 12))
    assert sandbox_calls(site)["core_user_create_users"] == done + 1
    assert lost["created"].endswith("Z")  # the job's own time, apart from the users it created


def test_a_job_longer_than_its_heartbeat_is_never_found_abandoned_while_its_worker_lives(
    rq_gateway, site, worker, rq_redis
):
    gateway = rq_gateway()
    courses = [new_course(site) for _ in range(12)]  # 60 enrolments, thirty calls of 200 ms
    worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments(courses), WRITER, headers=ASYNC).headers["Location"]
    eventually(lambda: job_of(gateway, location)["state"] == "running", "the job started", 20)
    started = time.monotonic()

    while time.monotonic() - started < ALIVE_S + 1:
        StartedJobRegistry(QUEUE, connection=rq_redis, serializer=JSONSerializer).cleanup()  # as RQ's maintenance
        assert job_of(gateway, location)["state"] == "running"
        time.sleep(0.5)

    done = finished(gateway, location)
    assert done["state"] == "succeeded", done
    assert sandbox_calls(site)[ENROL] == 30


def test_rqs_cleanup_of_the_started_registry_ends_a_killed_workers_job_without_any_replica(
    rq_gateway, site, worker, rq_redis
):
    gateway = rq_gateway()
    courses = [new_course(site) for _ in range(4)]
    first = worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments(courses), WRITER, headers=ASYNC).headers["Location"]
    job_id = location.rsplit("/", 1)[1]
    eventually(lambda: job_of(gateway, location)["progress"]["done"] >= 4, "some calls made", 20)

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    registry = StartedJobRegistry(QUEUE, connection=rq_redis, serializer=JSONSerializer)
    eventually(lambda: registry.get_expired_job_ids(time.time()), "its entry lapsed", ALIVE_S + 5)
    registry.cleanup()  # what any worker's maintenance does, with no gateway reading the job

    record = {key.decode(): value.decode() for key, value in rq_redis.hgetall(f"lms_api:job:{job_id}").items()}
    assert record["state"] == "failed"
    assert '"code": "joblost"' in record["error"]
    assert job_id in FailedJobRegistry(QUEUE, connection=rq_redis, serializer=JSONSerializer)
    lost = job_of(gateway, location)
    assert lost["error"]["details"]["applied"] == list(range(lost["progress"]["done"]))


def test_past_the_bound_of_queued_jobs_a_submission_is_refused_and_nothing_is_queued(
    rq_gateway, site, rq_redis, monkeypatch
):
    monkeypatch.setattr("lms_api.jobqueue.MAX_JOBS", 2)
    gateway = rq_gateway()  # and no worker
    for _ in range(2):
        gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC, status=202)

    refused = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC, status=503)

    assert refused.json["error"]["code"] == "jobsfull"
    assert refused.headers["Retry-After"] == "10"
    assert gateway.get("/api/moodle/jobs", WRITER).json["data"]["total"] == 2
    assert Queue(QUEUE, connection=rq_redis).count == 2


def test_with_its_redis_gone_a_gateway_on_rq_answers_503_jobsunavailable_and_still_serves_metrics(
    make_gateway, site, unused_port
):
    gateway = make_gateway(
        base_url=site.url, token=site.site.token, JOBS_ENGINE="rq", REDIS_URL=f"redis://127.0.0.1:{unused_port}/0"
    )
    attempts = [
        gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC, status=503),
        gateway.get("/api/moodle/jobs/0123456789abcdef0123456789abcdef", WRITER, status=503),
        gateway.get("/api/moodle/jobs", WRITER, status=503),
        gateway.delete("/api/moodle/jobs/0123456789abcdef0123456789abcdef", WRITER, status=503),
    ]

    for refused in attempts:
        assert refused.json["error"]["code"] == "jobsunavailable"
        assert refused.headers["Retry-After"] == "5"
    assert sandbox_calls(site).get(ENROL, 0) == 0
    text = metrics(gateway)
    assert "lms_api_requests_total" in text and "lms_api_jobs_queued" not in text


def test_a_submission_redis_drops_while_queuing_leaves_no_job(rq_gateway, site, rq_redis, monkeypatch):
    gateway = rq_gateway()

    def dropped(*args, **kwargs):
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(Queue, "enqueue", dropped)
    refused = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC, status=503)

    assert refused.json["error"]["code"] == "jobsunavailable"
    assert gateway.get("/api/moodle/jobs", WRITER).json["data"]["total"] == 0
    assert not rq_redis.keys("lms_api:job:*")


def test_a_replica_whose_clock_runs_ahead_does_not_end_a_live_job(rq_gateway, site, worker, monkeypatch):
    gateway = rq_gateway()
    worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments([new_course(site)]), WRITER, headers=ASYNC).headers[
        "Location"
    ]
    eventually(lambda: job_of(gateway, location)["state"] == "running", "the job started", 20)

    ahead = time.time() + 3600
    monkeypatch.setattr("lms_api.jobqueue.time.time", lambda: ahead)

    assert job_of(gateway, location)["state"] == "running"
    monkeypatch.undo()
    assert finished(gateway, location)["state"] == "succeeded"


def test_a_record_redis_cannot_take_mid_job_ends_the_job_lost_as_of_its_last_recorded_call(
    rq_gateway, site, worker, rq_redis
):
    gateway = rq_gateway()
    courses = [new_course(site) for _ in range(4)]
    worker("worker")
    location = gateway.post("/api/moodle/enrol", enrolments(courses), WRITER, headers=ASYNC).headers["Location"]
    eventually(lambda: job_of(gateway, location)["progress"]["done"] >= 4, "some calls made", 20)

    # Redis away for every client but the test's: those connected are cut, and new ones are refused a while.
    rq_redis.config_set("requirepass", "away")
    rq_redis.client_kill_filter(_type="normal", skipme=True)
    time.sleep(2.5)
    rq_redis.config_set("requirepass", "")

    lost = finished(gateway, location)
    assert lost["state"] == "failed", lost
    assert lost["error"]["code"] == "joblost"
    details = lost["error"]["details"]
    done = lost["progress"]["done"]
    assert details["applied"] == list(range(done))
    assert details["not_applied"] == list(range(done + len(details["unknown"]), 20))
    time.sleep(1)  # a call after the record failed, if any, would have reached the sandbox by now
    assert sandbox_calls(site)[ENROL] == (done + len(details["unknown"])) // 2
