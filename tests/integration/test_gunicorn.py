"""``gunicorn --paste production.ini -k gthread -w 2 --threads 16``, started from the repository root (whose
gunicorn.conf.py it reads), in front of a standalone sandbox and a real Redis: both workers serve, with one rate
budget and one read cache between them; the start is refused in the master, in one line, when the workers could not
serve; SIGTERM ends the event streams and stops every process, their last lines written."""

import gc
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import structlog

from lms_api.events.embedded import CLIENT_GONE
from lms_api.gunicorn import (
    ToldWhenClientLeaves,
    client_gone,
    on_starting,
    post_worker_init,
    pre_request,
    settings_for,
    worker_exit,
)
from lms_api.server import REDIS_CLIENTS, THREADS_BESIDES_STREAMS, open_files_needed
from tests.support.credentials import mint
from tests.support.paths import ROOT
from tests.support.processes import BIN, Processes, clean_env, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually

SECRET = "gunicorn-secret-" + "g" * 40
MOODLE_TOKEN = "gunicorn-token"
READ_BUDGET = 6  # RATE_LIMIT_READ, per minute: counted in Redis, whichever worker serves
GUNICORN = ["-k", "gthread", "-w", "2", "--threads", "16"]  # as the README runs it, on two cores
EVENTS_MAX_STREAMS = 8  # its default
HEARTBEAT_S = 15  # EVENTS_HEARTBEAT_S's default


def gunicorn_command(folder, *options):
    """gunicorn as the README runs it, on a free port, with the copy of production.ini in ``folder``: a developer's
    own .env beside the repository's ini cannot leak in. Answers (command, base URL)."""
    if not (folder / "production.ini").exists():
        shutil.copy(ROOT / "production.ini", folder)
    port = free_port()
    command = [str(BIN / "gunicorn"), "--paste", str(folder / "production.ini"), *options, "-b", f"127.0.0.1:{port}"]
    return command, f"http://127.0.0.1:{port}"


def gunicorn_env(folder, **settings):
    """The environment of a test's gunicorn: none of the caller's secrets, nor its REDIS_URL unless given; gunicorn's
    control socket in ``folder``, of this gunicorn alone."""
    env = {key: value for key, value in clean_env(**settings).items() if key != "REDIS_URL" or "REDIS_URL" in settings}
    return {**env, "XDG_RUNTIME_DIR": str(folder)}


def gateway_env(folder, moodle, **settings):
    """:func:`gunicorn_env` of a gateway on ``moodle``, with the tests' Moodle token and JWT secret."""
    return gunicorn_env(folder, MOODLE_BASE_URL=moodle, MOODLE_TOKEN=MOODLE_TOKEN, JWT_SECRET=SECRET, **settings)


@dataclass
class Running:
    process: subprocess.Popen
    base: str
    log: Path

    def lines(self):
        return self.log.read_text().splitlines()

    def json_lines(self, event):
        return [record for record in map(_json_or_none, self.lines()) if record and record["event"] == event]


def _json_or_none(line):
    """The app's line as an object; None for one of gunicorn's own, which are not JSON."""
    try:
        return json.loads(line)
    except ValueError:
        return None


def start_gunicorn(processes, *options, env, cwd=ROOT):
    """gunicorn from the repository root (or ``cwd``), its output in gunicorn.log in the processes' folder, stopped
    with them."""
    folder = processes.folder
    command, base = gunicorn_command(folder, *options)
    log = folder / "gunicorn.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=output, text=True)
    processes.started.append(process)
    wait_for_port(int(base.rsplit(":", 1)[1]), process)
    eventually(lambda: ready(base), "the gateway ready", 30)
    return Running(process, base, log)


def ready(base):
    try:
        return requests.get(f"{base}/readyz", timeout=10).status_code == 200
    except requests.RequestException:  # a worker still loading the app on a busy machine
        return False


