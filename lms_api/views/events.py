from pyramid.view import view_defaults

from lms_api.errors import ApiError, ErrorCode
from lms_api.events import STREAM_PATH, EventEngine, caller_channel, course_channel, user_channel
from lms_api.events.tickets import TICKET_PARAMETER, TICKET_TTL_S, Ticket, TicketStore, redeemed_ticket
from lms_api.openapi import EVENT_TICKET
from lms_api.schemas.events import EventDataSchema, StreamQuery, TicketQuery, TicketSchema
from lms_api.security import Scope
from lms_api.services.courses import course_not_found, courses_by_ids
from lms_api.views import ApiViews, api_routes, api_view

TICKETS_ROUTE = "api.moodle.events.tickets"
STREAM_ROUTE = "api.moodle.events.stream"


@api_routes({TICKETS_ROUTE: "/api/moodle/events/tickets", STREAM_ROUTE: STREAM_PATH})
@view_defaults(route_name=STREAM_ROUTE)
class EventViews(ApiViews):
    @api_view(
        route_name=TICKETS_ROUTE,
        request_method="POST",
        permission=Scope.EVENTS_READ,
        query=TicketQuery(),
        answers=TicketSchema(),
        status=201,
        errors=(ErrorCode.COURSE_NOT_FOUND,),
        takes_idempotency_key=False,  # a ticket is single use: never kept for a replay
    )
    def ticket(self) -> object:
        """A ticket for one event stream: single use, valid 60 seconds.

        The stream carries the caller's own channels: its Moodle user's (`moodle_userid`: notifications,
        enrolments) and its background jobs' progress; with `courses`, also those courses' events (`courses:read`
        is needed for that, and each course must exist). Open `stream_url` with an EventSource (or `websocket_url`
        with a WebSocket, behind nginx with nchan); when the stream ends, ask for a new ticket and pass the last
        event's id as `last_event_id`.
        """
        courses: list[int] = list(dict.fromkeys(self.request.validated.query.get("courses", [])))
        if courses:
            if not self.caller.has_scope(Scope.COURSES_READ):
                raise ApiError(
                    ErrorCode.FORBIDDEN,
                    "A stream of course events needs the courses:read scope",
                    {"required_scope": Scope.COURSES_READ.value},
                )
            found = {course["id"] for course in courses_by_ids(self.moodle, courses)}
            missing = [course for course in courses if course not in found]
            if missing:
                raise course_not_found(missing)
        userid = self.caller.moodle_userid
        channels = (
            *([] if userid is None else [user_channel(userid)]),
            caller_channel(self.caller.sub),
            *(course_channel(course) for course in courses),
        )
        store: TicketStore = self.request.registry.event_tickets
        text = store.issue(Ticket(self.caller.sub, userid, channels))
        stream_url = self.request.public_url(self.request.route_path(STREAM_ROUTE, _query={TICKET_PARAMETER: text}))
        websocket_url = None
        if self._engine.name == "nchan":
            websocket_url = "ws" + stream_url.removeprefix("http") if stream_url.startswith("http") else stream_url
        return {
            "ticket": text,
            "expires_in": TICKET_TTL_S,
            "stream_url": stream_url,
            "websocket_url": websocket_url,
            "userid": userid,
            "courses": courses,
        }

    @api_view(
        request_method="GET",
        permission=Scope.EVENTS_READ,
        credentials=EVENT_TICKET,
        query=StreamQuery(),
        answers=EventDataSchema(),
        event_stream=True,
        errors=(ErrorCode.EVENTS_FULL,),
    )
    def stream(self) -> object:
        """The caller's events as server-sent events, opened with a ticket (no `Authorization` header).

        Each event has an `id`, a type (`event:`) and a JSON object (`data:`) naming its type again; an idle stream
        gets a comment line every `EVENTS_HEARTBEAT_S`. `Last-Event-ID` (or `last_event_id`) resumes after that
        event with the events still kept (`EVENTS_BUFFER_S`). A used, expired or unknown ticket is `401`; behind
        nginx with nchan, nginx holds the stream (EventSource or WebSocket), else the gateway does, up to
        `EVENTS_MAX_STREAMS` (`503 eventsfull` past it).
        """
        return self._engine.stream(self.request, redeemed_ticket(self.request).channels)

    @property
    def _engine(self) -> EventEngine:
        engine: EventEngine = self.request.registry.events
        return engine
