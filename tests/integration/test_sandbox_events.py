"""The development loop as ``make run`` runs it: ``pserve development.ini`` with a clean environment, so the gateway
starts its built-in sandbox, which plays Moodle's Event Trigger and posts the events of its writes to the gateway's
own webhook with the development secret. A caller's writes through the gateway reach the event streams of the users
they concern, over the sandbox and the webhook (and, for the gateway's own writes, at once), and nobody else's.

Tokens are signed with the development secret, as ``lms-api token`` signs them; streams are read with an EventSource
client (requests-sse).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from requests_sse import EventSource, ReadyState

from lms_api.settings import DEVELOPMENT_JWT_SECRET
from tests.support.credentials import mint
from tests.support.processes import Processes, clean_env, wait_for_port
from tests.support.servers import free_port
from tests.support.timing import eventually

STUDENT, OTHER_STUDENT = 3, 4  # student1 and student2 of the sandbox's seed, enrolled nowhere at the start
TEACHER = 5  # teacher1
COURSE = 2  # PY101
STUDENT_ROLE = 5
DELIVERY_S = 10.0  # sandbox -> webhook -> stream: well under a second when idle; room for a busy 2-core machine


@dataclass(frozen=True)
class Gateway:
    base: str

    def answer(
        self, method: str, path: str, scope: str, moodle_userid: int | None = None, **kwargs: Any
    ) -> requests.Response:
        """``method path`` with a token of ``scope`` signed with the development secret, checked to be a success."""
        token = mint(
            scope, sub=f"sandbox-events-{moodle_userid}", secret=DEVELOPMENT_JWT_SECRET, moodle_userid=moodle_userid
        )
        answer = requests.request(
            method, f"{self.base}/api/moodle{path}", headers={"Authorization": f"Bearer {token}"}, timeout=20, **kwargs
        )
        assert answer.ok, (method, path, answer.status_code, answer.text)
        return answer

    def call(self, method: str, path: str, scope: str, moodle_userid: int | None = None, **kwargs: Any) -> Any:
        """The data of :meth:`answer`."""
        return self.answer(method, path, scope, moodle_userid, **kwargs).json()["data"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``pserve development.ini`` with nothing set: the sandbox inside it, posting to the webhook."""
    folder = tmp_path_factory.mktemp("sandbox-events")
    processes = Processes(folder)
    port = free_port()
    try:
        wait_for_port(
            port, processes("pserve", "development.ini", f"http_port={port}", env=clean_env(), log="gateway.log")
        )
        base = f"http://127.0.0.1:{port}"
        eventually(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, "the gateway ready", 20)
        yield Gateway(base)
    finally:
        processes.stop_all()


class StreamEnded(Exception):
    """Raised in a reader when its stream ends: a ticket opens one stream only, so it is never reopened."""


class Stream:
    """An EventSource on a stream, every event it receives collected by a thread of its own as (type, data); the
    stream lasts as long as the gateway (closing it under a reader blocked until the next heartbeat would wait for
    that heartbeat)."""

    def __init__(self, url: str) -> None:
        self.source = EventSource(url, timeout=60, max_connect_retry=0, on_error=self._ended)
        self.source.connect()
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _ended(self) -> None:
        """requests-sse reconnects to the same URL, after the server's retry delay, when a stream ends; its error
        handler, called first, raising stops it: the ticket in the URL is spent. (A refused connection is left to
        raise its own error.)"""
        if self.source.ready_state is ReadyState.CONNECTING:
            raise StreamEnded

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the stream ended: the gateway stopped
            for event in self.source:
                with self._lock:
                    self._events.append((event.type, json.loads(event.data)))

    def received(self, since: int = 0) -> list[tuple[str, dict[str, Any]]]:
        """The events received, from the ``since``-th on."""
        with self._lock:
            return self._events[since:]

    def mark(self) -> int:
        """Where the events to come start, for :meth:`received` and :meth:`wait_for`."""
        return len(self.received())

    def of_type(self, event_type: str, since: int) -> list[dict[str, Any]]:
        return [data for kind, data in self.received(since) if kind == event_type]

    def wait_for(self, event_type: str, since: int, count: int = 1) -> list[dict[str, Any]]:
        """The ``event_type`` events received after ``since``, once there are ``count`` of them, within
        :data:`DELIVERY_S`."""
        eventually(
            lambda: len(self.of_type(event_type, since)) >= count,
            f"{count} {event_type} event(s) on the stream, which received {self.received(since)}",
            DELIVERY_S,
        )
        return self.of_type(event_type, since)


@dataclass(frozen=True)
class Streams:
    """The streams the tests share: the two students', and a teacher's that asked for the course's events."""

    student: Stream
    other_student: Stream
    course_watcher: Stream

    def marks(self) -> tuple[int, int, int]:
        return self.student.mark(), self.other_student.mark(), self.course_watcher.mark()


