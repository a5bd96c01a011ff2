"""Background jobs: the write routes with ``Prefer: respond-async`` (or JOBS_FORCE_ASYNC) against the sandbox, the job
resource, its states and progress, cancelling, who sees a job, and what the OpenAPI document says of them."""

import time
import uuid

import pytest

from moodle_sandbox.registry import FUNCTIONS, SandboxFunction
from tests.functional.test_enrol import STUDENTS, enrolled, new_course
from tests.functional.test_users_write import fresh, on_site
from tests.support.credentials import mint
from tests.support.sandbox import queue_fault, sandbox_calls
from tests.support.timing import eventually

ENROL = "enrol_manual_enrol_users"
ASYNC = {"Prefer": "respond-async"}
WRITER = mint("enrol:write users:write users:read jobs:read")
OTHER = mint("enrol:write jobs:read", sub="user-2")
ADMIN = mint("admin", sub="operator")
NO_JOBS = mint("enrol:write users:write users:read", sub="no-jobs")  # may write, may not read jobs
FINISHED = {"succeeded", "failed", "partial", "cancelled"}
# 3 reserved fields + two enrolments of three: two enrolments a call, so a job of five makes three calls.
TWO_ENROLMENTS_A_CALL = "9"


def enrolments(course_id, users=STUDENTS, role="student"):
    return {"enrolments": [{"roleid": role, "userid": user, "courseid": course_id} for user in users]}


