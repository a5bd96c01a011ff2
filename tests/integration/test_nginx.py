"""The nginx configuration the repository ships (deploy/nginx/lms_api.conf), run by Debian's nginx in front of
``pserve production.ini``: the gateway sees each caller's own address and the scheme and host they used, and nginx's
own 413s read like the gateway's.

Every test client connects from a loopback address of its own (127.0.0.2, 127.0.0.3, ...), as callers on other hosts
would; nginx connects to the gateway from 127.0.0.1, its only trusted proxy. nginx answers TLS for ``lms.test`` with a
certificate made for the test.
"""

import http.client
import itertools
import json
import re
import socket
import ssl
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from urllib3 import encode_multipart_formdata

from lms_api.errors import ErrorCode
from lms_api.hygiene import EXPOSED_HEADERS
from lms_api.settings import KEYS
from tests.support.credentials import mint, self_signed_certificate
from tests.support.nginx import NAME, SHIPPED, SHIPPED_READ_TIMEOUT, render, start_nginx, stop_nginx
from tests.support.processes import Processes, clean_env, queue_remote_fault, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually

ORIGIN = "https://app.example.edu"  # the allowed origin the shipped file names
SECRET = "nginx-secret-" + "n" * 40
MOODLE_TOKEN = "nginx-token"
JSON_LIMIT = 1024 * 1024  # MAX_JSON_BODY_KB's default
UPLOAD_LIMIT = 50 * 1024 * 1024 + 64 * 1024  # MOODLE_MAX_UPLOAD_MB's default and the multipart framing
_course_numbers = itertools.count(1)
NGINX_DEFAULT_READ_TIMEOUT_S = 60
# POST /enrol of 10,000 enrolments makes at most 66 Moodle calls (the shipped file says which).
LONGEST_ROUTE_CALLS = 66
READ_TIMEOUT_S = 4  # in place of the shipped one, for the test that waits past it
USERS_BY_FIELD = "core_user_get_users_by_field"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Stack:
    https_port: int
    gateway_port: int
    certificate: Path
    gateway_log: Path
    nginx_log: Path
    moodle: str
    gateway: subprocess.Popen

    def call(self, method, path, source, headers=None, body=None, server_name=NAME, timeout=20):
        """Through nginx, over TLS to ``server_name``, from the loopback address ``source`` (``::1``: over IPv6)."""
        context = ssl.create_default_context(cafile=self.certificate)
        connection = _TLSConnection(NAME, self.https_port, context, source, server_name, timeout)
        return _exchange(connection, method, path, headers or {}, body)

    def direct(self, method, path, source, headers=None, body=None):
        """Straight to pserve, from ``source``, past nginx."""
        connection = http.client.HTTPConnection("127.0.0.1", self.gateway_port, timeout=20, source_address=(source, 0))
        return _exchange(connection, method, path, headers or {}, body)


class _TLSConnection(http.client.HTTPSConnection):
    """``lms.test`` in SNI and Host, reached at nginx's loopback address of the source's family."""

    def __init__(self, host, port, context, source, server_name, timeout):
        super().__init__(host, port, context=context, timeout=timeout, source_address=(source, 0))
        self._tls = context
        self._server_name = server_name

    def connect(self):
        address = "::1" if ":" in self.source_address[0] else "127.0.0.1"
        raw = socket.create_connection((address, self.port), self.timeout, self.source_address)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self._server_name)


def _exchange(connection, method, path, headers, body):
    try:
        skip_host = "Host" in headers
        connection.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        if body is not None and "Content-Length" not in headers:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        answer = connection.getresponse()
        return Answer(answer.status, answer.headers, answer.read())
    finally:
        connection.close()