@pytest.fixture(scope="module")
def moodle(tmp_path_factory):
    processes = Processes(tmp_path_factory.mktemp("gunicorn-moodle"))
    try:
        yield processes.sandbox(MOODLE_TOKEN)
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, moodle, module_redis_url):
    """Two gthread workers, one Redis, a small read budget."""
    processes = Processes(tmp_path_factory.mktemp("gunicorn"))
    env = gateway_env(
        processes.folder,
        moodle,
        REDIS_URL=module_redis_url,
        RATE_LIMIT_READ=f"{READ_BUDGET}/minute",
    )
    try:
        yield start_gunicorn(processes, *GUNICORN, env=env)
    finally:
        processes.stop_all()


def worker_pids(master):
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
    return {int(pid) for pid in children}


def pid_of(gateway, request_id):
    """The worker that served the request ``request_id``, from its request line (written by the worker's log writer
    thread, soon after the answer)."""
    found = []

    def logged():
        found[:] = [line["pid"] for line in gateway.json_lines("request") if line["request_id"] == request_id]
        return bool(found)

    eventually(logged, f"the request line of {request_id}")
    return found[0]


def connection_to_each_worker(gateway):
    """A kept-alive connection (a requests.Session) to each worker, by its pid: each request on one is served by the
    worker that accepted it."""
    sessions = {}
    for _ in range(100):
        session = requests.Session()
        probe = f"probe-{uuid.uuid4().hex}"
        assert session.get(f"{gateway.base}/healthz", headers={"X-Request-ID": probe}, timeout=10).status_code == 200
        pid = pid_of(gateway, probe)
        if pid in sessions:
            session.close()
        else:
            sessions[pid] = session
        if len(sessions) == 2:
            return sessions
    raise AssertionError(f"100 connections were all accepted by {set(sessions)}")


def test_both_workers_serve_and_each_request_line_names_its_worker(gateway):
    sessions = connection_to_each_worker(gateway)

    served = set()
    for session in sessions.values():
        request_id = f"served-{uuid.uuid4().hex}"
        assert session.get(f"{gateway.base}/healthz", headers={"X-Request-ID": request_id}, timeout=10).ok
        served.add(pid_of(gateway, request_id))
    assert served == worker_pids(gateway.process)
    assert len(served) == 2
    assert gateway.process.pid not in served  # the master serves nothing


def test_requests_spread_over_both_workers_spend_one_rate_budget(gateway):
    first, second = connection_to_each_worker(gateway).values()
    token = mint("siteinfo:read", secret=SECRET, sub=f"budget-{uuid.uuid4().hex}")
    answers = []
    for number in range(READ_BUDGET + 4):
        session = (first, second)[number % 2]
        request_id = f"budget-{uuid.uuid4().hex}"
        headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
        status = session.get(f"{gateway.base}/api/moodle/siteinfo", headers=headers, timeout=10).status_code
        answers.append((status, pid_of(gateway, request_id)))

    assert [status for status, _ in answers] == [200] * READ_BUDGET + [429] * 4
    # Each worker allowed some of the budget and refused past it: the count is one, in Redis.
    for pid in worker_pids(gateway.process):
        assert {status for status, served_by in answers if served_by == pid} == {200, 429}


