"""The sandbox over real HTTP, with added latency and injected faults for tests and benchmarks.

Moodle endpoints: ``/webservice/rest/server.php`` (JSON answers) and ``/webservice/upload.php`` (multipart files into
the token user's draft area, see ``upload.py``). Calls are counted per function, upload calls as ``upload.php``, and a
queued fault with ``"function": "upload.php"`` hits only uploads (its ``maintenance`` answer is upload.php's own).

Control endpoints (header ``X-Sandbox-Token: <the sandbox's token>``):

- ``POST /__sandbox__/faults`` ``{"kind": ..., "times": 1, "function": null, "status": 500, "seconds": 30}``
  queues a fault for the next matching calls. Kinds: ``reset`` (connection dropped after the request
  was read), ``delay`` (answer after ``seconds``), ``http`` (HTML page with ``status``; 503 adds
  ``Retry-After``), ``maintenance`` (Moodle's ``sitemaintenance`` error in a 200), ``notjson`` (HTML with 200).
- ``DELETE /__sandbox__/faults`` clears them; ``GET /__sandbox__/calls`` counts calls per function.
- ``GET /__sandbox__/in-flight`` answers ``{"in_flight": n, "max_in_flight": m}``: the web-service and upload calls
  being handled now, and the most handled at once so far. A call is in flight from the moment it is dispatched
  until its answer starts to be written (or its connection is dropped), so a client that got its answer never
  sees it still counted. ``DELETE /__sandbox__/in-flight`` starts the maximum again from the calls in flight now.
"""

from __future__ import annotations

import json
import random
import secrets
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import structlog

from moodle_sandbox.errors import MoodleException, site_maintenance
from moodle_sandbox.events import EventPoster, EventsTarget
from moodle_sandbox.php import php_json
from moodle_sandbox.phpform import PhpArray, parse_php_form
from moodle_sandbox.site import SandboxSite
from moodle_sandbox.upload import UPLOAD_FUNCTION, UploadedFile, ajax_error, read_multipart, upload

log = structlog.get_logger("moodle_sandbox")

REST_PATH = "/webservice/rest/server.php"
UPLOAD_PATH = "/webservice/upload.php"
CONTROL_PREFIX = "/__sandbox__/"
FAULT_KINDS = ("reset", "delay", "http", "maintenance", "notjson")
STOP_POLL_S = 0.05
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Fault:
    kind: str
    times: int = 1
    function: str | None = None
    status: int = 500
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.times, int) or not isinstance(self.status, int):
            raise ValueError("times and status must be integers")
        if not isinstance(self.seconds, (int, float)) or self.seconds < 0:
            raise ValueError("seconds must be a number of at least 0")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}")
        if self.times < 1:
            raise ValueError("times must be at least 1")


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 overflows when a gateway opens ten connections at once

    def __init__(
        self,
        site: SandboxSite,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        fault_rate: float = 0.0,
        random_fault: str = "reset",
    ) -> None:
        super().__init__((host, port), _Handler)
        self.site = site
        self.site.base_url = self.url
        self.latency_s = latency_ms / 1000
        self.fault_rate = fault_rate
        self.random_fault = Fault(random_fault)
        self.faults: list[Fault] = []
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.state_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def token(self) -> str:
        """The web-service token the site accepts."""
        return self.site.token

    def take_fault(self, function: str) -> Fault | None:
        with self.state_lock:
            self.calls[function] += 1
            for fault in self.faults:
                if fault.function in (None, function):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        if self.fault_rate and random.random() < self.fault_rate:
            return self.random_fault
        return None

    def call_started(self) -> None:
        with self.state_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def call_ended(self) -> None:
        with self.state_lock:
            self.in_flight -= 1

    def in_flight_state(self) -> dict[str, int]:
        """The calls in flight now and the most at once since the start or the last :meth:`reset_max_in_flight`."""
        with self.state_lock:
            return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight}

    def reset_max_in_flight(self) -> dict[str, int]:
        """Start the maximum again from the calls in flight now; answers the state after the reset."""
        with self.state_lock:
            self.max_in_flight = self.in_flight
            return {"in_flight": self.in_flight, "max_in_flight": self.max_in_flight}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (its timeout ran out) is no error of the sandbox; anything else is printed."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def start(self) -> SandboxServer:
        # A short poll: stop() waits for it, and tests start and stop many sandboxes.
        thread = threading.Thread(target=self.serve_forever, args=(STOP_POLL_S,), name="moodle-sandbox", daemon=True)
        thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.site.events is not None:
            self.site.events.close()


def build_sandbox(
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    events_url: str | None = None,
    events_secret: str | None = None,
    **options: Any,
) -> SandboxServer:
    """A sandbox bound to ``host:port`` (``port=0`` picks a free one), not yet serving.

    With ``events_url`` (and ``events_secret``, sent as ``Authorization: Bearer``), the sandbox posts the Moodle events
    of its writes there, as Moodle's Event Trigger plugin would (``events.py``); without it, none. Site options:
    ``service_functions``, ``debug``, ``max_input_vars``, ``max_bytes``, ``upload_files``; the rest go to the server.
    """
    if (events_url is None) != (events_secret is None):
        raise ValueError("events_url and events_secret go together: where to post events, and the secret to send")
    site_keys = ("service_functions", "debug", "max_input_vars", "max_bytes", "upload_files")
    site_options = {key: options.pop(key) for key in site_keys if key in options}
    site = SandboxSite(token or secrets.token_hex(16), **site_options)
    server = SandboxServer(site, host, port, **options)
    if events_url is not None and events_secret is not None:
        site.events = EventPoster(EventsTarget(events_url, events_secret))
    return server