@contextmanager
def nginx_stack(folder, read_timeout=None, **environ):
    """nginx in front of ``pserve production.ini``, run from ``folder``; ``environ`` adds to the gateway's."""
    processes = Processes(folder)
    nginx = None
    try:
        env = clean_env(
            MOODLE_BASE_URL=processes.sandbox(MOODLE_TOKEN),
            MOODLE_TOKEN=MOODLE_TOKEN,
            JWT_SECRET=SECRET,
            TRUSTED_PROXIES="127.0.0.1/32",  # nginx
            METRICS_ALLOWED_NETWORKS="127.0.0.3/32",  # one test client; not nginx
            CORS_ALLOWED_ORIGINS=ORIGIN,
            RATE_LIMIT_UNAUTHENTICATED="3/minute",
            **environ,
        )
        moodle = env["MOODLE_BASE_URL"]
        gateway_port, https_port, http_port, publish_port = free_port(), free_port(), free_port(), free_port()
        gateway = processes("pserve", "production.ini", f"http_port={gateway_port}", env=env, log="gateway.log")
        nginx_folder = folder / "nginx"
        nginx_folder.mkdir()
        certificate, _ = self_signed_certificate(nginx_folder, NAME)
        config = render(nginx_folder, https_port, http_port, gateway_port, publish_port, read_timeout)
        nginx = start_nginx(nginx_folder, config, https_port)
        wait_for_port(gateway_port, gateway)
        gateway_log, nginx_log = folder / "gateway.log", nginx_folder / "error.log"
        stack = Stack(https_port, gateway_port, certificate, gateway_log, nginx_log, moodle, gateway)
        eventually(lambda: stack.direct("GET", "/readyz", "127.0.0.1").status == 200, "the gateway ready", 20)
        yield stack
    finally:
        if nginx:
            stop_nginx(nginx, folder / "nginx")
        processes.stop_all()


# Most tests share one stack per module (per test worker), each calling from loopback addresses of its own, so no
# test spends another's budget; a test that changes the gateway's settings or stops it has a stack of its own.
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with nginx_stack(tmp_path_factory.mktemp("nginx")) as shared:
        yield shared


@pytest.fixture(scope="module")
def short_timeout_stack(tmp_path_factory):
    with nginx_stack(tmp_path_factory.mktemp("nginx-short-timeout"), MOODLE_TIMEOUT_MS="1000") as shared:
        yield shared


@pytest.fixture
def own_stack(request, tmp_path):
    """A test's own stack; its indirect parameter is ``nginx_stack``'s keywords."""
    with nginx_stack(tmp_path, **getattr(request, "param", {})) as own:
        yield own


def new_course():
    """The JSON body of a course to create, its shortname one no other course in the test's sandbox has."""
    body = {"fullname": "Behind nginx", "shortname": f"NGX{next(_course_numbers)}", "categoryid": 1}
    return json.dumps(body).encode()


def unauthenticated(stack, source, **headers):
    return stack.call("GET", "/api/moodle/siteinfo", source, headers).status


def test_each_caller_has_its_own_unauthenticated_budget_and_a_forged_x_forwarded_for_buys_none(stack):
    assert [unauthenticated(stack, "127.0.0.4") for _ in range(4)] == [401, 401, 401, 429]

    assert unauthenticated(stack, "127.0.0.5") == 401  # another caller, another budget
    assert unauthenticated(stack, "127.0.0.4", **{"X-Forwarded-For": "192.0.2.44"}) == 429
    assert unauthenticated(stack, "127.0.0.4", **{"X-Forwarded-For": "127.0.0.5"}) == 429


def test_metrics_are_judged_on_the_callers_address_though_nginx_is_on_loopback(stack):
    outside = stack.call("GET", "/metrics", "127.0.0.2")
    inside = stack.call("GET", "/metrics", "127.0.0.3")

    assert outside.status == 404  # the gateway's refusal: nginx (127.0.0.1) let it through
    assert outside.json()["error"]["code"] == "notfound"
    assert inside.status == 200
    assert b"lms_api_requests_total" in inside.body
    assert stack.call("GET", "/metrics", "127.0.0.2", {"X-Forwarded-For": "127.0.0.3"}).status == 404


