"""Tokens from identity providers: a PEM public key, a JWKS URL with key rotation, and algorithm confusion."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lms_api.security import InvalidToken, JwksKeys
from tests.support.credentials import JWT_TEST_SECRET

SITEINFO = "/api/moodle/siteinfo"


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private):
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def claims(ttl=300, **extra):
    now = int(time.time())
    return {"sub": "idp-user", "scope": "siteinfo:read", "iat": now, "exp": now + ttl, **extra}


RSA_PRIVATE, OTHER_RSA, EC_PRIVATE = rsa_key(), rsa_key(), ec.generate_private_key(ec.SECP256R1())


def call(gateway, token):
    return gateway.app.get(SITEINFO, headers={"Authorization": f"Bearer {token}"}, expect_errors=True)


def assert_invalid(response):
    assert response.status_int == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="lms_api", error="invalid_token"'
    assert response.json["error"]["code"] == "invalid_token"


# -- a PEM public key ------------------------------------------------------------------------------


@pytest.fixture
def rs256_gateway(make_gateway):
    return make_gateway(JWT_SECRET="", JWT_PUBLIC_KEY=public_pem(RSA_PRIVATE))


def test_an_rs256_token_is_accepted_with_the_public_key(rs256_gateway):
    response = call(rs256_gateway, jwt.encode(claims(), RSA_PRIVATE, algorithm="RS256"))

    assert response.status_int == 200


def test_an_es256_token_is_accepted_with_an_ec_public_key(make_gateway):
    gateway = make_gateway(JWT_SECRET="", JWT_PUBLIC_KEY=public_pem(EC_PRIVATE))

    assert call(gateway, jwt.encode(claims(), EC_PRIVATE, algorithm="ES256")).status_int == 200


def hs256_signed_with(key_text):
    """Algorithm confusion: an HS256 token whose HMAC key is the RSA public key's PEM text."""
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims(scope="admin")).encode())
    signature = hmac.new(key_text.encode(), header + b"." + payload, hashlib.sha256).digest()
    return (header + b"." + payload + b"." + jwt.utils.base64url_encode(signature)).decode()


def test_algorithm_confusion_with_the_public_key_as_hmac_secret_is_refused(rs256_gateway):
    assert_invalid(call(rs256_gateway, hs256_signed_with(public_pem(RSA_PRIVATE))))


def test_algorithm_confusion_is_refused_even_when_hs256_is_also_accepted(make_gateway):
    gateway = make_gateway(JWT_PUBLIC_KEY=public_pem(RSA_PRIVATE), JWT_ALGORITHMS="HS256,RS256")

    assert_invalid(call(gateway, hs256_signed_with(public_pem(RSA_PRIVATE))))
    assert call(gateway, jwt.encode(claims(), JWT_TEST_SECRET, algorithm="HS256")).status_int == 200


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(jwt.encode(claims(), OTHER_RSA, algorithm="RS256"), id="another-key"),
        pytest.param(jwt.encode(claims(), RSA_PRIVATE, algorithm="RS512"), id="algorithm-outside-the-list"),
        pytest.param(jwt.encode(claims(), RSA_PRIVATE, algorithm="PS256"), id="pss-not-listed"),
        pytest.param(jwt.encode(claims(), JWT_TEST_SECRET, algorithm="HS256"), id="hs256-not-listed"),
        pytest.param(jwt.encode(claims(ttl=-120), RSA_PRIVATE, algorithm="RS256"), id="expired"),
        pytest.param(jwt.encode(claims(nbf=int(time.time()) + 600), RSA_PRIVATE, algorithm="RS256"), id="nbf"),
    ],
)
def test_public_key_tokens_that_fail_are_refused(rs256_gateway, token):
    assert_invalid(call(rs256_gateway, token))


def test_leeway_is_configurable(make_gateway):
    token = jwt.encode(claims(ttl=-20), JWT_TEST_SECRET, algorithm="HS256")

    assert call(make_gateway(), token).status_int == 200  # 30 s by default
    assert_invalid(call(make_gateway(JWT_LEEWAY_S="5"), token))