@pytest.fixture(scope="module")
def streams(gateway: Gateway) -> Streams:
    """Each opened with a ticket of its caller's, as an SPA opens it."""

    def open_stream(userid: int, scope: str = "events:read", **query: str) -> Stream:
        ticket = gateway.call("POST", "/events/tickets", scope, moodle_userid=userid, params=query)
        assert ticket["expires_in"] == 60 and ticket["userid"] == userid, ticket
        return Stream(urljoin(gateway.base, ticket["stream_url"]))  # a path: no PUBLIC_URL is set

    watching = open_stream(TEACHER, "events:read courses:read", courses=str(COURSE))
    return Streams(open_stream(STUDENT), open_stream(OTHER_STUDENT), watching)


def send_message(gateway: Gateway, touserid: int, text: str) -> None:
    """A personal message from the gateway's Moodle user to ``touserid``, through the gateway."""
    sent = gateway.call(
        "POST", "/messages", "messages:write", json={"messages": [{"touserid": touserid, "text": text}]}
    )
    assert sent["sent"] == 1, sent


def all_published(streams: Streams, gateway: Gateway) -> None:
    """Wait until every event of the writes made so far was published: the sandbox posts its events in order and the
    gateway publishes each as it handles it, so once a message sent now reaches the other student's stream (and the
    other streams had their chance at the events before it), every earlier one has been published."""
    since = streams.other_student.mark()
    send_message(gateway, OTHER_STUDENT, "A marker")
    streams.other_student.wait_for("notification", since)


def test_a_message_reaches_its_recipients_stream_as_a_notification_and_nobody_elses(gateway, streams):
    student, other, watcher = streams.marks()

    send_message(gateway, STUDENT, "Hello from the gateway")

    [notification] = streams.student.wait_for("notification", student)
    # The count Moodle gives when the webhook handles the event: its unread popup notifications (a personal message
    # is not one of them), as the gateway answers it.
    count = gateway.call("GET", "/notifications/unread-count", "notifications:read", moodle_userid=STUDENT)["count"]
    assert notification == {"type": "notification", "userid": STUDENT, "unreadcount": count}
    all_published(streams, gateway)
    assert streams.student.received(student) == [("notification", notification)], "one message, one event"
    assert [data["userid"] for _, data in streams.other_student.received(other)] == [OTHER_STUDENT]
    assert streams.course_watcher.received(watcher) == []


def test_an_enrolment_reaches_the_enrolled_users_stream_from_the_gateway_and_from_the_webhook(gateway, streams):
    student, other, watcher = streams.marks()

    enrolled = gateway.call(
        "POST",
        "/enrol",
        "enrol:write",
        json={"enrolments": [{"roleid": "student", "userid": STUDENT, "courseid": COURSE}]},
    )

    assert enrolled["enrolled"] == 1, enrolled
    # The gateway's own write publishes once Moodle answered, naming the role; the webhook's user_enrolment_created,
    # posted by the sandbox when the call ended, names none. Either may come first.
    created = streams.student.wait_for("enrolment.created", student, count=2)
    assert sorted(created, key=len) == [
        {"type": "enrolment.created", "userid": STUDENT, "courseid": COURSE},
        {"type": "enrolment.created", "userid": STUDENT, "courseid": COURSE, "roleid": STUDENT_ROLE},
    ]
    assigned = {"type": "enrolment.role_assigned", "userid": STUDENT, "courseid": COURSE, "roleid": STUDENT_ROLE}
    assert streams.student.wait_for("enrolment.role_assigned", student) == [assigned]
    all_published(streams, gateway)
    assert sorted(kind for kind, _ in streams.student.received(student)) == [
        "enrolment.created",
        "enrolment.created",
        "enrolment.role_assigned",
    ]
    assert [kind for kind, _ in streams.other_student.received(other)] == ["notification"]
    assert streams.course_watcher.received(watcher) == []


def test_a_course_updated_through_the_gateway_reaches_the_streams_that_asked_for_it_and_its_cached_read(
    gateway, streams
):
    def read_course() -> tuple[str, str]:
        answer = gateway.answer("GET", f"/courses/{COURSE}", "courses:read")
        return answer.json()["data"]["fullname"], answer.headers["Cache-Status"]

    read_course()
    fullname, cache_status = read_course()
    assert (fullname, cache_status.startswith("lms_api; hit")) == ("Intro to Python", True), cache_status
    student, other, watcher = streams.marks()

    gateway.call("PATCH", f"/courses/{COURSE}", "courses:write", json={"fullname": "Intro to Python, revised"})

    # Published by the gateway's write at once, and again when the sandbox's course_updated reaches the webhook.
    updated = {"type": "course.updated", "courseid": COURSE}
    assert streams.course_watcher.wait_for("course.updated", watcher, count=2) == [updated, updated]
    assert read_course()[0] == "Intro to Python, revised"
    all_published(streams, gateway)
    assert streams.course_watcher.received(watcher) == [("course.updated", updated)] * 2
    assert streams.student.received(student) == []
    assert [kind for kind, _ in streams.other_student.received(other)] == ["notification"]
