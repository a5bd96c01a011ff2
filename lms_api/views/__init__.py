"""The API's views: one class per resource, which declares its routes (:func:`api_routes`) and, for each method,
its operation (:func:`api_view`): scope, input schemas, answer schema and status, route errors.

The declaration is the behaviour. The view deriver :func:`operation_view` loads the declared inputs into
``request.validated`` before the view runs and dumps what the view returns through the answer schema into the
success envelope, with the declared status; the OpenAPI document is read from the same declarations in Pyramid's
introspector (:mod:`lms_api.operation`). A view body calls its service, and names what the audit line and the
``Location`` header need; the checks before a call to Moodle are the service's.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import venusian
from marshmallow import Schema
from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import view_config

from lms_api import idempotency
from lms_api.cache import CachedMoodle
from lms_api.errors import ErrorCode, success_body, success_json
from lms_api.jobs import PREFERENCE_APPLIED_HEADER, RESPOND_ASYNC, Deferred, JobEngine, prefers_async, runs_as_job
from lms_api.jsoncodec import dumps
from lms_api.operation import OPERATION, Operation
from lms_api.schemas.base import FormSchema, RequestSchema
from lms_api.schemas.jobs import JobSchema
from lms_api.security import Identity, Scope
from lms_api.settings import Settings

ENVELOPE_RENDERER = "lms_api:envelope"
# How many dumps of shared answers an operation remembers. Few: each holds its answer (a real site's site info, its
# JSON and several times that parsed), and the read cache hands out one object per stored entry, so one or two are live.
MAX_REMEMBERED_DUMPS = 8

JOB_ROUTE = "api.moodle.job"
ENABLED_BY = "enabled_by"
JOB_SCHEMA = JobSchema()

ViewsClass = TypeVar("ViewsClass", bound=type)
View = TypeVar("View", bound=Callable[..., Any])


def api_view(
    *,
    route_name: str | None = None,
    request_method: str,
    permission: Scope,
    answers: Schema,
    status: int = 200,
    query: RequestSchema | None = None,
    path: RequestSchema | None = None,
    body: RequestSchema | None = None,
    form: FormSchema | None = None,
    errors: tuple[ErrorCode, ...] = (),
    cached: bool = False,
    shared_answer: bool = False,
    settled_by: str | None = None,
    resend_when_unknown: bool = False,
    accepts_async: bool = False,
    credentials: str | None = None,
    event_stream: bool = False,
    own_body: Schema | None = None,
    takes_idempotency_key: bool = True,
) -> Callable[[View], View]:
    """``view_config`` for an API view method, with its :class:`Operation`: the permission is a required argument,
    never a default; the schemas given here are the ones the view's input is loaded with and its answer dumped with,
    and a success is answered with ``status``. Without ``route_name``, the class's ``view_defaults`` names it.

    A write retried with the ``Idempotency-Key`` of an attempt whose outcome is unknown (or partial) is not sent
    blindly again: ``settled_by`` names the class's method that looks in Moodle and answers as the write would have
    (or None: the view runs); ``resend_when_unknown`` says sending the write again is harmless; with neither, the
    retry is answered the first attempt's answer.

    ``accepts_async``: the view returns a :class:`~lms_api.jobs.Deferred` write, applied at once, or submitted as a
    background job and answered 202 with it (:func:`~lms_api.jobs.runs_as_job`).

    ``credentials``: the route's path takes credentials of its own, not a JWT (the OpenAPI security scheme of that
    name). ``event_stream``: the view answers server-sent events with a response of its own; ``answers`` documents
    an event's data. ``own_body``: the view reads its body itself, form-encoded or JSON; the schema documents it.
    ``takes_idempotency_key=False``: a POST that writes nothing an ``Idempotency-Key`` would guard."""
    if not isinstance(permission, Scope):
        raise TypeError(f"permission must be a Scope, got {permission!r}")
    if settled_by is not None and resend_when_unknown:
        raise TypeError("settled_by and resend_when_unknown are two answers to one question: give one")
    operation = Operation(
        permission,
        answers,
        status,
        query,
        path,
        body,
        form,
        errors,
        cached,
        shared_answer,
        settled_by=settled_by,
        resend_when_unknown=resend_when_unknown,
        accepts_async=accepts_async,
        credentials=credentials,
        event_stream=event_stream,
        own_body=own_body,
        takes_idempotency_key=takes_idempotency_key,
    )
    route = {} if route_name is None else {"route_name": route_name}
    register: Callable[[View], View] = view_config(
        request_method=request_method, permission=permission.value, **route, **{OPERATION: operation}
    )
    return register


def api_routes(routes: Mapping[str, str], *, enabled_by: str | None = None) -> Callable[[ViewsClass], ViewsClass]:
    """The routes a view class serves, by name and pattern, added when its module is scanned. With ``enabled_by``
    (a :class:`~lms_api.settings.Settings` field), the routes exist only while that setting is set: else they are
    answered ``404 notfound``, as a path no route has."""
    predicates = {} if enabled_by is None else {ENABLED_BY: enabled_by}

    def declare(views: ViewsClass) -> ViewsClass:
        def add_routes(context: Any, name: str, ob: Any) -> None:
            for route_name, pattern in routes.items():
                context.config.add_route(route_name, pattern, **predicates)

        venusian.attach(views, add_routes, category="pyramid")
        return views

    return declare


class ApiViews:
    """What a resource's views share, resolved once per request: the request, Moodle as services see it (the read
    cache in front of the client, for reads and writes alike) and the caller."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.moodle: CachedMoodle = request.find_service(CachedMoodle)
        self.caller: Identity = request.identity