def test_location_names_the_scheme_and_host_the_caller_used_and_never_a_host_a_client_wrote(stack):
    token = mint("courses:write", secret=SECRET, sub="nginx-location")

    def create(call, source, **headers):
        body = new_course()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers}
        answer = call("POST", "/api/moodle/courses", source, headers, body)
        assert answer.status == 201, answer.body
        return answer.headers["Location"], answer.json()["data"]["id"]

    location, course = create(stack.call, "127.0.0.2")
    assert location == f"https://{NAME}:{stack.https_port}/api/moodle/courses/{course}"
    # server_name matches Host without its port, and whatever its case: none of it reaches Location.
    for host in (f"{NAME}:1", NAME, f"{NAME}.", f"{NAME.upper()}:{stack.https_port}"):
        location, _ = create(stack.call, "127.0.0.2", Host=host)
        assert location.startswith(f"https://{NAME}:{stack.https_port}/api/moodle/courses/"), host

    forged = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    location, _ = create(stack.direct, "127.0.0.2", **forged)  # not a trusted proxy: none of it is believed
    assert "evil.example" not in location

    for source in ("127.0.0.2", "::1"):  # nginx answers no other host name, over IPv6 either
        assert stack.call("GET", "/healthz", source).status == 200
        with pytest.raises(http.client.RemoteDisconnected):
            stack.call("GET", "/healthz", source, {"Host": "evil.example"})
        with pytest.raises(ssl.SSLError):
            stack.call("GET", "/healthz", source, server_name="evil.example")


def declare(stack, path, length, origin, request_id):
    """A POST declaring ``length`` bytes, refused on that alone: the bytes are never sent."""
    headers = {"Content-Type": "application/json", "Content-Length": str(length), "X-Request-ID": request_id}
    return stack.call("POST", path, "127.0.0.2", {**headers, "Origin": origin} if origin else headers)


@pytest.mark.parametrize(
    ("path", "limit", "code", "message", "max_bytes"),
    [
        (
            "/api/moodle/courses",
            JSON_LIMIT,
            "bodytoolarge",
            "Request bodies are limited to 1048576 bytes (MAX_JSON_BODY_KB)",
            JSON_LIMIT,
        ),
        (
            "/api/moodle/files/upload",
            UPLOAD_LIMIT,
            "filetoolarge",
            "Uploads are limited to 50 MiB (MOODLE_MAX_UPLOAD_MB)",
            50 * 1024 * 1024,
        ),
    ],
    ids=["json", "upload"],
)
def test_nginx_answers_its_own_413_as_the_gateway_would(stack, path, limit, code, message, max_bytes):
    refused = declare(stack, path, limit + 1, ORIGIN, f"big-{code}")

    assert refused.status == 413
    assert refused.json() == {
        "ok": False,
        "error": {"code": code, "message": message, "details": {"max_bytes": max_bytes}, "request_id": f"big-{code}"},
    }
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert refused.headers["Access-Control-Expose-Headers"] == EXPOSED_HEADERS
    assert refused.headers["Vary"] == "Origin"
    assert refused.headers["X-Content-Type-Options"] == "nosniff"
    assert refused.headers["Cache-Control"] == "no-store"
    assert refused.headers["X-Request-ID"] == f"big-{code}"
    # nginx refused it on its Content-Length alone, and the gateway never saw it: its log lines are written by a
    # thread of their own, so a request sent after it must be logged before the big one's absence tells anything.
    too_large = f"client intended to send too large body: {limit + 1} bytes"
    assert stack.nginx_log.read_text().count(too_large) == 1
    assert stack.call("GET", "/healthz", "127.0.0.2", {"X-Request-ID": f"after-big-{code}"}).status == 200
    eventually(lambda: f'"after-big-{code}"' in stack.gateway_log.read_text(), "the later request's log line")
    assert f'"big-{code}"' not in stack.gateway_log.read_text()

    elsewhere = declare(stack, path, limit + 1, "https://elsewhere.example", "big-elsewhere")
    assert elsewhere.status == 413
    assert "Access-Control-Allow-Origin" not in elsewhere.headers
    assert "Access-Control-Expose-Headers" not in elsewhere.headers
    assert declare(stack, path, limit + 1, None, "bad id!").json()["error"]["request_id"] != "bad id!"