def sandbox_calls(moodle, function):
    response = requests.get(f"{moodle}/__sandbox__/calls", headers={"X-Sandbox-Token": MOODLE_TOKEN}, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["calls"].get(function, 0)


def test_what_one_worker_read_from_moodle_the_other_answers_from_the_one_cache(gateway, moodle):
    first, second = connection_to_each_worker(gateway).values()
    headers = {"Authorization": "Bearer " + mint("courses:read", secret=SECRET, sub=f"cache-{uuid.uuid4().hex}")}
    sent = sandbox_calls(moodle, "core_course_get_courses")

    missed = first.get(f"{gateway.base}/api/moodle/courses", headers=headers, timeout=10)
    hit = second.get(f"{gateway.base}/api/moodle/courses", headers=headers, timeout=10)

    assert (missed.status_code, hit.status_code) == (200, 200), hit.text
    assert missed.headers["Cache-Status"] == "lms_api; fwd=uri-miss; stored"
    assert hit.headers["Cache-Status"].startswith("lms_api; hit; ttl=")
    assert hit.json()["data"] == missed.json()["data"]
    assert sandbox_calls(moodle, "core_course_get_courses") == sent + 1


def test_a_stream_whose_client_left_frees_its_slot_within_seconds_not_at_its_next_heartbeat(gateway):
    sessions = connection_to_each_worker(gateway)
    token = mint("events:read", secret=SECRET, sub=f"left-{uuid.uuid4().hex}", moodle_userid=3)
    ticket = requests.post(
        f"{gateway.base}/api/moodle/events/tickets", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert ticket.status_code == 201, ticket.text
    opened = f"stream-{uuid.uuid4().hex}"
    stream = requests.get(
        gateway.base + ticket.json()["data"]["stream_url"], headers={"X-Request-ID": opened}, stream=True, timeout=20
    )
    assert next(stream.iter_content(chunk_size=None)).startswith(b"retry:")
    its_worker = sessions[pid_of(gateway, opened)]  # /metrics counts the streams of the worker that answers it

    def streams_open():
        text = its_worker.get(f"{gateway.base}/metrics", timeout=10).text
        return int(float(re.search(r"^lms_api_event_streams_open (\S+)$", text, re.MULTILINE).group(1)))

    assert streams_open() == 1
    stream.close()

    eventually(lambda: streams_open() == 0, "the stream of the client that left freed", HEARTBEAT_S / 3)


def refusal(tmp_path, *options, **settings):
    """gunicorn started with ``options`` and ``settings`` (a Moodle that is never called): its exit status, its
    lines of its own and all of its output."""
    command, _ = gunicorn_command(tmp_path, *options)
    env = gunicorn_env(tmp_path, MOODLE_BASE_URL="http://127.0.0.1:9", MOODLE_TOKEN=MOODLE_TOKEN, JWT_SECRET=SECRET)
    env = {key: value for key, value in {**env, **settings}.items() if value is not None}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    return result.returncode, [line for line in output.splitlines() if line.startswith("lms_api:")], output


NO_REDIS = (
    "2 workers without REDIS_URL would each keep their own rate budgets, read cache, idempotency keys, event tickets "
    "and jobs: set REDIS_URL, or run one worker (-w 1)"
)
NO_MOODLE_TOKEN = (
    "configuration error: MOODLE_TOKEN is required with production.ini: set it in the environment or in .env"
)


@pytest.mark.parametrize(
    ("settings", "said"),
    [({}, NO_REDIS), ({"MOODLE_TOKEN": None}, NO_MOODLE_TOKEN)],
    ids=["two-workers-no-redis", "no-moodle-token"],
)
def test_a_start_the_workers_could_not_serve_is_refused_in_one_line_before_any_worker(tmp_path, settings, said):
    status, own_lines, output = refusal(tmp_path, *GUNICORN, **settings)

    assert status == 2, output
    assert own_lines == [f"lms_api: {said}"]
    assert "Booting worker" not in output  # nor would a worker failing on its own be started again, and again
    assert "Traceback" not in output


def master(folder, *options):
    """What gunicorn's master hands ``on_starting``, given ``options`` on the command line."""
    from gunicorn.config import Config

    shutil.copy(ROOT / "production.ini", folder)
    cfg = Config()
    parsed = cfg.parser().parse_args(["--paste", str(folder / "production.ini"), *options])
    for key, value in vars(parsed).items():
        if value is not None and key != "args":
            cfg.set(key, value)
    return SimpleNamespace(cfg=cfg, worker_class=cfg.worker_class, pidfile=None, log=None)


@pytest.mark.parametrize(
    ("options", "settings", "said"),
    [
        (GUNICORN, {}, NO_REDIS),
        (
            GUNICORN,
            {"REDIS_URL": "redis://127.0.0.1:9/0", "JOBS_ENGINE": "embedded"},
            "2 workers with JOBS_ENGINE=embedded would each keep their own jobs, which could not be read or cancelled "
            "through another: use JOBS_ENGINE=rq, or run one worker (-w 1)",
        ),
        (
            [*GUNICORN, "--preload"],
            {"REDIS_URL": "redis://127.0.0.1:9/0"},
            "2 workers from an app preloaded in the master (--preload) would share its metrics in memory, each "
            "counting alone: leave --preload out",
        ),
        (
            ["-k", "gthread", "-w", "1", "--threads", "4"],
            {},
            f"threads = 4 is too few for {EVENTS_MAX_STREAMS} event streams (EVENTS_MAX_STREAMS), each holding a "
            f"thread, and the requests besides them: set threads to at least "
            f"{EVENTS_MAX_STREAMS + THREADS_BESIDES_STREAMS}, lower EVENTS_MAX_STREAMS, or let nginx with nchan hold "
            "the streams (NCHAN_PUBLISH_URL)",
        ),
        (
            ["-k", "sync", "-w", "1", "--threads", "1"],
            {},
            "gunicorn serves the gateway with its gthread workers (-k gthread), not SyncWorker: a worker's threads "
            "serve its requests",
        ),
        (GUNICORN, {"MOODLE_TOKEN": None, "JWT_SECRET": "short"}, None),
    ],
    ids=[
        "two-workers-no-redis",
        "two-workers-embedded-jobs",
        "preload",
        "too-few-threads",
        "sync-worker",
        "bad-settings",
    ],
)
def test_the_master_refuses_workers_that_could_not_serve(tmp_path, monkeypatch, capsys, options, settings, said):
    for key in ("REDIS_URL", "JOBS_ENGINE", "NCHAN_PUBLISH_URL", "EVENTS_MAX_STREAMS"):
        monkeypatch.delenv(key, raising=False)
    environ = {"MOODLE_BASE_URL": "http://127.0.0.1:9", "MOODLE_TOKEN": MOODLE_TOKEN, "JWT_SECRET": SECRET, **settings}
    for key, value in environ.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)

    with pytest.raises(SystemExit) as stopped:
        on_starting(master(tmp_path, *options))

    assert stopped.value.code == 2
    printed = capsys.readouterr().err.splitlines()
    if said is None:  # every problem at once, each on its line, as the app itself would say them
        assert printed[0] == f"lms_api: {NO_MOODLE_TOKEN}"
        assert printed[1].startswith("lms_api: configuration error: JWT_SECRET ")
        assert "short" not in printed[1]  # a secret is never repeated
        assert len(printed) == 2
    else:
        assert printed == [f"lms_api: {said}"]


@pytest.mark.parametrize("where", [".env", "ini"])
def test_two_workers_start_with_redis_url_from_wherever_the_gateway_reads_it(tmp_path, moodle, module_redis_url, where):
    shutil.copy(ROOT / "production.ini", tmp_path)
    if where == ".env":
        (tmp_path / ".env").write_text(f"REDIS_URL={module_redis_url}\n")
    else:
        ini = tmp_path / "production.ini"
        ini.write_text(ini.read_text().replace("[app:main]\n", f"[app:main]\nredis_url = {module_redis_url}\n", 1))
    processes = Processes(tmp_path)
    try:
        gateway = start_gunicorn(
            processes,
            *GUNICORN,
            env=gateway_env(tmp_path, moodle),
        )
        ready = requests.get(f"{gateway.base}/readyz", timeout=10).json()["data"]
        assert ready["cache"] == "redis"
        assert len(worker_pids(gateway.process)) == 2
    finally:
        processes.stop_all()


def test_started_elsewhere_gunicorn_reads_the_gateways_settings_and_hooks_from_the_package(tmp_path, moodle):
    processes = Processes(tmp_path)
    env = gateway_env(tmp_path, moodle)
    try:
        # No gunicorn.conf.py here, no -k nor --threads: gthread with 16 threads, from lms_api.gunicorn.
        gateway = start_gunicorn(processes, "-c", "python:lms_api.gunicorn", env=env, cwd=tmp_path)
        request_id = f"elsewhere-{uuid.uuid4().hex}"
        assert requests.get(f"{gateway.base}/healthz", headers={"X-Request-ID": request_id}, timeout=10).ok

        assert {pid_of(gateway, request_id)} == worker_pids(gateway.process)  # the hooks ran
        assert "Using worker: gthread" in gateway.log.read_text()
    finally:
        processes.stop_all()


def test_sigterm_ends_the_event_streams_and_stops_every_process_with_its_last_lines_written(
    tmp_path, moodle, module_redis_url
):
    processes = Processes(tmp_path)
    env = gateway_env(tmp_path, moodle, REDIS_URL=module_redis_url)
    try:
        gateway = start_gunicorn(processes, *GUNICORN, env=env)
        workers = worker_pids(gateway.process)
        token = mint("events:read", secret=SECRET, sub=f"stream-{uuid.uuid4().hex}", moodle_userid=3)
        ticket = requests.post(
            f"{gateway.base}/api/moodle/events/tickets", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert ticket.status_code == 201, ticket.text
        stream = requests.get(gateway.base + ticket.json()["data"]["stream_url"], stream=True, timeout=20)
        assert stream.status_code == 200
        chunks = stream.iter_content(chunk_size=None)
        assert next(chunks).startswith(b"retry:")  # open, and holding a thread of its worker

        gateway.process.send_signal(signal.SIGTERM)

        # Well within gunicorn's graceful_timeout (30 s), which an open stream would otherwise be waited out for.
        assert gateway.process.wait(10) == 0
        assert b"".join(chunks) == b""  # the stream ended, nothing more sent
        assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
        assert len(gateway.json_lines("server.shutting_down")) >= 1
        assert len(gateway.json_lines("server.stopped")) == 2  # each worker's last line, written as it left
        assert "Shutting down: Master" in gateway.log.read_text()
    finally:
        processes.stop_all()


# The hooks in this process, on gunicorn's own objects: what a worker does once its app is loaded and when it leaves.


@pytest.fixture
def worker(gateway_app):
    """A gthread worker of gunicorn's as it is once its app is loaded, before it serves; SIGTERM's handler and the
    collector's frozen objects are put back after the test."""
    from gunicorn.config import Config
    from gunicorn.workers.gthread import ThreadWorker

    cfg = Config()
    thread_worker = ThreadWorker(1, os.getppid(), [], None, 15, cfg, None)
    thread_worker.pid = os.getpid()
    thread_worker.method_queue.init()
    thread_worker.wsgi = gateway_app.router
    handler = signal.getsignal(signal.SIGTERM)
    yield thread_worker
    signal.signal(signal.SIGTERM, handler)
    gc.unfreeze()
    thread_worker.method_queue.close()
    thread_worker.tmp.close()


@pytest.fixture
def gateway_app(make_gateway):
    return make_gateway()


def test_a_loaded_worker_freezes_its_app_and_at_sigterm_stops_accepting_and_ends_its_streams_on_its_main_loop(
    worker, gateway_app
):
    post_worker_init(worker)

    assert gc.get_freeze_count() > 0
    told_to_stop = signal.getsignal(signal.SIGTERM)
    told_to_stop(signal.SIGTERM, None)
    assert worker.alive is False
    assert gateway_app.log_lines == []  # nothing done in the handler itself
    told_to_stop(signal.SIGTERM, None)  # again, as systemd and the master may both send it
    worker.method_queue.run_callbacks(None)  # the worker's main loop, woken by the handler

    assert [line["event"] for line in gateway_app.log_lines] == ["server.shutting_down"]
    assert gateway_app.log_lines[0]["streams"] == 0


def test_a_worker_leaving_stops_its_job_engine_and_the_master_forgets_a_worker_without_an_app(worker, gateway_app):
    worker_exit(None, SimpleNamespace())  # in the master, for a worker already gone

    worker_exit(None, worker)

    assert [line["event"] for line in gateway_app.log_lines][-2:] == ["jobs.stopped", "server.stopped"]


def test_each_request_of_a_worker_logs_its_pid(worker):
    pre_request(worker, None)

    assert structlog.contextvars.get_contextvars()["pid"] == os.getpid()


def test_the_master_refuses_a_gateway_not_started_from_an_ini_and_drops_its_pidfile(tmp_path, capsys):
    from gunicorn.config import Config
    from gunicorn.pidfile import Pidfile

    cfg = Config()
    pidfile = Pidfile(str(tmp_path / "gunicorn.pid"))
    pidfile.create(os.getpid())
    arbiter = SimpleNamespace(cfg=cfg, worker_class=cfg.worker_class, pidfile=pidfile, log=None)

    with pytest.raises(SystemExit) as stopped:
        on_starting(arbiter)

    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "lms_api: run the gateway as gunicorn --paste production.ini (or development.ini): the app is built from the "
        "ini\n"
    )
    assert not (tmp_path / "gunicorn.pid").exists()


def test_the_master_reads_the_settings_from_the_environment_the_env_file_and_the_ini(tmp_path, monkeypatch):
    from gunicorn.config import Config

    ini = tmp_path / "production.ini"
    ini.write_text(
        (ROOT / "production.ini").read_text().replace("[app:main]\n", "[app:main]\nrate_limit_read = 7/minute\n")
    )
    (tmp_path / ".env").write_text("MOODLE_TOKEN=from-dotenv\nRATE_LIMIT_WRITE=8/minute\n")
    for key in ("MOODLE_TOKEN", "RATE_LIMIT_READ", "RATE_LIMIT_WRITE", "REDIS_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MOODLE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("RATE_LIMIT_WRITE", "9/minute")
    cfg = Config()
    cfg.set("paste", str(ini))

    settings = settings_for(cfg)

    assert (settings.moodle_token, str(settings.rate_limit_read), str(settings.rate_limit_write)) == (
        "from-dotenv",
        "7/60s",
        "9/60s",
    )


def test_the_master_lets_workers_that_can_serve_start_with_the_soft_limit_on_open_files_they_need(
    tmp_path, monkeypatch
):
    for key, value in {
        "MOODLE_BASE_URL": "http://127.0.0.1:9",
        "MOODLE_TOKEN": MOODLE_TOKEN,
        "JWT_SECRET": SECRET,
        "REDIS_URL": "redis://127.0.0.1:9/0",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("JOBS_ENGINE", "NCHAN_PUBLISH_URL", "EVENTS_MAX_STREAMS"):
        monkeypatch.delenv(key, raising=False)
    needed = open_files_needed(1000, 16, REDIS_CLIENTS)  # gunicorn's worker_connections, and each thread's clients
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    if before[1] != resource.RLIM_INFINITY and before[1] < needed:
        pytest.fail(f"the hard limit on open files is {before[1]}; this test needs {needed} (ulimit -Hn)")
    arbiter = master(tmp_path, *GUNICORN)
    logged = []
    arbiter.log = SimpleNamespace(info=lambda text, *values: logged.append(text % values))
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, before[1]))
    try:
        on_starting(arbiter)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)

    assert soft >= needed
    assert logged == [f"lms_api: soft limit on open files raised from 1024 to {soft}"]


