"""Event streams the gateway serves itself (no nchan), in a real ``pserve``: what an EventSource client (requests-sse)
receives, the cap on streams, the heartbeat, resuming after ``Last-Event-ID``, the requests that still answer at once
with every stream open, and two replicas sharing their events through one Redis.

Events come from Moodle's webhook, as Event Trigger posts them (``notification_sent`` publishes ``notification`` to
the recipient's channel).
"""

import itertools
import json
import queue
import re
import signal
import socket
import statistics
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from requests_sse import EventSource, InvalidStatusCodeError

from lms_api.settings import DEVELOPMENT_WEBHOOK_SECRET
from tests.support.credentials import JWT_TEST_SECRET, mint
from tests.support.processes import Processes, clean_env, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually

MAX_STREAMS = 3
HEARTBEAT_S = 1
RECIPIENT, OTHER_USER = 3, 4
NOTIFICATION_SENT = "\\core\\event\\notification_sent"
DELIVERY_BOUND_S = 1.0  # the bound, from the webhook's POST to the event at the subscriber
FAST_ANSWER_S = 0.050  # the bound on /healthz and a cached read with every stream open
_deliveries = itertools.count(int(time.time()))  # each a new event: the webhook drops a delivery seen before


def start_gateway(processes, ini, env, log):
    port = free_port()
    wait_for_port(port, processes("pserve", ini, f"http_port={port}", env=env, log=log))
    base = f"http://127.0.0.1:{port}"
    eventually(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, "the gateway ready", 20)
    return base


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """``pserve development.ini`` (the sandbox inside it, which makes the webhook secret the development one), with
    a one-second heartbeat and room for three streams."""
    processes = Processes(tmp_path_factory.mktemp("embedded-events"))
    env = clean_env(
        JWT_SECRET=JWT_TEST_SECRET, EVENTS_HEARTBEAT_S=str(HEARTBEAT_S), EVENTS_MAX_STREAMS=str(MAX_STREAMS)
    )
    try:
        yield start_gateway(processes, "development.ini", env, "gateway.log")
    finally:
        processes.stop_all()


def open_streams(base):
    """What the gateway says it serves, from its metrics (scraped from loopback, so no token is needed)."""
    text = requests.get(f"{base}/metrics", timeout=5).text
    return int(float(re.search(r"^lms_api_event_streams_open (\S+)$", text, re.MULTILINE).group(1)))


