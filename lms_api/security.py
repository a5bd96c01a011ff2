"""Who is calling and what they may do: JWT bearer tokens checked by a Pyramid 2 security policy."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pyramid.config import Configurator
from pyramid.interfaces import ISecurityPolicy
from pyramid.request import Request, RequestLocalCache
from pyramid.security import Allowed, Denied

from lms_api.settings import DEFAULT_JWT_LEEWAY_S, HMAC_ALGORITHMS, PublicKey, Settings

log = structlog.get_logger("lms_api.security")

MAX_TOKEN_BYTES = 8192
REMEMBER_VERIFIED_S = 60.0
MAX_REMEMBERED_TOKENS = 10_000
QUERY_TOKEN_PARAMETER = "access_token"  # noqa: S105 - a parameter name, not a secret


class Scope(StrEnum):
    """OAuth2 scopes carried in the token's ``scope`` claim (see :func:`scope_tokens`); each is a permission."""

    SITEINFO_READ = "siteinfo:read"
    COURSES_READ = "courses:read"
    COURSES_WRITE = "courses:write"
    USERS_READ = "users:read"
    USERS_WRITE = "users:write"
    ENROL_WRITE = "enrol:write"
    NOTIFICATIONS_READ = "notifications:read"
    FILES_WRITE = "files:write"
    JOBS_READ = "jobs:read"  # one's own background jobs: read, list, cancel
    MESSAGES_WRITE = "messages:write"  # instant messages sent as the gateway's Moodle user
    EVENTS_READ = "events:read"  # one's own event stream: tickets for it
    # Moodle's event deliveries, authenticated by WEBHOOK_SECRET on the webhook route, where no JWT is read.
    MOODLE_EVENTS = "moodle:events"
    CACHE_REFRESH = "cache:refresh"  # a read with Cache-Control: no-cache goes to Moodle, not to the cache
    ADMIN = "admin"  # acting on other users; implies every other scope


_SCOPES = frozenset(scope.value for scope in Scope)
# The claims that are times (RFC 7519 NumericDate): JSON numbers, which PyJWT alone would also take as strings.
_TIME_CLAIMS = ("exp", "nbf", "iat")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_ALGORITHM_NAMES = frozenset(jwt.algorithms.get_default_algorithms())  # "none" among them

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


class ScopeDenied(Denied):  # type: ignore[misc]  # Pyramid ships no type information
    """Refused because the caller's token lacks ``scope``."""

    scope: str

    def __new__(cls, scope: str) -> ScopeDenied:
        denied: ScopeDenied = super().__new__(cls, "This token lacks the scope %s", scope)
        denied.scope = scope
        return denied


class InvalidToken(Exception):
    """The bearer token failed verification; the message says why in the caller's terms, never repeating the token."""


@dataclass(frozen=True)
class _Authentication:
    identity: Identity | None
    problem: str | None  # None: no token was sent, or the token was valid


