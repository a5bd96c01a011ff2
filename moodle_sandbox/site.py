"""The sandbox's Moodle site: its data (``state``), its web-service functions, and the REST server's checks in order."""

from __future__ import annotations

import copy
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from moodle_sandbox import functions  # noqa: F401 - importing the package registers the web-service functions
from moodle_sandbox.errors import MoodleException, invalid_token, not_in_service, unknown_function
from moodle_sandbox.events import EventPoster, MoodleEvent
from moodle_sandbox.params import invalid_parameter, validate
from moodle_sandbox.phpform import PhpArray
from moodle_sandbox.records import THEME_REVISION, SiteState, User, theme_image_url
from moodle_sandbox.registry import FUNCTIONS, SandboxFunction, sandbox_function
from moodle_sandbox.seed import ADMIN_USER_ID, seed_state

DEFAULT_MAX_INPUT_VARS = 5000

__all__ = ["DEFAULT_MAX_INPUT_VARS", "FUNCTIONS", "SandboxFunction", "SandboxSite", "sandbox_function"]


class SandboxSite:
    """State and behaviour of one emulated Moodle site; safe to use from many server threads.

    ``state`` holds the site's tables (see ``seed.py`` for what a new site holds); read or change it only under
    ``lock``. ``max_bytes`` is the site's maximum upload size (``$CFG->maxbytes``, 0 = unlimited) and ``clock``
    gives the current time in seconds, replaceable in tests. ``theme_revision`` is the number in the site's theme
    image URLs (each real site has its own).

    ``events``, when given, receives the Moodle events of each call's writes once the call is over (the sandbox
    playing the Event Trigger plugin, see ``events.py``); without it nothing is sent.
    """

    def __init__(
        self,
        token: str,
        base_url: str = "http://127.0.0.1",
        service_functions: Iterable[str] | None = None,
        debug: bool = False,
        max_input_vars: int = DEFAULT_MAX_INPUT_VARS,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.time,
        upload_files: bool = True,
        events: EventPoster | None = None,
    ) -> None:
        self.token = token
        self.base_url = base_url
        self.debug = debug
        self.max_input_vars = max_input_vars
        self.max_bytes = max_bytes
        self.upload_files = upload_files  # the service's "Can upload files"
        self.clock = clock
        self.service_functions = list(service_functions) if service_functions is not None else sorted(FUNCTIONS)
        self.lock = threading.RLock()
        self.private_access_key = secrets.token_hex(16)
        self.theme_revision = THEME_REVISION
        self.state: SiteState = seed_state(self.now())
        self.events = events
        self._triggered: list[MoodleEvent] = []  # the current call's events, sent when it ends (guarded by lock)

    def now(self) -> int:
        return int(self.clock())

    @property
    def admin(self) -> User:
        """The token's user."""
        return self.state.users[ADMIN_USER_ID]

    def image_url(self, image: str) -> str:
        """``$OUTPUT->image_url()`` on this site, e.g. ``u/f1`` (default user picture)."""
        return theme_image_url(self.base_url, self.theme_revision, image)

    def rest(self, form: PhpArray) -> Any:
        """Run one ``server.php`` call; checks happen in Moodle's order: token, function, params."""
        # The REST server's own parameters never reach the function.
        form = PhpArray((key, value) for key, value in form.items() if not key.startswith("moodlewssetting"))
        token = form.pop("wstoken", None)
        function = form.pop("wsfunction", None)
        form.pop("moodlewsrestformat", None)
        if token != self.token:
            raise invalid_token()
        if not isinstance(function, str) or not function:
            raise invalid_parameter("Missing function name")
        if function not in FUNCTIONS:
            raise unknown_function(function, self.debug)
        if function not in self.service_functions:
            raise not_in_service(function)
        definition = FUNCTIONS[function]
        params = validate(definition.params, form)
        with self.lock:
            try:
                return definition.run(self, params)
            finally:
                self._send_triggered()

    def trigger(
        self,
        eventname: str,
        objectid: int,
        *,
        courseid: int = 0,
        contextinstanceid: int = 0,
        relateduserid: int | None = None,
    ) -> None:
        """Moodle's ``$event->trigger()`` by the token user, now: sent when the call ends, unless a transaction
        around it rolls back first (Moodle's observers outside the database hear of an event only on commit, as
        tool_trigger does). Call it under ``lock``."""
        event = MoodleEvent(eventname, objectid, self.admin.id, self.now(), courseid, contextinstanceid, relateduserid)
        self._triggered.append(event)

    def _send_triggered(self) -> None:
        triggered, self._triggered = self._triggered, []
        if self.events is not None and triggered:
            self.events.send(triggered)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Moodle's delegated transaction: a block that raises leaves the tables as they were before it.

        Ids taken inside the block stay taken, as a PostgreSQL sequence does not roll back; the events triggered
        inside it are never sent. Call it under ``lock``.
        """
        saved = copy.deepcopy(self.state)
        triggered = len(self._triggered)
        try:
            yield
        except BaseException:
            del self._triggered[triggered:]
            for table in dataclasses.fields(SiteState):
                if table.name != "sequences":
                    setattr(self.state, table.name, getattr(saved, table.name))
            raise

    @contextmanager
    def inserting(self, table: str) -> Iterator[None]:
        """A transaction whose block only adds rows to ``table``: a block that raises takes them out again (and its
        events are never sent).

        It remembers the keys of ``table`` alone, where ``transaction()`` copies every row of the site: a call that
        adds thousands of users to a site of thousands does not pay for a copy of them all. Call it under ``lock``.
        """
        rows = getattr(self.state, table)
        before = set(rows)
        triggered = len(self._triggered)
        try:
            yield
        except BaseException:
            del self._triggered[triggered:]
            for key in set(rows) - before:
                del rows[key]
            raise

    def error_body(self, error: MoodleException) -> dict[str, Any]:
        return error.body(self.debug)