def poll(gateway, location, token=WRITER, until=FINISHED, seconds=20):
    """The job's answers until its state is in ``until``; the last one is the one in ``until``."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = gateway.get(location, token)
        assert response.status_int == 200, response.text
        answers.append(response)
        if response.json["data"]["state"] in until:
            return answers
        time.sleep(0.01)
    raise AssertionError(f"the job never reached {until}: {answers[-1].json}")


def first_call_sent(site, function, before=0, seconds=20):
    """Wait until the sandbox has received a call of ``function`` past the ``before`` it had (a job's first, while it
    runs): a job cancelled as soon as it runs may stop before its first call."""
    eventually(lambda: sandbox_calls(site).get(function, 0) > before, f"a first {function} call", seconds)


def job_path(response):
    return response.headers["Location"]


@pytest.fixture
def slow(make_sandbox, make_gateway):
    """A sandbox that answers each call after 150 ms, and a gateway on it sending two enrolments a call."""
    site = make_sandbox(max_input_vars=int(TWO_ENROLMENTS_A_CALL), latency_ms=150)
    gateway = make_gateway(base_url=site.url, token=site.site.token, MOODLE_MAX_INPUT_VARS=TWO_ENROLMENTS_A_CALL)
    return site, gateway


# -- asking for a job ----------------------------------------------------------------------------------------------


def test_an_async_enrolment_is_answered_202_with_the_job_and_ends_with_the_synchronous_answer(gateway, sandbox):
    course_id, other_course = new_course(sandbox), new_course(sandbox)

    response = gateway.post("/api/moodle/enrol", enrolments(course_id), WRITER, headers=ASYNC)

    assert response.status_int == 202, response.text
    job = response.json["data"]
    assert response.headers["Location"] == f"/api/moodle/jobs/{job['id']}"  # no PUBLIC_URL, no trusted proxy
    assert response.headers["Preference-Applied"] == "respond-async"
    assert (job["kind"], job["state"], job["progress"]) == ("enrol", "queued", {"done": 0, "total": 5})
    assert job["created"].endswith("Z") and job["started"] is None and job["finished"] is None
    assert "result" not in job and "error" not in job
    finished = poll(gateway, job_path(response))[-1]
    synchronous = gateway.post("/api/moodle/enrol", enrolments(other_course), WRITER)
    done = finished.json["data"]
    assert done["state"] == "succeeded"
    assert done["result"] == synchronous.json["data"] == {"enrolled": 5, "calls": 1}
    assert done["progress"] == {"done": 5, "total": 5}
    assert done["started"] >= done["created"] and done["finished"] >= done["started"]
    assert "Retry-After" not in finished.headers
    assert sorted(enrolled(sandbox, course_id)) == STUDENTS


def test_a_job_logs_its_lines_with_its_id_and_its_moodle_calls(gateway, sandbox):
    response = gateway.post("/api/moodle/enrol", enrolments(new_course(sandbox)), WRITER, headers=ASYNC)
    job_id = response.json["data"]["id"]
    poll(gateway, job_path(response))

    lines = [line for line in gateway.log_lines if line.get("job_id") == job_id]
    finished = next(line for line in lines if line["event"] == "job.finished")
    assert {"job.queued", "job.started", "job.finished"} <= {line["event"] for line in lines}
    assert (finished["state"], finished["moodle_calls"], finished["kind"]) == ("succeeded", 1, "enrol")
    assert finished["request_id"] == response.headers["X-Request-ID"]


def test_users_are_created_and_updated_by_jobs_and_the_cache_is_dropped(make_gateway, sandbox):
    gateway = make_gateway()
    wanted = fresh(3)
    usernames = ",".join(user["username"] for user in wanted)
    missing = gateway.get(f"/api/moodle/users/by-field?field=username&values={usernames}", WRITER)
    assert len(missing.json["data"]["missing"]) == 3  # kept in the read cache as missing

    created = gateway.post("/api/moodle/users", {"users": wanted}, WRITER, headers=ASYNC)

    assert created.status_int == 202, created.text
    assert created.json["data"]["kind"] == "users.create"
    result = poll(gateway, job_path(created))[-1].json["data"]
    assert result["state"] == "succeeded", result
    ids = [user["id"] for user in result["result"]["created"]]
    assert [user["index"] for user in result["result"]["created"]] == [0, 1, 2]
    found = gateway.get(f"/api/moodle/users/by-field?field=username&values={usernames}", WRITER).json["data"]
    assert sorted(user["id"] for user in found["users"]) == sorted(ids)

    updated = gateway.patch("/api/moodle/users", {"users": [{"id": ids[0], "city": "Lyon"}]}, WRITER, headers=ASYNC)

    assert updated.status_int == 202, updated.text
    assert updated.json["data"]["kind"] == "users.update"
    result = poll(gateway, job_path(updated))[-1].json["data"]
    assert result["result"] == {"updated": [ids[0]], "failed": []}
    assert on_site(sandbox, "id", [ids[0]])[0]["city"] == "Lyon"


@pytest.mark.parametrize(
    ("path", "method", "body", "status"),
    [
        ("/api/moodle/enrol", "post", {"enrolments": [{"roleid": "student", "userid": 3}]}, 400),
        ("/api/moodle/enrol", "post", {"enrolments": [{"roleid": "student", "userid": 3, "courseid": 99999}]}, 404),
        ("/api/moodle/enrol", "post", {"enrolments": [{"roleid": "student", "userid": 1, "courseid": 2}]}, 400),
        ("/api/moodle/users", "post", {"users": fresh(1, email="not an email")}, 400),
        ("/api/moodle/users", "patch", {"users": [{"id": 99999, "city": "Lyon"}]}, 404),
    ],
)
def test_a_bad_request_is_refused_at_once_and_nothing_is_queued(gateway, sandbox, path, method, body, status):
    writes = {
        name: count for name, count in sandbox_calls(sandbox).items() if "enrol_users" in name or "_users" in name
    }

    response = getattr(gateway, method)(path, body, WRITER, headers=ASYNC)

    assert response.status_int == status, response.text
    assert "Location" not in response.headers and "Preference-Applied" not in response.headers
    assert gateway.get("/api/moodle/jobs", WRITER).json["data"]["total"] == 0
    after = sandbox_calls(sandbox)
    assert all(after.get(name, 0) == count for name, count in writes.items() if "create" in name or "update" in name)


def test_without_prefer_the_route_answers_at_once(gateway, sandbox):
    response = gateway.post("/api/moodle/enrol", enrolments(new_course(sandbox)), WRITER, headers={"Prefer": "wait=5"})

    assert response.status_int == 200
    assert response.json["data"] == {"enrolled": 5, "calls": 1}
    assert "Preference-Applied" not in response.headers


def test_jobs_force_async_makes_a_job_of_a_write_over_the_bound(make_gateway, sandbox):
    gateway = make_gateway(JOBS_FORCE_ASYNC="true", JOBS_SYNC_MAX_ITEMS="2")
    course_id = new_course(sandbox)

    small = gateway.post("/api/moodle/enrol", enrolments(course_id, STUDENTS[:2]), WRITER)
    large = gateway.post("/api/moodle/enrol", enrolments(course_id, STUDENTS[2:]), WRITER)
    unforced = make_gateway(JOBS_SYNC_MAX_ITEMS="2").post("/api/moodle/enrol", enrolments(course_id), WRITER)

    assert small.status_int == 200 and unforced.status_int == 200
    assert large.status_int == 202, large.text
    assert "Preference-Applied" not in large.headers  # nobody asked: the operator's setting made it a job
    assert poll(gateway, job_path(large))[-1].json["data"]["result"] == {"enrolled": 3, "calls": 1}


def test_without_jobs_read_a_preference_for_a_job_is_ignored_and_the_write_answered_at_once(gateway, sandbox):
    course_id = new_course(sandbox)

    response = gateway.post("/api/moodle/enrol", enrolments(course_id), NO_JOBS, headers=ASYNC)

    assert response.status_int == 200, response.text
    assert response.json["data"] == {"enrolled": 5, "calls": 1}
    assert "Preference-Applied" not in response.headers and "Location" not in response.headers
    assert sorted(enrolled(sandbox, course_id)) == STUDENTS
    assert gateway.get("/api/moodle/jobs", mint("jobs:read", sub="no-jobs")).json["data"]["total"] == 0


def test_without_jobs_read_a_write_only_jobs_force_async_makes_a_job_is_refused_before_anything_is_written(
    make_gateway, sandbox
):
    gateway = make_gateway(JOBS_FORCE_ASYNC="true", JOBS_SYNC_MAX_ITEMS="2")
    course_id = new_course(sandbox)
    calls = sandbox_calls(sandbox).get(ENROL, 0)

    answers = [
        gateway.post("/api/moodle/enrol", enrolments(course_id), NO_JOBS, headers=headers) for headers in ({}, ASYNC)
    ]

    for response in answers:
        assert response.status_int == 403, response.text
        error = response.json["error"]
        assert (error["code"], error["details"]["required_scope"]) == ("forbidden", "jobs:read")
        assert "5 items" in error["message"] and "background job" in error["message"]
    assert sandbox_calls(sandbox).get(ENROL, 0) == calls and enrolled(sandbox, course_id) == {}
    assert gateway.get("/api/moodle/jobs", mint("jobs:read", sub="no-jobs")).json["data"]["total"] == 0
    small = gateway.post("/api/moodle/enrol", enrolments(course_id, STUDENTS[:2]), NO_JOBS)
    assert small.status_int == 200  # under the bound: answered at once, as it needs no job


def test_an_idempotency_key_answers_the_same_job(gateway, sandbox):
    headers = {**ASYNC, "Idempotency-Key": uuid.uuid4().hex}
    body = enrolments(new_course(sandbox))

    first = gateway.post("/api/moodle/enrol", body, WRITER, headers=dict(headers))
    again = gateway.post("/api/moodle/enrol", body, WRITER, headers=dict(headers))

    assert (first.status_int, again.status_int) == (202, 202)
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Preference-Applied"] == "respond-async"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert gateway.get("/api/moodle/jobs", WRITER).json["data"]["total"] == 1


# -- progress, cancel, failure -------------------------------------------------------------------------------------


def test_progress_is_seen_while_the_job_runs(slow):
    site, gateway = slow
    response = gateway.post("/api/moodle/enrol", enrolments(new_course(site)), WRITER, headers=ASYNC)

    answers = poll(gateway, job_path(response))

    running = [answer for answer in answers if answer.json["data"]["state"] == "running"]
    seen = {answer.json["data"]["progress"]["done"] for answer in running}
    assert {2, 4} <= seen <= {0, 2, 4}, seen  # after each call but the last (0: before the first ends)
    assert all(answer.headers["Retry-After"] == "1" for answer in running)
    assert answers[-1].json["data"]["result"] == {"enrolled": 5, "calls": 3}


def test_a_running_job_cancelled_stops_between_calls_and_says_what_was_applied(slow):
    site, gateway = slow
    course_id = new_course(site)
    earlier_calls = sandbox_calls(site).get(ENROL, 0)
    response = gateway.post("/api/moodle/enrol", enrolments(course_id), WRITER, headers=ASYNC)
    path = job_path(response)
    first_call_sent(site, ENROL, before=earlier_calls)
    calls_before = sandbox_calls(site).get(ENROL, 0)

    cancelled = gateway.delete(path, WRITER)

    assert cancelled.status_int == 200, cancelled.text
    assert cancelled.json["data"]["state"] == "running"  # it stops after the call in flight
    job = poll(gateway, path)[-1].json["data"]
    assert job["state"] == "cancelled"
    error = job["error"]
    applied = error["details"]["applied"]
    assert error["code"] == "jobcancelled"
    assert len(applied) in (2, 4) and applied == list(range(len(applied)))
    assert error["details"]["not_attempted"] == list(range(len(applied), 5))
    assert error["details"]["outcome"] == "partial"
    assert job["progress"]["done"] == len(applied)
    assert sorted(enrolled(site, course_id)) == STUDENTS[: len(applied)]
    assert sandbox_calls(site).get(ENROL, 0) - calls_before <= 1  # no call after the one in flight
    assert gateway.delete(path, WRITER).json["error"]["code"] == "jobfinished"


def test_a_queued_job_cancelled_makes_no_moodle_call(make_sandbox, make_gateway):
    site = make_sandbox(max_input_vars=int(TWO_ENROLMENTS_A_CALL), latency_ms=100)
    gateway = make_gateway(
        base_url=site.url, token=site.site.token, MOODLE_MAX_INPUT_VARS=TWO_ENROLMENTS_A_CALL, JOBS_WORKERS="1"
    )
    first_course, second_course = new_course(site), new_course(site)
    first = gateway.post("/api/moodle/enrol", enrolments(first_course), WRITER, headers=ASYNC)
    second = gateway.post("/api/moodle/enrol", enrolments(second_course), WRITER, headers=ASYNC)

    cancelled = gateway.delete(job_path(second), WRITER)

    assert cancelled.status_int == 200, cancelled.text
    job = cancelled.json["data"]
    assert (job["state"], job["started"], job["error"]["code"]) == ("cancelled", None, "jobcancelled")
    assert poll(gateway, job_path(first))[-1].json["data"]["state"] == "succeeded"
    assert sandbox_calls(site).get(ENROL, 0) == 3  # the first job's only
    assert enrolled(site, second_course) == {}
    assert gateway.get(job_path(second), WRITER).json["data"]["state"] == "cancelled"
    assert gateway.delete(job_path(second), WRITER).status_int == 409


def test_a_call_moodle_refuses_after_others_ends_the_job_partial_with_the_account(make_sandbox, make_gateway):
    site = make_sandbox(max_input_vars=12)  # three enrolments a call
    gateway = make_gateway(
        base_url=site.url, token=site.site.token, MOODLE_MAX_INPUT_VARS="12", MOODLE_ROLE_IDS="user=7"
    )
    course_id = new_course(site)
    roles = [5, 5, 5, 7, 5]  # role 7 cannot be assigned in a course: the second call fails
    body = {
        "enrolments": [{"roleid": r, "userid": u, "courseid": course_id} for r, u in zip(roles, STUDENTS, strict=True)]
    }
    token = mint("enrol:write jobs:read admin")

    response = gateway.post("/api/moodle/enrol", body, token, headers=ASYNC)

    job = poll(gateway, job_path(response), token)[-1].json["data"]
    assert job["state"] == "partial"
    details = job["error"]["details"]
    assert (details["applied"], details["not_applied"], details["outcome"]) == ([0, 1, 2], [3, 4], "partial")
    assert job["error"]["request_id"] == response.headers["X-Request-ID"]
    assert "result" not in job
    assert job["progress"] == {"done": 3, "total": 5}


def test_a_first_call_moodle_fails_ends_the_job_failed_with_the_error(gateway, sandbox):
    body = enrolments(new_course(sandbox))
    gateway.get("/api/moodle/courses/2", mint("courses:read"))  # the function list read, unfaulted
    queue_fault(sandbox, kind="http", status=500, function=ENROL, times=5)

    response = gateway.post("/api/moodle/enrol", body, WRITER, headers=ASYNC)

    job = poll(gateway, job_path(response))[-1].json["data"]
    assert job["state"] == "failed"  # an HTTP 500 to a write: whether Moodle applied it is unknown
    assert job["error"]["code"] == "badresponse"
    details = job["error"]["details"]
    assert (details["applied"], details["unknown"], details["outcome"]) == ([], [0, 1, 2, 3, 4], "unknown")


def test_a_first_call_moodle_refuses_ends_the_job_failed(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_ROLE_IDS="user=7")
    token = mint("enrol:write jobs:read admin")
    body = {"enrolments": [{"roleid": 7, "userid": 3, "courseid": new_course(sandbox)}]}

    response = gateway.post("/api/moodle/enrol", body, token, headers=ASYNC)

    job = poll(gateway, job_path(response), token)[-1].json["data"]
    assert job["state"] == "failed"
    assert job["error"]["details"]["applied"] == [] and job["error"]["details"]["not_applied"] == [0]
    assert "outcome" not in job["error"]["details"]


def test_an_update_job_moodle_refused_some_users_of_ends_partial(gateway, sandbox, monkeypatch):
    ids = [
        user["id"] for user in gateway.post("/api/moodle/users", {"users": fresh(3)}, WRITER).json["data"]["created"]
    ]
    update = FUNCTIONS["core_user_update_users"]

    def refusing_the_last(site, params):
        *applied, refused = params["users"]
        answer = update.run(site, {**params, "users": applied})
        warning = {"item": "user", "itemid": refused["id"], "warningcode": "useremailduplicate", "message": "Taken"}
        return {"warnings": [*answer["warnings"], warning]}

    monkeypatch.setitem(FUNCTIONS, update.name, SandboxFunction(update.name, update.params, refusing_the_last))
    changes = {"users": [{"id": user_id, "city": "Oslo"} for user_id in ids]}

    response = gateway.patch("/api/moodle/users", changes, WRITER, headers=ASYNC)

    job = poll(gateway, job_path(response))[-1].json["data"]
    assert (job["state"], job["error"]["code"]) == ("partial", "usersnotupdated")
    assert job["error"]["details"]["updated"] == ids[:2]
    assert [failure["id"] for failure in job["error"]["details"]["failed"]] == ids[2:]


def test_a_call_of_unknown_outcome_after_applied_ones_ends_the_job_partial(slow):
    site, gateway = slow
    course_id = new_course(site)
    response = gateway.post("/api/moodle/enrol", enrolments(course_id), WRITER, headers=ASYNC)
    poll(gateway, job_path(response), until={"running"})
    while gateway.get(job_path(response), WRITER).json["data"]["progress"]["done"] == 0:
        time.sleep(0.005)
    queue_fault(site, kind="http", status=500, function=ENROL, times=5)  # the next call: applied or not, unknown

    job = poll(gateway, job_path(response))[-1].json["data"]

    details = job["error"]["details"]
    assert (job["state"], details["outcome"]) == ("partial", "unknown")
    assert details["applied"] and details["unknown"]
    assert sorted(enrolled(site, course_id))[: len(details["applied"])] == STUDENTS[: len(details["applied"])]


# -- who sees a job, and the list ----------------------------------------------------------------------------------


def test_another_callers_job_is_not_found_unless_admin(gateway, sandbox):
    response = gateway.post("/api/moodle/enrol", enrolments(new_course(sandbox), STUDENTS[:1]), WRITER, headers=ASYNC)
    path = job_path(response)

    assert gateway.get(path, OTHER).json["error"]["code"] == "jobnotfound"
    assert gateway.get(path, OTHER).status_int == 404
    assert gateway.delete(path, OTHER).status_int == 404
    assert gateway.get(path, ADMIN).json["data"]["id"] == response.json["data"]["id"]
    assert gateway.get(f"/api/moodle/jobs/{uuid.uuid4().hex}", WRITER).status_int == 404
    assert gateway.get("/api/moodle/jobs/NOT-A-JOB", WRITER).status_int == 400
    assert gateway.get("/api/moodle/jobs", OTHER).json["data"]["jobs"] == []


def test_the_list_is_the_callers_jobs_newest_first_paged(gateway, sandbox):
    course_id = new_course(sandbox)
    ids = [
        gateway.post("/api/moodle/enrol", enrolments(course_id, [user]), WRITER, headers=ASYNC).json["data"]["id"]
        for user in STUDENTS[:3]
    ]
    gateway.post("/api/moodle/enrol", enrolments(course_id, [6]), OTHER, headers=ASYNC)

    first = gateway.get("/api/moodle/jobs?perpage=2", WRITER).json["data"]
    second = gateway.get("/api/moodle/jobs?perpage=2&page=1", WRITER).json["data"]

    assert [job["id"] for job in first["jobs"]] == ids[::-1][:2]
    assert [job["id"] for job in second["jobs"]] == ids[::-1][2:]
    assert (first["total"], first["page"], first["perpage"], second["page"]) == (3, 0, 2, 1)
    assert gateway.get("/api/moodle/jobs?perpage=0", WRITER).status_int == 400


def test_the_list_shows_summaries_and_the_job_its_result_and_error_details(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_ROLE_IDS="user=7")
    token = mint("enrol:write jobs:read admin", sub=f"lister-{uuid.uuid4().hex[:6]}")
    course_id = new_course(sandbox)
    done = gateway.post("/api/moodle/enrol", enrolments(course_id, STUDENTS[:2]), token, headers=ASYNC)
    refused = gateway.post(
        "/api/moodle/enrol", {"enrolments": [{"roleid": 7, "userid": 3, "courseid": course_id}]}, token, headers=ASYNC
    )
    done_job, refused_job = (poll(gateway, job_path(answer), token)[-1].json["data"] for answer in (done, refused))

    listed = {job["id"]: job for job in gateway.get("/api/moodle/jobs", token).json["data"]["jobs"]}

    assert done_job["result"] == {"enrolled": 2, "calls": 1} and "result" not in listed[done_job["id"]]
    assert listed[done_job["id"]] == {name: value for name, value in done_job.items() if name != "result"}
    assert "details" in refused_job["error"]
    summary = listed[refused_job["id"]]
    assert summary["state"] == "failed"
    assert summary["error"] == {name: value for name, value in refused_job["error"].items() if name != "details"}


def test_metrics_count_jobs_by_kind_and_state(gateway, sandbox):
    response = gateway.post("/api/moodle/enrol", enrolments(new_course(sandbox), STUDENTS[:1]), WRITER, headers=ASYNC)
    poll(gateway, job_path(response))

    text = gateway.get("/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"}).text

    assert 'lms_api_jobs_total{kind="enrol",state="succeeded"} 1.0' in text
    assert 'lms_api_job_duration_seconds_count{kind="enrol"} 1.0' in text
    assert "lms_api_jobs_queued 0.0" in text
    assert 'lms_api_moodle_calls_total{function="enrol_manual_enrol_users",outcome="ok"} 1.0' in text  # the job's


def test_a_submission_and_its_job_are_audited_each_once(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_ROLE_IDS="user=7", MOODLE_MAX_INPUT_VARS="12")  # three enrolments a call
    token = mint("enrol:write jobs:read admin", sub="auditor")
    course_id = new_course(sandbox)
    roles = [5, 5, 5, 7, 5]  # role 7 cannot be assigned in a course: the second call fails
    body = {
        "enrolments": [{"roleid": r, "userid": u, "courseid": course_id} for r, u in zip(roles, STUDENTS, strict=True)]
    }

    response = gateway.post("/api/moodle/enrol", body, token, headers=ASYNC)
    job = poll(gateway, job_path(response), token)[-1].json["data"]

    submitted, ended = (line for line in gateway.log_lines if line["event"] == "audit")
    assert (submitted["sub"], submitted["route"], submitted["status"]) == ("auditor", "api.moodle.enrol", 202)
    assert (submitted["outcome"], submitted["job_id"]) == ("queued", job["id"])
    assert ENROL not in submitted["moodle_functions"]  # the job's calls are its own event's
    assert {name: ended[name] for name in ("sub", "kind", "job_id", "request_id", "items", "state", "outcome")} == {
        "sub": "auditor",
        "kind": "enrol",
        "job_id": job["id"],
        "request_id": response.headers["X-Request-ID"],
        "items": 5,
        "state": "partial",
        "outcome": job["error"]["code"],
    }
    assert ended["moodle_functions"] == [ENROL, ENROL]


# -- the document --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "method"), [("/api/moodle/enrol", "post"), ("/api/moodle/users", "post"),
                                              ("/api/moodle/users", "patch")])  # fmt: skip
def test_the_document_says_which_writes_may_run_as_jobs(gateway, path, method):
    document = gateway.get("/api/moodle/openapi.json").json
    operation = document["paths"][path][method]

    accepted = operation["responses"]["202"]
    assert {"Location", "Preference-Applied"} <= set(accepted["headers"])
    data = accepted["content"]["application/json"]["schema"]["properties"]["data"]
    assert data == {"$ref": "#/components/schemas/Job"}
    (prefer,) = [parameter for parameter in operation["parameters"] if parameter["name"] == "Prefer"]
    assert "`jobs:read`" in prefer["description"]
    assert "202" not in document["paths"]["/api/moodle/courses"]["post"]["responses"]


def test_the_document_describes_the_job_routes(gateway):
    paths = gateway.get("/api/moodle/openapi.json").json["paths"]

    assert set(paths["/api/moodle/jobs/{id}"]) == {"get", "delete"}
    assert set(paths["/api/moodle/jobs"]) == {"get"}
    job = paths["/api/moodle/jobs/{id}"]
    assert "jobnotfound" in job["get"]["responses"]["404"]["description"]
    assert "jobfinished" in job["delete"]["responses"]["409"]["description"]
    assert job["get"]["security"] == [{"bearer": ["jobs:read"]}]
    assert "Retry-After" in job["get"]["responses"]["200"]["headers"]  # while queued or running
    assert "Retry-After" not in job["delete"]["responses"]["200"]["headers"]


def test_the_document_lists_jobs_as_summaries(gateway):
    document = gateway.get("/api/moodle/openapi.json").json
    schemas = document["components"]["schemas"]

    assert schemas["JobList"]["properties"]["jobs"]["items"] == {"$ref": "#/components/schemas/JobSummary"}
    assert "result" not in schemas["JobSummary"]["properties"] and "result" in schemas["Job"]["properties"]
    assert "details" in schemas["JobSummary"]["properties"]["error"]["description"]


def test_user_jobs_cancelled_while_running_say_which_users_were_written(make_sandbox, make_gateway):
    site = make_sandbox(max_input_vars=13, latency_ms=150)  # a few users a call, whatever fields the schema adds
    gateway = make_gateway(base_url=site.url, token=site.site.token, MOODLE_MAX_INPUT_VARS="13")
    wanted = fresh(5)
    created = gateway.post("/api/moodle/users", {"users": wanted}, WRITER, headers=ASYNC)
    first_call_sent(site, "core_user_create_users")  # running, and not stopped before its first call

    assert gateway.delete(job_path(created), WRITER).status_int == 200
    job = poll(gateway, job_path(created))[-1].json["data"]
    details = job["error"]["details"]
    made = [user["index"] for user in details["created"]]
    assert (job["state"], job["error"]["code"], details["outcome"]) == ("cancelled", "jobcancelled", "partial")
    assert 1 <= len(made) < 5 and made == list(range(len(made)))
    assert details["not_attempted"] == list(range(len(made), 5))
    found = on_site(site, "username", [user["username"] for user in wanted])
    assert sorted(user["id"] for user in found) == sorted(user["id"] for user in details["created"])

    ids = [user["id"] for user in details["created"]] + [
        user["id"]
        for user in gateway.post("/api/moodle/users", {"users": fresh(5 - len(made))}, WRITER).json["data"]["created"]
    ]
    changes = [{"id": i, "city": "Lyon", "firstname": "Bea", "lastname": "M", "institution": "U"} for i in ids]
    updated = gateway.patch("/api/moodle/users", {"users": changes}, WRITER, headers=ASYNC)
    first_call_sent(site, "core_user_update_users")

    assert gateway.delete(job_path(updated), WRITER).status_int == 200
    job = poll(gateway, job_path(updated))[-1].json["data"]
    details = job["error"]["details"]
    assert (job["state"], details["failed"], details["outcome"]) == ("cancelled", [], "partial")
    assert 1 <= len(details["updated"]) < 5 and details["updated"] == ids[: len(details["updated"])]
    assert details["not_attempted"] == ids[len(details["updated"]) :]
    cities = {user["id"]: user.get("city") for user in on_site(site, "id", ids)}
    assert [user_id for user_id in ids if cities[user_id] == "Lyon"] == details["updated"]
