"""Event streams held by nginx with nchan (the shipped deploy/nginx/lms_api.conf) in front of ``pserve
production.ini`` with ``NCHAN_PUBLISH_URL``: the gateway redeems each stream's ticket and hands the stream to nchan
with X-Accel-Redirect, and publishes what Moodle's webhook tells it to nchan's publisher location.

nginx answers TLS for ``localhost`` with a certificate made for the test; the clients are a maintained EventSource
client (requests-sse) and a WebSocket client (websockets).
"""

import contextlib
import itertools
import json
import queue
import shutil
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from requests_sse import EventSource, InvalidStatusCodeError
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websocket_connect

from lms_api.events import EventType
from lms_api.events.nchan import NchanEvents
from lms_api.metrics import GatewayMetrics
from tests.support.credentials import mint, self_signed_certificate
from tests.support.nginx import PUBLISH_PATH, render, start_nginx, stop_nginx
from tests.support.processes import Processes, clean_env, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually

NAME = "localhost"  # resolves to nginx's loopback addresses, so the clients connect by name (SNI and Host)
ORIGIN = "https://app.example.edu"  # the allowed origin the shipped file names
SECRET = "nchan-secret-" + "n" * 40
WEBHOOK_SECRET = "nchan-webhook-secret-" + "w" * 40
MOODLE_TOKEN = "nchan-token"
NOTIFICATION_SENT = "\\core\\event\\notification_sent"
RECIPIENT, OTHER_USER, SENDER = 3, 4, 2
DELIVERY_BOUND_S = 1.0  # the bound, from the webhook's POST to an event at the subscriber
_objects = itertools.count(1000)


@dataclass
class Nginx:
    """One nginx in front of the gateway: its public HTTPS port and its loopback publisher port."""

    https_port: int
    publish_port: int
    folder: Path

    @property
    def base(self):
        return f"https://{NAME}:{self.https_port}"

    @property
    def publish_url(self):
        return f"http://127.0.0.1:{self.publish_port}{PUBLISH_PATH}"

    def subscribers(self, channel):
        """Subscribers nchan holds on ``channel`` (with Redis: on every nginx sharing it), 0 if it has none."""
        answer = requests.get(f"{self.publish_url}/{channel}", headers={"Accept": "text/json"}, timeout=5)
        return answer.json()["subscribers"] if answer.status_code == 200 else 0


