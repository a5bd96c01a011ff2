"""Who is calling and what they may do: JWT bearer tokens checked by a Pyramid 2 security policy."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from pyramid.request import Request, RequestLocalCache
from pyramid.security import Allowed, Denied

from lms_api.settings import Settings

MAX_TOKEN_BYTES = 8192
LEEWAY_S = 30


class Scope(StrEnum):
    """OAuth2-style scopes carried in the token's space-separated ``scope`` claim; each is a view permission."""

    SITEINFO_READ = "siteinfo:read"
    COURSES_READ = "courses:read"
    COURSES_WRITE = "courses:write"
    USERS_READ = "users:read"
    ENROL_WRITE = "enrol:write"
    NOTIFICATIONS_READ = "notifications:read"
    FILES_WRITE = "files:write"
    ADMIN = "admin"  # acting on other users; implies every other scope


_SCOPES = frozenset(scope.value for scope in Scope)

# The default permission of every view. No token carries it, so a view registered without an explicit
# permission is closed to everyone instead of open to anyone.
UNDECLARED_PERMISSION = "lms_api:undeclared-permission"


@dataclass(frozen=True)
class Identity:
    sub: str
    scopes: frozenset[str]
    moodle_userid: int | None = None

    def has_scope(self, scope: str) -> bool:
        if scope not in _SCOPES:
            return False
        return scope in self.scopes or Scope.ADMIN in self.scopes


class ScopeDenied(Denied):
    """Refused because the caller's token lacks ``scope``."""

    scope: str

    def __new__(cls, scope: str) -> ScopeDenied:
        denied = super().__new__(cls, "This token lacks the scope %s", scope)
        denied.scope = scope
        return denied


class InvalidToken(Exception):
    """The bearer token failed verification; the message says why without repeating the token."""


@dataclass(frozen=True)
class _Authentication:
    identity: Identity | None
    problem: str | None  # None: no token was sent, or the token was valid


class TokenVerifier:
    def __init__(
        self,
        secret: str,
        algorithms: Iterable[str],
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: int = LEEWAY_S,
    ) -> None:
        self._secret = secret
        self._algorithms = list(algorithms)
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(settings.jwt_secret, settings.jwt_algorithms, settings.jwt_audience, settings.jwt_issuer)

    def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,  # pinned: the token's own "alg" header is never trusted
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        return _identity_from_claims(claims)

    def mint(self, sub: str, scopes: Iterable[str], moodle_userid: int | None = None, ttl_s: int = 3600) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "scope": " ".join(scopes), "iat": now, "nbf": now, "exp": now + ttl_s}
        if moodle_userid is not None:
            claims["moodle_userid"] = moodle_userid
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return jwt.encode(claims, self._secret, algorithm=self._algorithms[0])


def _identity_from_claims(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("'sub' must be a non-empty string")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("'scope' must be a space-separated string")
    moodle_userid = claims.get("moodle_userid")
    if moodle_userid is not None and (
        isinstance(moodle_userid, bool) or not isinstance(moodle_userid, int) or moodle_userid <= 0
    ):
        raise InvalidToken("'moodle_userid' must be a positive integer")
    return Identity(sub=sub, scopes=frozenset(scope.split()), moodle_userid=moodle_userid)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None if not header else ""
    return token.strip()


class JWTSecurityPolicy:
    """Pyramid 2 security policy: identity from ``Authorization: Bearer <JWT>``, permissions from scopes."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier
        self._cache = RequestLocalCache(self._authenticate)

    def _authenticate(self, request: Request) -> _Authentication:
        token = bearer_token(request)
        if token is None:
            return _Authentication(None, None)
        if not token:
            return _Authentication(None, "the Authorization header must be 'Bearer <token>'")
        try:
            return _Authentication(self._verifier.verify(token), None)
        except InvalidToken as error:
            return _Authentication(None, str(error))

    def identity(self, request: Request) -> Identity | None:
        return self._cache.get_or_create(request).identity

    def token_problem(self, request: Request) -> str | None:
        """Why the presented token was refused, or None when no token was sent or it was valid."""
        return self._cache.get_or_create(request).problem

    def authenticated_userid(self, request: Request) -> str | None:
        identity = self.identity(request)
        return identity.sub if identity else None

    def permits(self, request: Request, context: Any, permission: str) -> Allowed | Denied:
        identity = self.identity(request)
        if identity is None:
            return Denied("authentication required")
        if identity.has_scope(permission):
            return Allowed(f"scope {permission} granted")
        return ScopeDenied(permission)

    def remember(self, request: Request, userid: str, **kw: Any) -> list:
        return []

    def forget(self, request: Request, **kw: Any) -> list:
        return []
