"""Bulk user creation through the whole WSGI app, against the built-in Moodle sandbox run as its own process.

The sandbox (`lms-api sandbox`, max_input_vars 5000) is first given `--existing` users, then the gateway, built in
this process by `lms_api.config.make_app`, is sent three requests of `--users` new users each:

- create: `POST /api/moodle/users`, answered 201 with every user created;
- precheck, free: the same number of other new users, the last with an upper-case username, refused 400 after the
  prechecks with nothing written: the prechecks' cost when no username or email is taken;
- precheck, taken: the first request's users again, refused 409 (every username and email taken).

For each it prints the wall-clock time, the time the gateway spent waiting on Moodle (`moodle_ms` of the request's
log line), the rest (the gateway's own time: validation, prechecks, encoding, answers), the request thread's CPU time
and the Moodle calls made, by function (counted by the sandbox).

    .venv/bin/python scripts/bench_users.py [--users 2000] [--existing 10000]
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import uuid
from contextlib import redirect_stderr
from typing import Any

import jwt
import requests
from benchlib import BIN, JWT_SECRET, MOODLE_TOKEN, documented_parser, free_port, positive, wait_for
from webob import Request

from lms_api.config import make_app
from lms_api.moodle.encoding import encode_params
from lms_api.settings import load_settings

USERS_ROUTE = "/api/moodle/users"
SEED_BATCH = 500  # users per direct call when filling the sandbox: 3,000 variables, under its max_input_vars


def new_users(count: int, stem: str) -> list[dict[str, Any]]:
    return [
        {"username": f"{stem}{n}", "firstname": "Bench", "lastname": f"User {n}", "email": f"{stem}{n}@example.com",
         "password": f"Bench#{n:05d}a"}
        for n in range(count)
    ]  # fmt: skip


class Sandbox:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def call(self, function: str, **params: Any) -> Any:
        form = {"wstoken": MOODLE_TOKEN, "wsfunction": function, "moodlewsrestformat": "json"}
        sent = [*form.items(), *encode_params(params)]
        response = requests.post(f"{self.url}/webservice/rest/server.php", data=sent, timeout=60)
        return response.json()

    def calls(self) -> dict[str, int]:
        answer = requests.get(f"{self.url}/__sandbox__/calls", headers={"X-Sandbox-Token": MOODLE_TOKEN}, timeout=10)
        calls: dict[str, int] = answer.json()["calls"]
        return calls


def measure(app: Any, log: io.StringIO, sandbox: Sandbox, users: list[dict[str, Any]], status: int) -> dict[str, Any]:
    token = jwt.encode({"sub": "bench", "scope": "users:write", "exp": int(time.time()) + 3600}, JWT_SECRET)
    request = Request.blank(USERS_ROUTE, method="POST", headers={"Authorization": f"Bearer {token}"})
    request.content_type = "application/json"
    request.body = json.dumps({"users": users}).encode()
    calls_before, log_before = sandbox.calls(), len(log.getvalue())
    started, started_cpu = time.perf_counter(), time.thread_time()
    response = request.get_response(app)
    wall_ms, cpu_ms = (time.perf_counter() - started) * 1000, (time.thread_time() - started_cpu) * 1000
    if response.status_int != status:
        raise SystemExit(f"expected HTTP {status}, got {response.status_int}: {response.body[:300]!r}")
    line = request_line(log, log_before)
    calls_after = sandbox.calls()
    made = {name: calls_after.get(name, 0) - calls_before.get(name, 0) for name in calls_after}
    return {
        "wall_ms": wall_ms,
        "moodle_ms": line["moodle_ms"],
        "cpu_ms": cpu_ms,
        "calls": {name: count for name, count in made.items() if count},
    }


def request_line(log: io.StringIO, start: int) -> dict[str, Any]:
    """The request's summary line, which the log writer's thread writes soon after the answer."""
    for _ in range(200):
        for entry in map(json.loads, log.getvalue()[start:].splitlines()):
            if entry.get("event") == "request":
                return dict(entry)
        time.sleep(0.01)
    raise SystemExit("the request was not logged")


def main() -> None:
    parser = documented_parser(__doc__)
    parser.add_argument("--users", type=positive, default=2000, help="users per request (at most 5,000)")
    parser.add_argument("--existing", type=int, default=10000, help="users on the site before the requests")
    options = parser.parse_args()
    port = free_port()
    sandbox_process = subprocess.Popen(
        [BIN / "lms-api", "sandbox", "--port", str(port), "--token", MOODLE_TOKEN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        sandbox = Sandbox(port)
        existing = new_users(options.existing, f"old{uuid.uuid4().hex[:6]}")
        for start in range(0, len(existing), SEED_BATCH):
            sandbox.call("core_user_create_users", users=existing[start : start + SEED_BATCH])
        environ = {"MOODLE_BASE_URL": sandbox.url, "MOODLE_TOKEN": MOODLE_TOKEN, "JWT_SECRET": JWT_SECRET,
                   "RATE_LIMIT_WRITE": "1000000/minute", "LOG_FORMAT": "json"}  # fmt: skip
        log = io.StringIO()
        with redirect_stderr(log):  # the log handler writes to the stderr of the moment it is built
            app = make_app(load_settings({"lms_api.environment": "production"}, environ))
        created = new_users(options.users, f"new{uuid.uuid4().hex[:6]}")
        refused = new_users(options.users, f"pre{uuid.uuid4().hex[:6]}")
        refused[-1]["username"] = refused[-1]["username"].upper()
        rows = [
            ("create", measure(app, log, sandbox, created, 201)),
            ("precheck, free", measure(app, log, sandbox, refused, 400)),
            ("precheck, taken", measure(app, log, sandbox, created, 409)),
        ]
    finally:
        sandbox_process.terminate()
        sandbox_process.wait(10)
    print(f"{options.users} users a request, {options.existing} users on the site before")
    print(f"{'request':<17}{'wall ms':>9}{'moodle ms':>11}{'gateway ms':>12}{'cpu ms':>9}  moodle calls")
    for label, row in rows:
        gateway_ms = row["wall_ms"] - row["moodle_ms"]
        calls = ", ".join(f"{name} {count}" for name, count in sorted(row["calls"].items()))
        figures = f"{row['wall_ms']:>9.0f}{row['moodle_ms']:>11.0f}{gateway_ms:>12.0f}{row['cpu_ms']:>9.0f}"
        print(f"{label:<17}{figures}  {calls}")


if __name__ == "__main__":
    main()