# -- a JWKS URL ------------------------------------------------------------------------------------


class IdentityProvider(ThreadingHTTPServer):
    """Serves a JWKS and counts how often it is asked."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _JwksHandler)
        self.keys = {"key-1": RSA_PRIVATE}
        self.hits = 0
        self.status = 200
        self.redirect_to = None  # a URL: every answer is a 302 there
        self.cut_short = False  # every answer ends before the length it declares
        self.gate = threading.Event()  # cleared: every answer waits until it is set again
        self.gate.set()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/.well-known/jwks.json"

    def jwks(self):
        entries = []
        for kid, private in self.keys.items():
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            entries.append({**entry, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": entries}

    def handle_error(self, request, client_address):
        """A caller that gave up (the timeout tests) leaves a broken pipe: expected, not worth a traceback."""

    def token(self, kid, private=None):
        return jwt.encode(claims(), private or self.keys[kid], algorithm="RS256", headers={"kid": kid})


class _JwksHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits += 1
        self.server.gate.wait()
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps(self.server.jwks()).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_short:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def idp():
    server = IdentityProvider()
    yield server
    server.gate.set()
    server.shutdown()
    server.server_close()


def test_jwks_keys_are_fetched_once_and_cached(make_gateway, idp):
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)

    for _ in range(5):
        assert call(gateway, idp.token("key-1")).status_int == 200

    assert idp.hits == 1


def test_a_rotated_key_is_picked_up_when_a_token_names_it(make_gateway, idp):
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url, JWT_ALGORITHMS="RS256")
    assert call(gateway, idp.token("key-1")).status_int == 200
    now = [1000.0]
    jwks = JwksKeys(idp.url, min_refresh_s=60, clock=lambda: now[0])
    jwks.key_for("key-1")
    idp.keys["key-2"] = OTHER_RSA
    now[0] += 61

    assert jwks.key_for("key-2") is not None
    assert idp.hits == 3  # the gateway's first fetch, then this key set's first fetch and its refresh


def test_a_flood_of_unknown_kids_refreshes_at_most_once_per_interval(idp):
    now = [1000.0]
    jwks = JwksKeys(idp.url, min_refresh_s=60, clock=lambda: now[0])
    jwks.key_for("key-1")

    for attempt in range(200):
        with pytest.raises(InvalidToken):
            jwks.key_for(f"forged-{attempt}")
    assert idp.hits == 1

    now[0] += 60
    with pytest.raises(InvalidToken):
        jwks.key_for("forged-after-interval")
    assert idp.hits == 2


def test_jwks_tokens_with_unknown_or_missing_kids_are_a_401(make_gateway, idp):
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)

    assert_invalid(call(gateway, idp.token("forged", private=OTHER_RSA)))
    assert_invalid(call(gateway, jwt.encode(claims(), RSA_PRIVATE, algorithm="RS256")))
    assert_invalid(call(gateway, idp.token("key-1", private=OTHER_RSA)))


def test_an_unreachable_identity_provider_keeps_the_known_keys(idp):
    now = [1000.0]
    jwks = JwksKeys(idp.url, max_age_s=10, clock=lambda: now[0])
    known = jwks.key_for("key-1")
    jwks.uri = "http://127.0.0.1:9/unreachable"

    now[0] += 11

    assert jwks.key_for("key-1") is known


def test_a_provider_that_redirects_is_not_followed(make_gateway, idp):
    elsewhere = IdentityProvider()
    try:
        idp.redirect_to = elsewhere.url
        gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)

        assert_invalid(call(gateway, idp.token("key-1")))
        assert (idp.hits, elsewhere.hits) == (1, 0)
    finally:
        elsewhere.shutdown()
        elsewhere.server_close()


def test_a_key_set_cut_short_keeps_the_known_keys_and_refuses_no_known_token(make_gateway, idp):
    now = [1000.0]
    jwks = JwksKeys(idp.url, max_age_s=10, clock=lambda: now[0])
    known = jwks.key_for("key-1")
    idp.cut_short = True
    now[0] += 11

    assert jwks.key_for("key-1") is known
    assert idp.hits == 2
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)
    assert_invalid(call(gateway, idp.token("key-1")))  # no key set read yet: refused, not a 500


def test_a_token_whose_algorithm_does_not_fit_its_jwks_key_is_a_401_not_a_crash(make_gateway, idp):
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)  # accepts RS256 and ES256
    es256_naming_an_rsa_key = jwt.encode(claims(), EC_PRIVATE, algorithm="ES256", headers={"kid": "key-1"})

    assert_invalid(call(gateway, es256_naming_an_rsa_key))


def test_a_jwks_answer_that_is_not_a_key_set_keeps_tokens_refused_not_crashing(make_gateway, idp):
    idp.jwks = lambda: ["not", "a", "key", "set"]
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)

    assert_invalid(call(gateway, idp.token("key-1")))


def test_a_provider_that_fails_is_asked_at_most_once_per_interval_too(idp):
    now = [1000.0]
    jwks = JwksKeys(idp.url, min_refresh_s=60, clock=lambda: now[0])
    jwks.key_for("key-1")
    idp.status = 503
    now[0] += 60

    for attempt in range(50):
        with pytest.raises(InvalidToken):
            jwks.key_for(f"forged-{attempt}")

    assert idp.hits == 2
    assert jwks.key_for("key-1") is not None


def eventually(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def in_thread(function, *args):
    """Runs ``function`` in a thread of its own; the list holds its result once it returned."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function(*args)), daemon=True)
    thread.start()
    return thread, result