def test_each_route_has_its_own_limit_at_nginx_and_an_upload_streams_through_it(stack):
    three_mib = bytes(range(256)) * (3 * 4096)
    body, content_type = encode_multipart_formdata({"file": ("notes.bin", three_mib)})
    token = mint("files:write", secret=SECRET, sub="nginx-upload")

    upload = stack.call(
        "POST",
        "/api/moodle/files/upload",
        "127.0.0.6",
        {"Authorization": f"Bearer {token}", "Content-Type": content_type},
        body,
    )
    json_route = stack.call("POST", "/api/moodle/courses", "127.0.0.6", {"Content-Type": "application/json"}, body)

    assert upload.status == 201, upload.body
    (stored,) = upload.json()["data"]["files"]
    assert (stored["filename"], stored["filesize"]) == ("notes.bin", len(three_mib))
    assert json_route.status == 413
    assert json_route.json()["error"]["code"] == "bodytoolarge"


def test_no_answer_says_waitress(stack):
    answers = [
        stack.call("GET", "/healthz", "127.0.0.7"),
        stack.call("GET", "/api/moodle/nowhere", "127.0.0.7"),
        stack.direct("GET", "/healthz", "127.0.0.7"),
        stack.direct("GET", "/api/moodle/nowhere", "127.0.0.7"),
    ]

    assert [answer.status for answer in answers] == [200, 404, 200, 404]
    assert [answer.headers.get("Server") for answer in answers] == ["nginx", "nginx", None, None]
    assert not any(b"waitress" in answer.body for answer in answers)


def test_the_shipped_read_timeout_outlasts_the_longest_route_and_nginxs_default():
    shipped = re.findall(r"^[ \t]*(proxy_read_timeout [^;]*;)", SHIPPED.read_text(), re.MULTILINE)
    moodle_timeout_s = KEYS["MOODLE_TIMEOUT_MS"].parse("MOODLE_TIMEOUT_MS", KEYS["MOODLE_TIMEOUT_MS"].fallback) / 1000

    assert shipped == [SHIPPED_READ_TIMEOUT], f"{SHIPPED} sets proxy_read_timeout once, as the stacks here replace it"
    minutes = re.fullmatch(r"proxy_read_timeout (\d+)m;", shipped[0])
    assert minutes, f"{SHIPPED} says {shipped[0]!r}, in minutes"
    assert int(minutes[1]) * 60 > LONGEST_ROUTE_CALLS * moodle_timeout_s > NGINX_DEFAULT_READ_TIMEOUT_S


@pytest.mark.parametrize(
    "own_stack",
    [{"read_timeout": f"{READ_TIMEOUT_S}s", "MOODLE_TIMEOUT_MS": "30000", "CACHE_TTLS": "users=0"}],
    indirect=True,
    ids=["read-timeout"],
)
def test_nginx_waits_for_the_gateway_as_long_as_the_shipped_read_timeout_says(own_stack):
    """The shipped file's proxy_read_timeout, set to a few seconds here, is the one nginx keeps on the API's routes:
    an answer within it comes through, one past it is cut there with the gateway's envelope. Under nginx's default
    (60 s) both would come through; the shipped value itself is checked above."""
    token = mint("users:read", secret=SECRET, sub="nginx-slow")

    def users_after(seconds, request_id):
        queue_remote_fault(own_stack.moodle, MOODLE_TOKEN, kind="delay", seconds=seconds, function=USERS_BY_FIELD)
        headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
        return own_stack.call("GET", "/api/moodle/users/by-field?field=id&values=3", "127.0.0.2", headers)

    within = users_after(READ_TIMEOUT_S - 3, "within")
    past = users_after(READ_TIMEOUT_S + 1, "past")

    assert within.status == 200, within.body
    assert [user["id"] for user in within.json()["data"]["users"]] == [3]
    assert past.status == 502, past.body
    assert past.json()["error"]["code"] == "gatewayunreachable"
    assert "upstream timed out" in own_stack.nginx_log.read_text()