@dataclass
class Stack:
    nginxes: list[Nginx]
    certificate: Path
    gateway_port: int

    @property
    def nginx(self):
        return self.nginxes[0]

    def session(self):
        session = requests.Session()
        session.verify = str(self.certificate)
        session.trust_env = False
        return session

    def tls(self):
        return ssl.create_default_context(cafile=self.certificate)

    def ticket(self, userid, nginx=None):
        """A ticket for ``userid``'s stream, asked through ``nginx`` (default: the first)."""
        token = mint("events:read", secret=SECRET, sub=f"nchan-user-{userid}", moodle_userid=userid)
        with self.session() as session:
            answer = session.post(
                f"{(nginx or self.nginx).base}/api/moodle/events/tickets",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
        assert answer.status_code == 201, answer.text
        return answer.json()["data"]

    def notify(self, recipient, nginx=None):
        """Moodle's webhook: a notification was sent to ``recipient``. Answers when the POST was sent."""
        form = {
            "eventname": NOTIFICATION_SENT,
            "relateduserid": str(recipient),
            "userid": str(SENDER),
            "objectid": str(next(_objects)),
            "timecreated": str(int(time.time())),
        }
        with self.session() as session:
            sent = time.monotonic()
            answer = session.post(
                f"{(nginx or self.nginx).base}/api/moodle/webhooks/moodle",
                data=form,
                headers={"Authorization": f"Bearer {WEBHOOK_SECRET}"},
                timeout=10,
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"]["handled"] is True, answer.text
        return sent


@contextmanager
def nchan_stack(folder, nginx_count=1, redis_url=None):
    """The gateway (with the sandbox) behind ``nginx_count`` nginx servers, sharing channels through ``redis_url``
    when given; the gateway publishes to the first."""
    processes = Processes(folder)
    started = []
    try:
        gateway_port = free_port()
        publish_ports = [free_port() for _ in range(nginx_count)]
        env = clean_env(
            MOODLE_BASE_URL=processes.sandbox(MOODLE_TOKEN),
            MOODLE_TOKEN=MOODLE_TOKEN,
            JWT_SECRET=SECRET,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            NCHAN_PUBLISH_URL=f"http://127.0.0.1:{publish_ports[0]}{PUBLISH_PATH}",
            TRUSTED_PROXIES="127.0.0.1/32",
            CORS_ALLOWED_ORIGINS=ORIGIN,
        )
        gateway = processes("pserve", "production.ini", f"http_port={gateway_port}", env=env, log="gateway.log")
        nginxes = []
        for number, publish_port in enumerate(publish_ports):
            nginx_folder = folder / f"nginx{number}"
            nginx_folder.mkdir()
            if number == 0:
                certificate, key = self_signed_certificate(nginx_folder, NAME)
            else:  # one certificate for every nginx, as behind one name
                shutil.copy(certificate, nginx_folder)
                shutil.copy(key, nginx_folder)
            https_port = free_port()
            config = render(
                nginx_folder, https_port, free_port(), gateway_port, publish_port, redis_url=redis_url, name=NAME
            )
            started.append((start_nginx(nginx_folder, config, https_port), nginx_folder))
            nginxes.append(Nginx(https_port, publish_port, nginx_folder))
        wait_for_port(gateway_port, gateway)
        stack = Stack(nginxes, certificate, gateway_port)
        with stack.session() as session:
            ready = lambda: session.get(f"{stack.nginx.base}/readyz", timeout=5).status_code == 200  # noqa: E731
            eventually(ready, "the gateway ready", 20)
        yield stack
    finally:
        for nginx, nginx_folder in started:
            stop_nginx(nginx, nginx_folder)
        processes.stop_all()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with nchan_stack(tmp_path_factory.mktemp("nchan")) as shared:
        yield shared


class _StreamEnded(Exception):
    pass


def _lines(raw):
    """The lines of a response body, each as soon as it has arrived."""
    pending = b""
    while chunk := raw.read1(4096):
        *lines, pending = (pending + chunk).split(b"\n")
        yield from lines
    if pending:
        yield pending


class EventSourceReader:
    """An EventSource opened on ``url``, its events put on a queue by a thread of its own as they arrive; it does not
    reconnect (its ticket is spent)."""

    def __init__(self, stack, url, **kwargs):
        self.events = queue.Queue()
        self._session = stack.session()
        self._opened = False
        self.source = EventSource(
            url, session=self._session, max_connect_retry=0, timeout=30, on_error=self._ended, **kwargs
        )
        try:
            self.source.connect()  # raises InvalidStatusCodeError on a refused ticket
        except InvalidStatusCodeError as refused:
            refused.response.close()
            self._session.close()
            raise
        self._opened = True
        self.headers = self.source._response.headers
        # nchan ends its EventSource answer by closing it (no chunks, no length), and requests' iter_lines would wait
        # for 512 bytes before handing over a line: the client reads what has arrived instead, as a browser does.
        self.source._data_generator = _lines(self.source._response.raw)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _ended(self):
        if self._opened:  # the client would reconnect: stop here instead
            raise _StreamEnded

    def _read(self):
        with contextlib.suppress(_StreamEnded, requests.RequestException):
            for event in self.source:
                self.events.put((time.monotonic(), event))

    def next(self, timeout=5.0):
        return self.events.get(timeout=timeout)

    def close(self):
        # Shut the socket under the reading thread (closing the response would wait for the read to end).
        with contextlib.suppress(OSError, AttributeError):
            self.source._response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        assert not self._thread.is_alive()
        self.source.close()
        self._session.close()


class WebSocketReader:
    """A WebSocket opened on ``url``, its messages put on a queue by a thread of its own."""

    def __init__(self, stack, url, **kwargs):
        self.events = queue.Queue()
        self._opened = contextlib.ExitStack()
        self.socket = self._opened.enter_context(websocket_connect(url, ssl=stack.tls(), open_timeout=10, **kwargs))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        with contextlib.suppress(ConnectionClosed):
            for message in self.socket:
                self.events.put((time.monotonic(), message))

    def next(self, timeout=5.0):
        return self.events.get(timeout=timeout)

    def close(self):
        self._opened.close()
        self._thread.join(10)
        assert not self._thread.is_alive()


def user_channel(userid):
    return f"user-{userid}"


def test_an_eventsource_and_a_websocket_each_receive_a_notification_within_a_second_and_no_one_elses(stack):
    eventsource = EventSourceReader(stack, stack.ticket(RECIPIENT)["stream_url"])
    websocket = WebSocketReader(stack, stack.ticket(RECIPIENT)["websocket_url"])
    other = EventSourceReader(stack, stack.ticket(OTHER_USER)["stream_url"])
    try:
        eventually(lambda: stack.nginx.subscribers(user_channel(RECIPIENT)) == 2, "both streams held by nchan")
        eventually(lambda: stack.nginx.subscribers(user_channel(OTHER_USER)) == 1, "the other user's stream held")

        sent = stack.notify(RECIPIENT)
        at_eventsource, event = eventsource.next()
        at_websocket, message = websocket.next()

        assert at_eventsource - sent < DELIVERY_BOUND_S
        assert at_websocket - sent < DELIVERY_BOUND_S
        assert event.type == EventType.NOTIFICATION.value
        assert event.last_event_id  # nchan's message id, for Last-Event-ID
        data = json.loads(event.data)
        assert (data["type"], data["userid"]) == (EventType.NOTIFICATION.value, RECIPIENT)
        assert json.loads(message) == data  # a WebSocket message is the event's data alone

        # The other user's stream hears its own notification next, and never the first one.
        stack.notify(OTHER_USER)
        _, own = other.next()
        assert json.loads(own.data)["type"] == EventType.NOTIFICATION.value
        assert other.events.empty()
        with pytest.raises(queue.Empty):
            eventsource.next(timeout=0.5)  # nor does the recipient hear the other user's
    finally:
        for reader in (eventsource, websocket, other):
            reader.close()


def test_a_ticket_opens_one_stream_only_whatever_the_protocol(stack):
    ticket = stack.ticket(RECIPIENT)
    first = EventSourceReader(stack, ticket["stream_url"])
    first.close()

    with pytest.raises(InvalidStatusCodeError) as again:
        EventSourceReader(stack, ticket["stream_url"])
    with pytest.raises(InvalidStatus) as as_websocket:
        WebSocketReader(stack, ticket["websocket_url"])
    with stack.session() as session:
        unknown = session.get(f"{stack.nginx.base}/api/moodle/events/stream?ticket=made-up", timeout=10)

    assert again.value.status_code == 401
    assert as_websocket.value.response.status_code == 401
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "invalid_token"  # the gateway's answer, not nchan's


@pytest.mark.parametrize("how", ["header", "query"])
def test_a_stream_resumes_after_the_last_event_it_saw_through_nchans_buffer(stack, how):
    userid = 5 if how == "header" else 6
    first = EventSourceReader(stack, stack.ticket(userid)["stream_url"])
    try:
        eventually(lambda: stack.nginx.subscribers(user_channel(userid)) == 1, "the stream held by nchan")
        stack.notify(userid)
        _, seen = first.next()
    finally:
        first.close()
    eventually(lambda: stack.nginx.subscribers(user_channel(userid)) == 0, "the stream gone")
    stack.notify(userid)  # while no stream is open
    stack.notify(userid)

    url = stack.ticket(userid)["stream_url"]
    if how == "header":
        resumed = EventSourceReader(stack, url, latest_event_id=seen.last_event_id)  # sends Last-Event-ID
    else:  # a browser's EventSource cannot set the header: the page passes the id in the query
        resumed = EventSourceReader(stack, f"{url}&last_event_id={seen.last_event_id}")
    fresh = EventSourceReader(stack, stack.ticket(userid)["stream_url"])
    try:
        missed = [resumed.next()[1], resumed.next()[1]]
        assert [event.type for event in missed] == [EventType.NOTIFICATION.value] * 2
        assert seen.last_event_id not in {event.last_event_id for event in missed}
        assert len({event.last_event_id for event in missed}) == 2
        with pytest.raises(queue.Empty):
            fresh.next(timeout=0.5)  # a stream that does not resume starts with the next event
    finally:
        resumed.close()
        fresh.close()


def test_the_subscriber_and_publisher_locations_are_out_of_a_callers_reach(stack):
    with stack.session() as session:
        direct = session.get(
            f"{stack.nginx.base}/lms_api/events/subscribe/{user_channel(RECIPIENT)}",
            headers={"Accept": "text/event-stream"},
            timeout=10,
        )
        publish = session.post(f"{stack.nginx.base}{PUBLISH_PATH}/{user_channel(RECIPIENT)}", data=b"{}", timeout=10)

    assert direct.status_code == 404  # internal: only the gateway's X-Accel-Redirect reaches it
    # The publisher is on the loopback server only: here the path goes to the gateway, which knows no such route.
    assert (publish.status_code, publish.json()["error"]["code"]) == (404, "notfound")


def test_a_page_of_another_origin_is_refused_and_the_apps_origin_is_allowed(stack):
    with pytest.raises(InvalidStatusCodeError) as elsewhere:
        EventSourceReader(stack, stack.ticket(RECIPIENT)["stream_url"], headers={"Origin": "https://evil.example"})
    allowed = EventSourceReader(stack, stack.ticket(RECIPIENT)["stream_url"], headers={"Origin": ORIGIN})
    try:
        assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    finally:
        allowed.close()

    assert elsewhere.value.status_code == 403


def test_the_engine_counts_what_nchan_took_and_what_it_could_not_and_never_raises(stack):
    metrics = GatewayMetrics()
    up = NchanEvents(stack.nginx.publish_url, metrics)
    down = NchanEvents(f"http://127.0.0.1:{free_port()}{PUBLISH_PATH}", metrics)
    try:
        up.publish(user_channel(7), EventType.NOTIFICATION, {"unread": 1})
        down.publish(user_channel(7), EventType.NOTIFICATION, {"unread": 1})
        up.publish("not a channel", EventType.NOTIFICATION, {"unread": 1})  # nchan's location refuses the name

        def count(outcome):
            return metrics.registry.get_sample_value(
                "lms_api_events_published_total", {"type": "notification", "outcome": outcome}
            )

        assert (count("sent"), count("failed")) == (1, 2)
        assert up.readiness() == {"engine": "nchan", "publisher": "answers"}
        assert down.readiness()["publisher"].startswith("unreachable")
        assert up.open_streams() == 0
    finally:
        up.close()
        down.close()


def test_two_nginx_servers_share_channels_through_redis(tmp_path, own_redis):
    _, redis_url = own_redis
    with nchan_stack(tmp_path, nginx_count=2, redis_url=redis_url) as stack:
        publishing, other = stack.nginxes  # the gateway publishes through the first
        reader = EventSourceReader(stack, stack.ticket(RECIPIENT, nginx=other)["stream_url"])
        try:
            eventually(lambda: publishing.subscribers(user_channel(RECIPIENT)) == 1, "the stream known through Redis")
            sent = stack.notify(RECIPIENT, nginx=publishing)
            arrived, event = reader.next()

            assert event.type == EventType.NOTIFICATION.value
            assert arrived - sent < DELIVERY_BOUND_S
        finally:
            reader.close()