def ticket(base, userid=RECIPIENT, sub=None):
    """A new stream's URL, for ``userid``'s channel."""
    token = mint("events:read", sub=sub or f"embedded-{userid}", moodle_userid=userid)
    answer = requests.post(
        f"{base}/api/moodle/events/tickets", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 201, answer.text
    return base + answer.json()["data"]["stream_url"]


def notify(base, recipient=RECIPIENT, secret=DEVELOPMENT_WEBHOOK_SECRET):
    """Moodle's webhook: a notification was sent to ``recipient``; answers when it was posted."""
    number = next(_deliveries)
    form = {
        "eventname": NOTIFICATION_SENT,
        "relateduserid": str(recipient),
        "userid": "2",
        "objectid": str(number),
        "timecreated": str(number),
    }
    posted = time.monotonic()
    answer = requests.post(
        f"{base}/api/moodle/webhooks/moodle", data=form, headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["handled"] is True, answer.text
    return posted


class Subscriber:
    """An EventSource on one stream, read by a thread of its own into a queue, so a test waits for an event with a
    bound (a stream with no event sends only heartbeats, which the client does not pass on)."""

    def __init__(self, url, last_event_id=None):
        # No reconnecting: a ticket opens one stream, and a test says when a new one is opened.
        self.source = EventSource(url, timeout=10, max_connect_retry=0, latest_event_id=last_event_id)
        self.source.connect()
        self.events = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for event in self.source:
                self.events.put((time.monotonic(), event))
        except Exception as error:  # closed, or the stream ended: the test reads what came before
            self.events.put((time.monotonic(), error))

    def next(self, timeout=5):
        """The next event: (when it arrived, its id, its type, its data)."""
        arrived, event = self.events.get(timeout=timeout)
        assert not isinstance(event, Exception), event
        return arrived, int(event.last_event_id), event.type, json.loads(event.data)

    def nothing_more(self, seconds):
        with pytest.raises(queue.Empty):
            self.events.get(timeout=seconds)

    def close(self):
        self.source.close()


@pytest.fixture
def subscribe(gateway):
    """Subscribers of the test's, closed after it; the gateway then frees their streams at its next heartbeat."""
    opened = []

    def open_one(url, last_event_id=None):
        opened.append(Subscriber(url, last_event_id))
        return opened[-1]

    yield open_one
    for subscriber in opened:
        subscriber.close()
    eventually(lambda: open_streams(gateway) == 0, "every stream freed", 10)


def test_a_notification_reaches_the_recipients_stream_within_a_second_and_no_one_elses(gateway, subscribe):
    recipient = subscribe(ticket(gateway))
    other = subscribe(ticket(gateway, OTHER_USER))

    posted = notify(gateway)

    arrived, event_id, event_type, data = recipient.next()
    assert (event_type, data["type"], data["userid"]) == ("notification", "notification", RECIPIENT)
    assert event_id > 0
    assert arrived - posted < DELIVERY_BOUND_S
    other.nothing_more(2 * HEARTBEAT_S)


def test_past_the_cap_a_stream_is_503_eventsfull_with_retry_after_until_a_client_goes_away(gateway, subscribe):
    subscribers = [subscribe(ticket(gateway)) for _ in range(MAX_STREAMS)]
    assert open_streams(gateway) == MAX_STREAMS

    with pytest.raises(InvalidStatusCodeError) as refused:
        EventSource(ticket(gateway), max_connect_retry=0).connect()

    answer = refused.value.response
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "10"
    assert answer.json()["error"]["code"] == "eventsfull"
    assert answer.json()["error"]["details"] == {"max_streams": MAX_STREAMS}
    subscribers[0].close()
    # waitress reads the connection while the stream runs: the gateway sees the client gone within a second.
    eventually(lambda: open_streams(gateway) == MAX_STREAMS - 1, "the stream of the client that left freed", 5)
    another = subscribe(ticket(gateway))
    notify(gateway)
    assert another.next()[2] == "notification"


def read_until(connection, wanted, deadline):
    received = b""
    while wanted not in received:
        connection.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = connection.recv(4096)
        assert chunk, "the stream ended"
        received += chunk
    return received


def open_raw_stream(url):
    """A stream read byte by byte: a connection on which its request was sent, and the bytes up to the retry line."""
    parts = urlsplit(url)
    connection = socket.create_connection((parts.hostname, parts.port))
    connection.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    return connection, read_until(connection, b"retry: 5000\n\n", time.monotonic() + 5)


def test_a_stream_sends_the_retry_line_at_once_then_a_heartbeat_every_heartbeat_s_while_idle(gateway):
    url = ticket(gateway)
    started = time.monotonic()
    connection, head = open_raw_stream(url)
    with connection:
        opened = time.monotonic()
        beats = []
        for _ in range(3):
            read_until(connection, b": heartbeat\n\n", time.monotonic() + 5)
            beats.append(time.monotonic())

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: text/event-stream; charset=utf-8\r\n" in head
    assert b"\r\nX-Accel-Buffering: no\r\n" in head
    assert opened - started < 0.5  # the first bytes at once, not at the first heartbeat
    gaps = [later - earlier for earlier, later in zip([opened, *beats], beats, strict=False)]
    assert all(0.8 * HEARTBEAT_S <= gap < 3 * HEARTBEAT_S for gap in gaps), gaps
    eventually(lambda: open_streams(gateway) == 0, "the stream freed once its client left", 5)


def test_a_new_stream_resumes_after_last_event_id_from_the_header_or_the_query(gateway, subscribe):
    first = subscribe(ticket(gateway))
    notify(gateway)
    _, seen, _, _ = first.next()
    first.close()
    eventually(lambda: open_streams(gateway) == 0, "the first stream freed", 5)
    notify(gateway)  # while no stream is open
    notify(gateway)

    resumed = subscribe(ticket(gateway), last_event_id=str(seen))  # the header, as an EventSource reconnecting
    missed = [resumed.next() for _ in range(2)]
    missed_ids = [event_id for _, event_id, _, _ in missed]
    assert seen < missed_ids[0] < missed_ids[1]
    resumed.nothing_more(2 * HEARTBEAT_S)

    by_query = subscribe(f"{ticket(gateway)}&last_event_id={missed_ids[0]}")  # a new EventSource's URL
    assert by_query.next()[1] == missed_ids[1]
    by_query.nothing_more(2 * HEARTBEAT_S)
    notify(gateway)
    assert resumed.next()[1] == by_query.next()[1] > missed_ids[1]


def timed(session, url, count=20, **options):
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url, timeout=5, **options)
        durations.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return durations


def test_with_every_stream_open_healthz_and_a_cached_read_answer_in_under_50_ms(gateway, subscribe):
    streams = [subscribe(ticket(gateway)) for _ in range(MAX_STREAMS)]
    assert open_streams(gateway) == MAX_STREAMS
    headers = {"Authorization": f"Bearer {mint('siteinfo:read', sub='embedded-reader')}"}
    with requests.Session() as session:
        first = session.get(f"{gateway}/api/moodle/siteinfo", headers=headers, timeout=10)
        assert first.status_code == 200, first.text
        healthz = timed(session, f"{gateway}/healthz")
        cached = timed(session, f"{gateway}/api/moodle/siteinfo", headers=headers)
        assert (
            session.get(f"{gateway}/api/moodle/siteinfo", headers=headers, timeout=5)
            .headers["Cache-Status"]
            .startswith("lms_api; hit")
        )

    for name, durations in (("/healthz", healthz), ("cached site info", cached)):
        p95 = statistics.quantiles(durations, n=20)[-1]
        print(f"{name}: median {statistics.median(durations) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms")
        assert p95 < FAST_ANSWER_S, (name, sorted(durations))
    assert open_streams(gateway) == MAX_STREAMS
    notify(gateway)
    assert all(stream.next()[2] == "notification" for stream in streams)  # still streaming


def test_a_client_that_leaves_frees_its_slot_within_seconds_without_waiting_for_a_heartbeat(spawn):
    env = clean_env(JWT_SECRET=JWT_TEST_SECRET, EVENTS_HEARTBEAT_S="60", EVENTS_MAX_STREAMS="1")
    base = start_gateway(spawn, "development.ini", env, "leaving.log")
    connection, _ = open_raw_stream(ticket(base))
    assert open_streams(base) == 1

    connection.close()  # a page reloaded, a tab closed
    left = time.monotonic()
    eventually(lambda: open_streams(base) == 0, "the slot of the client that left freed", 5)

    assert time.monotonic() - left < 3
    again, _ = open_raw_stream(ticket(base))
    again.close()


def test_a_stopping_gateway_ends_its_streams_at_once_rather_than_wait_out_its_grace_for_them(spawn):
    env = clean_env(JWT_SECRET=JWT_TEST_SECRET, EVENTS_HEARTBEAT_S="60")  # no heartbeat would notice anything
    base = start_gateway(spawn, "development.ini", env, "stopping.log")
    connection, _ = open_raw_stream(ticket(base))
    gateway = spawn.started[-1]
    started = time.monotonic()

    with connection:
        gateway.send_signal(signal.SIGTERM)
        ending = read_until(connection, b"0\r\n\r\n", started + 5)  # the last chunk: the stream ended, not cut
        assert gateway.wait(10) == 0

    assert time.monotonic() - started < 3  # waitress gives the requests in flight 5 s
    assert ending.endswith(b"0\r\n\r\n")


def test_an_event_published_on_one_replica_reaches_a_stream_on_another_through_redis(tmp_path, own_redis):
    _, redis_url = own_redis
    processes = Processes(tmp_path)
    webhook_secret = "embedded-webhook-secret-" + "e" * 40
    try:
        env = clean_env(
            MOODLE_BASE_URL=processes.sandbox("embedded-token"),
            MOODLE_TOKEN="embedded-token",
            JWT_SECRET=JWT_TEST_SECRET,
            WEBHOOK_SECRET=webhook_secret,
            REDIS_URL=redis_url,
            EVENTS_HEARTBEAT_S=str(HEARTBEAT_S),
        )
        a, b = (start_gateway(processes, "production.ini", env, f"replica-{name}.log") for name in "ab")
        on_b = Subscriber(ticket(b))
        on_a = Subscriber(ticket(a))
        try:
            posted = notify(a, secret=webhook_secret)

            arrived_b, id_b, type_b, data_b = on_b.next()
            _, id_a, type_a, data_a = on_a.next()
            assert (id_b, type_b, data_b) == (id_a, type_a, data_a)
            assert (type_b, data_b["userid"]) == ("notification", RECIPIENT)
            assert arrived_b - posted < DELIVERY_BOUND_S
            on_a.nothing_more(2 * HEARTBEAT_S)  # once, not again through Redis
            on_b.close()
            notify(a, secret=webhook_secret)  # kept in Redis while B's client is away

            resumed_on_b = Subscriber(ticket(b), last_event_id=str(id_b))
            assert resumed_on_b.next()[1] > id_b
            resumed_on_b.close()
        finally:
            on_a.close()
            on_b.close()
    finally:
        processes.stop_all()