def test_a_slow_provider_stalls_only_the_request_that_refreshes(idp):
    now = [1000.0]
    jwks = JwksKeys(idp.url, max_age_s=10, clock=lambda: now[0])
    known = jwks.key_for("key-1")
    idp.gate.clear()
    now[0] += 11
    refreshing, _ = in_thread(jwks.key_for, "key-1")
    eventually(lambda: idp.hits == 2)  # the refresh is waiting on the provider

    other, result = in_thread(jwks.key_for, "key-1")
    other.join(2)

    assert result == [known]
    assert refreshing.is_alive()
    idp.gate.set()
    refreshing.join(5)
    assert idp.hits == 2


def test_callers_that_come_during_the_first_fetch_wait_for_its_keys(idp):
    jwks = JwksKeys(idp.url)
    idp.gate.clear()
    first, first_result = in_thread(jwks.key_for, "key-1")
    eventually(lambda: idp.hits == 1)
    second, second_result = in_thread(jwks.key_for, "key-1")
    time.sleep(0.2)  # time for the second caller to reach the fetch in progress

    idp.gate.set()
    first.join(5)
    second.join(5)

    assert first_result == second_result != []
    assert idp.hits == 1


def test_a_provider_that_does_not_answer_is_given_up_after_the_timeout_and_the_keys_stay(idp):
    now = [1000.0]
    jwks = JwksKeys(idp.url, max_age_s=10, timeout_s=0.3, clock=lambda: now[0])
    known = jwks.key_for("key-1")
    idp.gate.clear()  # connections are taken, never answered
    now[0] += 11

    refreshing, result = in_thread(jwks.key_for, "key-1")
    refreshing.join(3)

    assert result == [known]
    assert idp.hits == 2


def test_a_provider_that_does_not_answer_its_first_fetch_refuses_tokens_after_the_timeout(idp):
    idp.gate.clear()
    jwks = JwksKeys(idp.url, timeout_s=0.3)

    def refused():
        with pytest.raises(InvalidToken):
            jwks.key_for("key-1")
        return True

    first, result = in_thread(refused)
    first.join(3)

    assert result == [True]


def test_a_key_the_provider_publishes_for_encryption_verifies_no_token(make_gateway, idp):
    signing = idp.jwks
    idp.jwks = lambda: {"keys": [{**entry, "use": "enc"} for entry in signing()["keys"]]}
    gateway = make_gateway(JWT_SECRET="", JWT_JWKS_URL=idp.url)

    assert_invalid(call(gateway, idp.token("key-1")))