def start_sandbox(host: str = "127.0.0.1", port: int = 0, token: str | None = None, **options: Any) -> SandboxServer:
    """A sandbox serving from a background thread; ``events_url``, ``events_secret`` and the rest as for
    :func:`build_sandbox`."""
    return build_sandbox(host, port, token, **options).start()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the gateway's connection pool is exercised
    disable_nagle_algorithm = True  # headers and body go out in separate writes: without this, 40 ms stalls
    server: SandboxServer
    _counted = False  # this connection's current request is counted in flight

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # quiet: the gateway logs what matters

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        if path == UPLOAD_PATH:
            with self._in_flight():
                self._upload(parse_qsl(query, keep_blank_values=True))
            return
        body = self._read_body()
        if body is None:
            return
        if path.startswith(CONTROL_PREFIX):
            self._control(path[len(CONTROL_PREFIX) :], body)
        elif path == REST_PATH:
            with self._in_flight():
                self._rest(
                    parse_qsl(query, keep_blank_values=True),
                    parse_qsl(body.decode("latin-1"), keep_blank_values=True),
                )
        else:
            self._send(404, b"<html><body><h1>Not Found</h1></body></html>", "text/html")

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count the call in flight until its answer is written (see :meth:`_answered`) or it ends without one."""
        self.server.call_started()
        self._counted = True
        try:
            yield
        finally:
            self._answered()

    def _answered(self) -> None:
        if self._counted:
            self._counted = False
            self.server.call_ended()

    def _content_length(self) -> int | None:
        """The body's length, or None after answering 413 when it is too big to read."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be taken for the next request
            self._send(413, b"", "text/plain")
            return None
        return length

    def _read_body(self) -> bytes | None:
        length = self._content_length()
        if length is None:
            return None
        return self.rfile.read(length) if length else b""

    def _rest(self, query: list[tuple[str, str]], form: list[tuple[str, str]]) -> None:
        site = self.server.site
        get_vars, _ = parse_php_form(query, site.max_input_vars)
        post_vars, _ = parse_php_form(form, site.max_input_vars)
        variables = PhpArray(get_vars | post_vars)  # $_POST wins over $_GET, as in array_merge($_GET, $_POST)
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        fault = self.server.take_fault(str(variables.get("wsfunction", "")))
        if fault is not None and self._inject(fault, site.error_body(site_maintenance()), "application/json"):
            return
        try:
            result: Any = site.rest(variables)
        except MoodleException as error:
            result = site.error_body(error)
        self._send(200, php_json(result), "application/json")

    def _upload(self, query: list[tuple[str, str]]) -> None:
        """``upload.php``: multipart read as it arrives; a urlencoded body can only carry fields."""
        length = self._content_length()
        if length is None:
            return
        content_type = self.headers.get("Content-Type", "")
        files: dict[str, UploadedFile] = {}
        if content_type.lower().startswith("multipart/form-data"):
            form, files = read_multipart(self.rfile, length, content_type)
        else:
            body = self.rfile.read(length) if length else b""
            form = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        site = self.server.site
        get_vars, _ = parse_php_form(query, site.max_input_vars)
        post_vars, _ = parse_php_form(form, site.max_input_vars)
        # core_renderer_ajax answers text/plain whenever $_FILES is not empty.
        answer_type = "text/plain; charset=utf-8" if files else "application/json; charset=utf-8"
        if self.server.latency_s:
            time.sleep(self.server.latency_s)
        fault = self.server.take_fault(UPLOAD_FUNCTION)
        if fault is not None and self._inject(fault, ajax_error(site, site_maintenance()), answer_type):
            return
        try:
            result: Any = upload(site, PhpArray(get_vars | post_vars), files)
        except MoodleException as error:
            result = ajax_error(site, error)
        self._send(200, php_json(result), answer_type)

    def _inject(self, fault: Fault, maintenance: Any, content_type: str) -> bool:
        """Apply ``fault``; True when it replaced the answer. ``maintenance`` is the script's own error body."""
        if fault.kind == "reset":
            # SO_LINGER 0 makes close() send RST: the client sees "connection reset", as with a crashed PHP worker.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return True
        if fault.kind == "delay":
            time.sleep(fault.seconds)
            return False
        if fault.kind == "maintenance":
            self._send(200, php_json(maintenance), content_type)
            return True
        status = fault.status if fault.kind == "http" else 200
        headers = {"Retry-After": "300"} if status == 503 else {}
        page = f"<html><body><h1>Error {status}</h1><p>Fatal error in PHP</p></body></html>".encode()
        self._send(status, page, "text/html", headers)
        return True

    def _control(self, action: str, body: bytes) -> None:
        server = self.server
        if self.headers.get("X-Sandbox-Token") != server.site.token:
            self._send_json(403, {"error": "X-Sandbox-Token header missing or wrong"})
            return
        if action == "faults" and self.command == "POST":
            try:
                fault = Fault(**json.loads(body or b"{}"))
            except (TypeError, ValueError) as error:
                self._send_json(400, {"error": str(error)})
                return
            with server.state_lock:
                server.faults.append(fault)
            self._send_json(201, {"queued": fault.__dict__})
        elif action == "faults" and self.command == "DELETE":
            with server.state_lock:
                server.faults.clear()
            self._send_json(200, {"cleared": True})
        elif action == "calls" and self.command == "GET":
            with server.state_lock:
                self._send_json(200, {"calls": dict(server.calls), "total": sum(server.calls.values())})
        elif action == "in-flight" and self.command == "GET":
            self._send_json(200, server.in_flight_state())
        elif action == "in-flight" and self.command == "DELETE":
            self._send_json(200, server.reset_max_in_flight())
        else:
            self._send_json(404, {"error": f"unknown control action {self.command} {action}"})

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self._answered()  # before the first byte: a client holding the whole answer never sees the call in flight
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