class AnswerDumps:
    """An operation's answers as JSON text; a shared answer's is remembered by the answer's identity, holding the
    answer so that its id cannot be reused while remembered."""

    def __init__(self, schema: Schema, remember: bool) -> None:
        self._schema = schema
        self._remember = remember
        self._remembered: OrderedDict[int, tuple[Any, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, answer: Any) -> str:
        if not self._remember:
            return dumps(self._schema.dump(answer))
        key = id(answer)
        with self._lock:
            remembered = self._remembered.get(key)
            if remembered is not None and remembered[0] is answer:
                self._remembered.move_to_end(key)
                return remembered[1]
        text = dumps(self._schema.dump(answer))
        with self._lock:
            self._remembered[key] = (answer, text)
            self._remembered.move_to_end(key)
            if len(self._remembered) > MAX_REMEMBERED_DUMPS:
                self._remembered.popitem(last=False)
        return text


def operation_view(view: Callable[[Any, Request], Any], info: Any) -> Callable[[Any, Request], Any]:
    """The view deriver of :func:`api_view`'s ``operation``: after the permission check, the declared inputs into
    ``request.validated``; the view's answer dumped through ``answers`` into the success envelope, with ``status``.
    A write with an ``Idempotency-Key`` is answered once (:mod:`lms_api.idempotency`)."""
    operation: Operation | None = info.options.get(OPERATION)
    if operation is None:
        return view
    dumped = AnswerDumps(operation.answers, operation.shared_answer)
    settle = _settling(operation, info)

    def respond(request: Request, answer: Any) -> Response:
        if operation.event_stream:
            if not isinstance(answer, Response):
                raise TypeError(f"{info.original_view!r} declares event_stream: it returns its own Response")
            return answer
        if isinstance(answer, Deferred):
            if not operation.accepts_async:
                raise TypeError(f"{info.original_view!r} returned a Deferred write: declare accepts_async")
            if runs_as_job(request, answer.plan.total):
                return _accepted(request, answer, operation.answers)
            answer = answer.plan.apply()
        data_json = dumped(answer)
        response: Response = request.response
        response.status_int = operation.status
        response.content_type = "application/json"
        response.text = success_json(data_json)
        return response

    def answered(context: Any, request: Request) -> Response:
        key = idempotency.requested_key(request) if operation.takes_idempotency_key else None
        if key is None:
            request.validated = operation.validated(request)
            return respond(request, view(context, request))
        body = idempotency.digest_body(request) if operation.form is None else None
        request.validated = operation.validated(request)
        digest = idempotency.form_digest(request.validated.form) if body is None else body.digest.hexdigest()
        return idempotency.answer_once(
            request,
            key,
            idempotency.fingerprint(request, digest),
            take_unsettled=settle is not None or operation.resend_when_unknown,
            first=lambda: respond(request, view(context, request)),
            settle=None if settle is None else lambda: _settled(request, settle, respond),
        )

    return answered


def _accepted(request: Request, deferred: Deferred, answers: Schema) -> Response:
    """202: the write submitted as a background job, which ``Location`` names; its result is dumped by ``answers``."""
    jobs: JobEngine = request.registry.jobs
    job = jobs.submit(deferred.kind, request.identity.sub, request.id, deferred.plan, answers.dump)
    request.audit_job_id = job.id
    response: Response = request.response
    response.status_int = 202
    response.content_type = "application/json"
    response.location = request.public_url(request.route_path(JOB_ROUTE, id=job.id))
    if prefers_async(request):
        response.headers[PREFERENCE_APPLIED_HEADER] = RESPOND_ASYNC
    response.text = success_json(dumps(JOB_SCHEMA.dump(job.resource())))
    return response


def _settling(operation: Operation, info: Any) -> Callable[[Request], Any] | None:
    """The views class's method named by ``settled_by``, on a new instance for the request; checked at start-up."""
    if operation.settled_by is None:
        return None
    views, name = info.original_view, operation.settled_by
    if not callable(getattr(views, name, None)):
        raise TypeError(f"settled_by={name!r}: {getattr(views, '__qualname__', views)} has no such method")
    return lambda request: getattr(views(request), name)()


def _settled(
    request: Request, settle: Callable[[Request], Any], respond: Callable[[Request, Any], Response]
) -> Response | None:
    answer = settle(request)
    return None if answer is None else respond(request, answer)


class EnabledBySetting:
    """Route predicate ``enabled_by``: the route matches only while the named setting is set."""

    def __init__(self, field_name: str, config: Configurator) -> None:
        settings: Settings = config.registry.settings["lms_api.settings"]
        if not hasattr(settings, field_name):
            raise ValueError(f"enabled_by={field_name!r} names no setting")
        self._enabled = bool(getattr(settings, field_name))
        self._field_name = field_name

    def text(self) -> str:
        return f"enabled_by = {self._field_name}"

    phash = text

    def __call__(self, info: Any, request: Request) -> bool:
        return self._enabled


operation_view.options = (OPERATION,)  # type: ignore[attr-defined]  # Pyramid reads a deriver's options from it


class EnvelopeRenderer:
    """Renders what a view returns as ``{"ok": true, "data": ...}``, for views outside the API (the health checks)."""

    def __init__(self, info: Any) -> None:
        pass

    def __call__(self, value: Any, system: dict[str, Any]) -> str:
        system["request"].response.content_type = "application/json"
        return dumps(success_body(value))


def includeme(config: Configurator) -> None:
    config.add_renderer(ENVELOPE_RENDERER, EnvelopeRenderer)
    config.add_route_predicate(ENABLED_BY, EnabledBySetting)
    # Under the renderer: the deriver answers with a response of its own, which the renderer passes on.
    config.add_view_deriver(operation_view, under="rendered_view", over="mapped_view")
    config.scan("lms_api.views")
