"""The sandbox playing Moodle's Event Trigger plugin (catalyst/moodle-tool_trigger): after its own writes it POSTs
the Moodle events they trigger to a webhook, as an "HTTP post" workflow step does.

Each event is sent form-encoded with the fields a workflow's parameter template names (``eventname``, ``objectid``,
``courseid``, ``userid``, ``relateduserid``, ``contextinstanceid``, ``timecreated``) and the header line an admin types
into the step (``Authorization: Bearer <secret>``). Posting happens on a thread of its own, in the order the events
were triggered: a Moodle call never waits for the webhook, nor fails with it. An answer other than 200 (or no answer)
is retried a few times, as tool_trigger retries a failed step, then the event is dropped and logged.

Which fields each event carries is Moodle 5.0's (``lib/classes/event/*.php`` and their callers): see
:class:`MoodleEvent`. Like Moodle's observers outside a transaction, an event is sent only once the writes that
triggered it are kept: a call whose transaction rolls back sends none (see ``SandboxSite.trigger``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

import requests
import structlog

log = structlog.get_logger("moodle_sandbox")

RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # before each retry after the first post: four attempts in all
POST_TIMEOUT_S = 5.0
MAX_QUEUED = 1000  # events waiting to be posted; more are dropped (and logged), never waited for


@dataclass(frozen=True)
class EventsTarget:
    """Where the sandbox posts its events: the webhook's URL and the secret sent as ``Authorization: Bearer``."""

    url: str
    secret: str


@dataclass(frozen=True)
class MoodleEvent:
    """A Moodle event as tool_trigger's datafields show it. ``courseid`` and ``contextinstanceid`` come from the
    event's context: a course's id for a course context, the user's id for a user context, 0 for the system context
    (messages); ``relateduserid`` is None for events without one (a course created or updated)."""

    eventname: str
    objectid: int
    userid: int
    timecreated: int
    courseid: int = 0
    contextinstanceid: int = 0
    relateduserid: int | None = None

    def form(self) -> dict[str, str]:
        """The fields as a workflow posts them: an empty field for what the event lacks."""
        return {
            "eventname": self.eventname,
            "objectid": str(self.objectid),
            "courseid": str(self.courseid),
            "userid": str(self.userid),
            "relateduserid": "" if self.relateduserid is None else str(self.relateduserid),
            "contextinstanceid": str(self.contextinstanceid),
            "timecreated": str(self.timecreated),
        }


Post = Callable[[str, bytes, dict[str, str]], int]


def post_form(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to ``url``: the answer's status, or 0 when none came."""
    try:
        return requests.post(url, data=body, headers=headers, timeout=POST_TIMEOUT_S).status_code
    except requests.RequestException:  # refused, reset, timed out, or a URL requests cannot use
        return 0


class EventPoster:
    """Posts events to ``target`` from a daemon thread, in order; :meth:`send` only queues them."""

    def __init__(
        self,
        target: EventsTarget,
        post: Post = post_form,
        sleep: Callable[[float], None] = time.sleep,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self.target = target
        self._post = post
        self._sleep = sleep
        self._retry_delays = tuple(retry_delays)
        self._queue: queue.Queue[MoodleEvent | None] = queue.Queue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="moodle-sandbox-events", daemon=True)
        self._thread.start()

    def send(self, events: Sequence[MoodleEvent]) -> None:
        """Queue ``events`` for posting; never blocks, never raises."""
        for event in events:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                log.warning("sandbox.event_dropped", eventname=event.eventname, reason="too many events queued")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued event was posted or given up on; False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self) -> None:
        """Stop after the events already queued (a retry in progress ends first)."""
        self._queue.put(None)
        self._thread.join(POST_TIMEOUT_S * (1 + len(self._retry_delays)) + sum(self._retry_delays))

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                self._deliver(event)
            except Exception:  # the poster outlives any one event: the next ones still go
                log.exception("sandbox.event_not_delivered", eventname=event.eventname if event else None)
            finally:
                self._queue.task_done()

    def _deliver(self, event: MoodleEvent) -> None:
        body = urlencode(event.form()).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"Bearer {self.target.secret}",
        }
        status = 0
        for attempt in range(1 + len(self._retry_delays)):
            if attempt:
                self._sleep(self._retry_delays[attempt - 1])
            status = self._post(self.target.url, body, headers)
            if status == 200:
                return
        log.warning(
            "sandbox.event_not_delivered",
            eventname=event.eventname,
            objectid=event.objectid,
            url=self.target.url,
            status=status or None,
            attempts=1 + len(self._retry_delays),
        )