def test_when_the_gateway_does_not_answer_nginx_says_so_in_the_envelope_a_page_can_read(own_stack):
    stack = own_stack
    stack.gateway.terminate()
    stack.gateway.wait(20)
    upload, content_type = encode_multipart_formdata({"file": ("notes.txt", b"notes")})
    json_headers = {"Content-Type": "application/json", "Origin": ORIGIN}

    answers = {
        "read": stack.call("GET", "/api/moodle/siteinfo", "127.0.0.2", {"Origin": ORIGIN, "X-Request-ID": "read"}),
        "head": stack.call("HEAD", "/api/moodle/siteinfo", "127.0.0.2", {"Origin": ORIGIN, "X-Request-ID": "head"}),
        "write": stack.call(
            "POST", "/api/moodle/courses", "127.0.0.2", {**json_headers, "X-Request-ID": "write"}, b"{}"
        ),
        "patch": stack.call(
            "PATCH", "/api/moodle/courses/1", "127.0.0.2", {**json_headers, "X-Request-ID": "patch"}, b"{}"
        ),
        "upload": stack.call(
            "POST",
            "/api/moodle/files/upload",
            "127.0.0.2",
            {"Content-Type": content_type, "Origin": ORIGIN, "X-Request-ID": "upload"},
            upload,
        ),
        "metrics": stack.call("GET", "/metrics", "127.0.0.3", {"Origin": ORIGIN, "X-Request-ID": "metrics"}),
    }

    for name, answer in answers.items():
        assert answer.status == 502, name
        assert answer.headers["Content-Type"] == "application/json", name
        assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN, name
        assert answer.headers["Access-Control-Expose-Headers"] == EXPOSED_HEADERS, name
        assert answer.headers["Vary"] == "Origin", name
        assert answer.headers["X-Content-Type-Options"] == "nosniff", name
        assert answer.headers["Cache-Control"] == "no-store", name
        assert answer.headers["X-Request-ID"] == name, name
    assert answers.pop("head").body == b""
    for name, answer in answers.items():
        assert answer.json() == {
            "ok": False,
            "error": {
                "code": "gatewayunreachable",
                "message": "The gateway did not answer: nginx could not reach it, or had no answer in time",
                "details": {} if name in {"read", "metrics"} else {"outcome": "unknown"},
                "request_id": name,
            },
        }, name
    assert ErrorCode("gatewayunreachable").status == 502
    elsewhere = stack.call("GET", "/api/moodle/siteinfo", "127.0.0.2", {"Origin": "https://elsewhere.example"})
    assert elsewhere.status == 502
    assert "Access-Control-Allow-Origin" not in elsewhere.headers


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"kind": "notjson"}, 502, "badresponse"),
        ({"kind": "http", "status": 503}, 503, "moodleunavailable"),
        ({"kind": "delay", "seconds": 3}, 504, "moodletimeout"),
    ],
    ids=["502", "503", "504"],
)
def test_the_gateways_own_502_503_and_504_pass_through_nginx_as_it_wrote_them(short_timeout_stack, fault, status, code):
    stack = short_timeout_stack
    queue_remote_fault(stack.moodle, MOODLE_TOKEN, function="core_course_create_courses", **fault)
    token = mint("courses:write", secret=SECRET, sub="nginx-faults")
    body = new_course()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Origin": ORIGIN}

    answer = stack.call(
        "POST", "/api/moodle/courses", "127.0.0.2", {**headers, "X-Request-ID": f"fault-{status}"}, body
    )

    assert answer.status == status, answer.body
    error = answer.json()["error"]
    assert (error["code"], error["request_id"]) == (code, f"fault-{status}")

    def logged_statuses():  # the gateway's own request line, written by its log thread once the answer is out
        records = map(json.loads, stack.gateway_log.read_text().splitlines())
        return [r["status"] for r in records if r["event"] == "request" and r.get("request_id") == f"fault-{status}"]

    eventually(lambda: logged_statuses() == [status], "the gateway's request line")