class JwksKeys(jwt.PyJWKClient):
    """Signing keys from an identity provider's JWKS URL, cached by ``kid``.

    PyJWKClient fetches and reads the set: http(s) only, no redirects followed, ``timeout_s`` on the connection and
    each read, a JSON object of keys, signing keys with a ``kid`` only. When to fetch is decided here: the set is
    fetched on first use, again after ``max_age_s``, and again when a token names an unknown ``kid`` (the provider
    rotated its keys), but never more often than every ``min_refresh_s``: a flood of tokens with made-up ``kid``s
    costs the provider one request per interval, whether it answers or not. When a fetch fails, the keys already
    known stay. PyJWKClient's own set cache cannot keep those promises, so it is off: it drops the keys once a
    fetch after its ``lifespan`` fails, holds one lock while it fetches (a slow provider would stall every request,
    not only the one that found the keys stale), and starts its cooldown at successful fetches only (a provider that
    is down would be asked again on every unknown ``kid``).
    """

    def __init__(
        self,
        url: str,
        *,
        min_refresh_s: float = 60.0,
        max_age_s: float = 3600.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(url, cache_jwk_set=False, timeout=timeout_s)
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._tried_at: float | None = None  # when the last fetch ended, whatever its outcome
        self._fetching = threading.Lock()

    def key_for(self, kid: Any) -> Any:
        """The public key a token's ``kid`` names, for :func:`jwt.decode`; InvalidToken when there is none."""
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("the token names no key ('kid')")
        try:
            return self.get_signing_key(kid).key
        except jwt.PyJWKClientError:
            raise InvalidToken("the token's signing key ('kid') is not one of the identity provider's") from None

    def get_signing_key(self, kid: str) -> jwt.PyJWK:
        # Only the first fetch makes callers wait; later ones run in one thread while the others go on with the keys
        # they have.
        if self._wants_fetch(kid) and self._fetching.acquire(blocking=self._tried_at is None):
            try:
                if self._wants_fetch(kid):
                    self._fetch()
            finally:
                self._fetching.release()
        key = self._keys.get(kid)
        if key is None:
            raise jwt.PyJWKClientError(f"the key set has no signing key {kid!r}")
        return key

    def _wants_fetch(self, kid: str) -> bool:
        if self._tried_at is None:
            return True
        age = self._clock() - self._tried_at
        return age >= self._max_age_s or (kid not in self._keys and age >= self._min_refresh_s)

    def _fetch(self) -> None:
        try:
            keys = self.get_signing_keys(refresh=True)
        # OSError: a connection cut while the set is read; HTTPException: an answer cut short or malformed.
        except (jwt.PyJWTError, OSError, ValueError, http.client.HTTPException) as error:
            log.warning("jwks.unavailable", jwks_url=self.uri, error=type(error).__name__, kept=len(self._keys))
        else:
            self._keys = {key.key_id: key for key in keys if key.key_id}
        finally:
            self._tried_at = self._clock()


class TokenVerifier:
    """Checks bearer JWTs: the algorithm must be one of ``algorithms`` and picks the key, never the reverse.

    HS* tokens are checked with ``secret``; RS*/PS*/ES* tokens with ``public_key`` or the JWKS key their ``kid``
    names. An HS256 token signed with the RSA public key (algorithm confusion) is refused: HS256 is either not
    accepted, or checked against the secret.
    """

    def __init__(
        self,
        secret: str | None,
        algorithms: Iterable[str],
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: int = DEFAULT_JWT_LEEWAY_S,
        public_key: PublicKey | None = None,
        jwks: JwksKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._algorithms = list(algorithms)
        self._audience = audience
        self._issuer = issuer
        self._leeway_s = leeway_s
        self._public_key = public_key
        self._jwks = jwks
        self._clock = clock
        # sha256 of a token -> (identity, valid until): 32 bytes a key, and no bearer token kept for minutes
        self._verified: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            settings.jwt_secret,
            settings.jwt_algorithms,
            settings.jwt_audience,
            settings.jwt_issuer,
            settings.jwt_leeway_s,
            settings.jwt_public_key,
            JwksKeys(settings.jwt_jwks_url) if settings.jwt_jwks_url else None,
        )

    @property
    def can_mint(self) -> bool:
        return bool(self._secret) and any(name in HMAC_ALGORITHMS for name in self._algorithms)

    def verify(self, token: str) -> Identity:
        """The token's identity. An SPA sends one token many times: a verified one is remembered until it expires,
        and for at most REMEMBER_VERIFIED_S, so a key taken out of the JWKS stops its tokens soon."""
        now = self._clock()
        key = hashlib.sha256(token.encode(errors="surrogatepass")).digest()  # whatever the str holds
        with self._verified_lock:
            remembered = self._verified.get(key)
            if remembered is not None and now < remembered[1]:
                self._verified.move_to_end(key)
                return remembered[0]
        identity, expires_at = self._verify(token)
        with self._verified_lock:
            self._verified[key] = (identity, min(expires_at + self._leeway_s, now + REMEMBER_VERIFIED_S))
            if len(self._verified) > MAX_REMEMBERED_TOKENS:
                self._verified.popitem(last=False)
        return identity

    def _verify(self, token: str) -> tuple[Identity, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        header, payload = _read_unverified(token)
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise InvalidToken(_algorithm_refused(algorithm))
        _check_header(header)
        _check_time_claims(payload)  # PyJWT would read "9999999999" as a time
        try:
            claims = jwt.decode(
                token,
                self._key_for(algorithm, header),
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(_refusal(error)) from None
        except (TypeError, ValueError) as error:  # a key PyJWT cannot use for this token: refuse, never crash
            raise InvalidToken(f"the token cannot be verified ({type(error).__name__})") from None
        # Not float(): an integer past a double's range is a valid, if distant, expiry
        expires_at: float = claims["exp"]
        return _identity_from_claims(claims), expires_at

    def _key_for(self, algorithm: str, header: dict[str, Any]) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            return self._secret
        key = self._jwks.key_for(header.get("kid")) if self._jwks is not None else self._public_key
        family = EllipticCurvePublicKey if algorithm.startswith("ES") else RSAPublicKey
        if not isinstance(key, family):
            raise InvalidToken(f"the token's key cannot verify {algorithm}")
        return key

    def mint(self, sub: str, scopes: Iterable[str], moodle_userid: int | None = None, ttl_s: int = 3600) -> str:
        """A token for development and tests; only the HMAC secret can sign (public keys only verify)."""
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "scope": " ".join(scopes), "iat": now, "nbf": now, "exp": now + ttl_s}
        if moodle_userid is not None:
            claims["moodle_userid"] = moodle_userid
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        if not self._secret or not self.can_mint:
            raise ValueError("Tokens are signed only with JWT_SECRET and an HS algorithm in JWT_ALGORITHMS")
        algorithm = next(name for name in self._algorithms if name in HMAC_ALGORITHMS)
        return jwt.encode(claims, self._secret, algorithm=algorithm)


def scope_tokens(scope: str) -> list[str]:
    """The scopes of a ``scope`` value, split on ASCII spaces only (RFC 6749: scope-token *( SP scope-token )).

    A tab, a line break or another Unicode space separates nothing: ``"courses:read\u2003admin"`` is one unknown
    scope, never ``admin``.
    """
    return [token for token in scope.split(" ") if token]


def _identity_from_claims(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("'sub' must be a non-empty string")
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise InvalidToken("'scope' must be a string of scopes separated by spaces")
    moodle_userid = claims.get("moodle_userid")
    if moodle_userid is not None and (
        isinstance(moodle_userid, bool) or not isinstance(moodle_userid, int) or moodle_userid <= 0
    ):
        raise InvalidToken("'moodle_userid' must be a positive integer")
    return Identity(sub=sub, scopes=frozenset(scope_tokens(scope)), moodle_userid=moodle_userid)


_NOT_A_JWT = "it is not a JWT"


def _read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of a compact JWS, or why it is not one, said as the caller sees it.

    PyJWT reads the token again once its key is known; reading it here first means its failures are never passed
    on as they stand ("Invalid header string: 'utf-8' codec can't decode byte 0xb7 ...").
    """
    parts = token.split(".")
    if len(parts) != 3:
        found = f"found {len(parts)}"
        raise InvalidToken(f"{_NOT_A_JWT}: expected three base64url parts, header.payload.signature ({found})")
    header_part, payload_part, signature_part = parts
    header = _json_object(_base64url(header_part, "header"), "header")
    payload = _json_object(_base64url(payload_part, "payload"), "payload")
    _base64url(signature_part, "signature")
    return header, payload


def _base64url(part: str, name: str) -> bytes:
    """A part's bytes: base64url without padding (RFC 7515), or with the '=' some issuers add."""
    unpadded = part.rstrip("=")
    padding = len(part) - len(unpadded)
    if not _BASE64URL.fullmatch(unpadded) or len(unpadded) % 4 == 1 or padding > 2 or (padding and len(part) % 4):
        raise InvalidToken(f"{_NOT_A_JWT}: its {name} is not base64url-encoded")
    decoded = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != unpadded.encode():
        # Bits left over in the last character: another text for the same bytes, which PyJWT refuses too
        raise InvalidToken(f"{_NOT_A_JWT}: its {name} is not base64url-encoded")
    return decoded


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidToken(f"{_NOT_A_JWT}: its {name} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"{_NOT_A_JWT}: its {name} is JSON but not an object")
    return value


def _algorithm_refused(algorithm: Any) -> str:
    if isinstance(algorithm, str) and algorithm in _ALGORITHM_NAMES:  # a name the caller wrote, but a known one
        return f"its algorithm {algorithm} is not accepted"
    return "its header names no algorithm ('alg') that the gateway accepts"


def _check_header(header: dict[str, Any]) -> None:
    if "kid" in header and not isinstance(header["kid"], str):
        raise InvalidToken("its key id ('kid') must be a string")
    if "crit" in header:
        raise InvalidToken("its header lists critical extensions ('crit'); the gateway supports none")
    if header.get("b64", True) is not True:
        raise InvalidToken("its payload is not base64url-encoded ('b64'); the gateway accepts only encoded payloads")


def _check_time_claims(payload: dict[str, Any]) -> None:
    for claim in _TIME_CLAIMS:
        if claim in payload and not _is_number(payload[claim]):
            raise InvalidToken(
                f"'{claim}' must be a JSON number of seconds since 1970-01-01 UTC, not {_json_kind(payload[claim])}"
            )


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number out of range"  # NaN, Infinity, or a literal too large for a double (1e400)


def _refusal(error: jwt.PyJWTError) -> str:
    """Why PyJWT refused a token that is well formed, as the caller sees it; PyJWT's own text is never passed on."""
    if isinstance(error, jwt.InvalidSignatureError):
        return "its signature does not match: it was not signed with a key the gateway trusts"
    if isinstance(error, jwt.ExpiredSignatureError):
        return "it has expired ('exp' is past)"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "it is not valid yet ('nbf' or 'iat' is in the future)"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"it has no '{error.claim}' claim"
    if isinstance(error, jwt.InvalidAudienceError):
        return "its audience ('aud') is not this gateway's"
    if isinstance(error, jwt.InvalidIssuerError):
        return "its issuer ('iss') is not the one the gateway trusts"
    if isinstance(error, jwt.exceptions.InvalidSubjectError):
        return "'sub' must be a non-empty string"
    if isinstance(error, jwt.exceptions.InvalidJTIError):
        return "'jti' must be a string"
    return f"the token cannot be verified ({type(error).__name__})"


def bearer_token(request: Request) -> str | None:
    header: str = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None if not header else ""
    return token.strip()


# Who a request to a path is, for the paths that take credentials of their own instead of a JWT: an identity, None
# when no credentials were sent, or InvalidToken saying why they were refused.
PathCredentials = Callable[[Request], Identity | None]


class OwnCredentials(NamedTuple):
    check: PathCredentials
    needs: str  # what to send, as a 401 says it


class JWTSecurityPolicy:
    """Pyramid 2 security policy: identity from ``Authorization: Bearer <JWT>``, permissions from scopes.

    A path in ``credentials`` is authenticated by its own check instead (the webhook's shared secret, the event
    stream's ticket), never by a JWT. By path, not by route: the tweens ask who the caller is before routing.
    """

    def __init__(self, verifier: TokenVerifier, credentials: dict[str, OwnCredentials] | None = None) -> None:
        self._verifier = verifier
        self._credentials = {} if credentials is None else credentials
        self._cache = RequestLocalCache(self._authenticate)

    def own_credentials(self, request: Request) -> str | None:
        """What the request's path takes instead of a JWT, as its 401 says it; None for a JWT."""
        own = self._credentials.get(request.path_info)
        return None if own is None else own.needs

    def _authenticate(self, request: Request) -> _Authentication:
        own = self._credentials.get(request.path_info)
        if own is not None:
            check = own.check
            try:
                return _Authentication(check(request), None)
            except InvalidToken as error:
                return _Authentication(None, str(error))
        return self._authenticate_jwt(request)

    def _authenticate_jwt(self, request: Request) -> _Authentication:
        if QUERY_TOKEN_PARAMETER in request.GET:
            # Query strings land in access logs, proxies and browser history; RFC 6750 allows them, we do not.
            return _Authentication(None, "a token in the query string is refused: send 'Authorization: Bearer'")
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
        return self._authentication(request).identity

    def _authentication(self, request: Request) -> _Authentication:
        authentication: _Authentication = self._cache.get_or_create(request)
        return authentication

    def known_identity(self, request: Request) -> Identity | None:
        """The identity if the token was already checked for this request; never checks it (for log lines)."""
        authentication: _Authentication | None = self._cache.get(request, None)
        return authentication.identity if authentication is not None else None

    def token_problem(self, request: Request) -> str | None:
        """Why the presented token was refused, or None when no token was sent or it was valid."""
        return self._authentication(request).problem

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

    def remember(self, request: Request, userid: str, **kw: Any) -> list[tuple[str, str]]:
        return []

    def forget(self, request: Request, **kw: Any) -> list[tuple[str, str]]:
        return []


def checked_identity(request: Request) -> Identity | None:
    """Who the request was authenticated as, if its token was checked at all; for log and audit lines.

    Reading ``request.identity`` there would check the token of every request, rate limit or not.
    """
    policy = request.registry.queryUtility(ISecurityPolicy)
    return policy.known_identity(request) if isinstance(policy, JWTSecurityPolicy) else None


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    if settings.uses_development_jwt_secret:
        log.warning("jwt.development_secret", note="JWT_SECRET is unset: tokens are signed with the development secret")
    # Filled by the concerns whose paths take credentials of their own (add_path_credentials).
    config.registry.path_credentials = {}
    config.set_security_policy(
        JWTSecurityPolicy(TokenVerifier.from_settings(settings), config.registry.path_credentials)
    )
    config.set_default_permission(UNDECLARED_PERMISSION)  # a view that forgets its permission is closed


def add_path_credentials(config: Configurator, path: str, check: PathCredentials, *, needs: str) -> None:
    """Requests to ``path`` are authenticated by ``check``, never by a JWT; ``needs`` says what to send (for a 401:
    "This route needs <needs>")."""
    credentials: dict[str, OwnCredentials] = config.registry.path_credentials
    if path in credentials:
        raise ValueError(f"{path} takes credentials of its own already")
    credentials[path] = OwnCredentials(check, needs)