def test_a_client_is_gone_once_it_closed_or_reset_its_connection_not_while_it_is_idle_or_sending():
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        assert client_gone(server_side) is False  # idle
        client_side.sendall(b"GET /next HTTP/1.1\r\n")
        assert client_gone(server_side) is False  # sending: what it sent is left to be read
        assert server_side.recv(100) == b"GET /next HTTP/1.1\r\n"
        client_side.close()
        assert client_gone(server_side) is True

    server_side, client_side = socket.socketpair()
    with server_side:
        client_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed with a reset
        server_side.sendall(b"unread by the client")
        client_side.close()
        assert client_gone(server_side) is True


def test_a_request_served_by_gunicorn_can_ask_whether_its_client_left(gateway_app):
    app = ToldWhenClientLeaves(gateway_app.router)
    seen = {}

    def asks(environ, start_response):
        seen.update(environ)
        return []

    app.app = asks
    server_side, client_side = socket.socketpair()
    with server_side, client_side:
        app({"gunicorn.socket": server_side}, None)
        assert seen[CLIENT_GONE]() is False
        client_side.close()
        assert seen[CLIENT_GONE]() is True
    seen.clear()
    app({}, None)  # no socket of gunicorn's: nothing to ask
    assert CLIENT_GONE not in seen
    assert app.registry is gateway_app.router.registry


def test_a_body_past_its_routes_limit_is_refused_on_its_declared_length_by_the_gateway_itself(gateway):
    """gunicorn has no cap of its own on bodies (waitress's max_request_body_size): the gateway's holds."""
    host, port = gateway.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.putrequest("POST", "/api/moodle/courses")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(64 * 1024 * 1024))  # declared, never sent
        connection.endheaders()
        answer = connection.getresponse()
        body = json.loads(answer.read())
    finally:
        connection.close()

    assert answer.status == 413
    assert body["error"]["code"] == "bodytoolarge"
