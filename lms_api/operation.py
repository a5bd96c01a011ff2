"""What an API route and method take and answer (:class:`Operation`), as the views declare it, and the walk over the
views Pyramid registered (:func:`declared_views`) that the view deriver's users read it from: the OpenAPI document,
the methods each route answers, the routes held to the upload limit.

A module of its own, apart from the views: what reads the declarations needs neither the views' services nor the read
cache they hand them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from marshmallow import Schema
from pyramid.registry import Registry
from pyramid.request import Request

from lms_api.errors import ErrorCode
from lms_api.schemas.base import FormSchema, RequestSchema, load_json_body, load_matchdict, load_multipart, load_query
from lms_api.security import Scope

OPERATION = "operation"  # the view option api_view declares and the deriver and the OpenAPI document read


@dataclass(frozen=True)
class Operation:
    """What a route and method take and answer, as declared: the deriver enforces it, the OpenAPI document says it."""

    scope: Scope
    answers: Schema
    status: int = 200
    query: RequestSchema | None = None
    path: RequestSchema | None = None
    body: RequestSchema | None = None
    form: FormSchema | None = None
    errors: tuple[ErrorCode, ...] = ()
    cached: bool = False  # answered through the read cache: Cache-Status
    # The view returns a read-cache entry's own object, shared and never changed: its dump is remembered by identity.
    shared_answer: bool = False
    # A write whose outcome was unknown or partial, retried with its Idempotency-Key: the name of a method of the same
    # views class that finds in Moodle what the write did and answers as if it had succeeded (finishing what is
    # missing), or answers None to let the view write again...
    settled_by: str | None = None
    # ...or, for a write that sets values (sending it twice is harmless), the view itself runs again.
    resend_when_unknown: bool = False
    # The view returns a Deferred write, which may run as a background job: answered 202 with the job when asked.
    accepts_async: bool = False
    # How the caller is authenticated: None for a JWT, else the name of the OpenAPI security scheme of the path's own
    # credentials (lms_api.security.add_path_credentials).
    credentials: str | None = None
    # Answered as a stream of server-sent events: the view returns its own Response, and ``answers`` describes each
    # event's data.
    event_stream: bool = False
    # A body the view reads itself, form-encoded or JSON (Moodle's webhook deliveries): documented with this schema.
    own_body: Schema | None = None
    # A POST that writes nothing an Idempotency-Key would guard (a stream's ticket, Moodle's deliveries, which are
    # deduplicated by their own key): the header is not read, and IDEMPOTENCY_REQUIRED does not ask for it.
    takes_idempotency_key: bool = True

    def validated(self, request: Request) -> Validated:
        """The declared inputs, loaded in order: the path, the query, then the body (refused as a whole)."""
        path = load_matchdict(request, self.path) if self.path is not None else {}
        query = load_query(request, self.query) if self.query is not None else {}
        body = load_json_body(request, self.body) if self.body is not None else {}
        form = {}
        if self.form is not None:
            form = load_multipart(request, self.form, self.form.repeatable, max_files=self.form.max_files)
        return Validated(path, query, body, form)


@dataclass(frozen=True)
class Validated:
    """``request.validated``: a view's inputs as its operation's schemas loaded them (empty when not declared)."""

    path: dict[str, Any]
    query: dict[str, Any]
    body: dict[str, Any]  # a JSON body
    form: dict[str, Any]  # a multipart/form-data body


class DeclaredView(NamedTuple):
    """A view registered for a route: the methods it answers (none when it answers any), its operation when it is an
    API view, and the callable that answers (a view class's method, whose docstring describes it)."""

    route_name: str
    methods: tuple[str, ...]
    operation: Operation | None
    view: Callable[..., Any]


def declared_views(registry: Registry) -> Iterator[DeclaredView]:
    """Every view of ``registry`` registered for a route, in the order they were added; exception views and other
    views of no route are left out."""
    for view in registry.introspector.get_category("views"):
        introspectable = view["introspectable"]
        route_name = introspectable["route_name"]
        if not route_name:
            continue
        methods = introspectable["request_methods"] or ()
        attr, view_callable = introspectable["attr"], introspectable["callable"]
        yield DeclaredView(
            route_name,
            (methods,) if isinstance(methods, str) else tuple(methods),
            introspectable.get(OPERATION),
            getattr(view_callable, attr) if attr else view_callable,
        )
