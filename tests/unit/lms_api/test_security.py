"""Token minting and verification, without an app."""

import argparse
import time

import jwt
import pytest

from lms_api import cli
from lms_api.security import REMEMBER_VERIFIED_S, InvalidToken, Scope, TokenVerifier, scope_tokens

SECRET = "s" * 40


def test_a_minted_token_verifies_to_its_claims():
    verifier = TokenVerifier(SECRET, ["HS256"])

    identity = verifier.verify(verifier.mint("ada", ["courses:read"], moodle_userid=3))

    assert (identity.sub, identity.scopes, identity.moodle_userid) == ("ada", frozenset({"courses:read"}), 3)


@pytest.mark.parametrize(("secret", "algorithms"), [(None, ["HS256"]), ("", ["HS256"]), (SECRET, ["RS256"])])
def test_only_an_hmac_secret_signs(secret, algorithms):
    verifier = TokenVerifier(secret, algorithms)

    assert not verifier.can_mint
    with pytest.raises(ValueError, match="JWT_SECRET"):
        verifier.mint("ada", ["courses:read"])


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def remembering_verifier(ttl_s, leeway_s=0):
    """A verifier on a clock of the test's, and the tokens it checked itself rather than remembered."""
    token = TokenVerifier(SECRET, ["HS256"]).mint("ada", ["courses:read"], ttl_s=ttl_s)
    clock = Clock(time.time())
    verifier = TokenVerifier(SECRET, ["HS256"], leeway_s=leeway_s, clock=clock)
    checked = []
    verify = verifier._verify

    def counting(presented):
        checked.append(presented)
        return verify(presented)

    verifier._verify = counting
    return verifier, token, clock, checked


def test_a_verified_token_is_remembered_but_never_past_its_expiry_and_leeway():
    verifier, token, clock, checked = remembering_verifier(ttl_s=30, leeway_s=5)
    verifier.verify(token)

    clock.now += 34
    assert verifier.verify(token).sub == "ada"
    assert len(checked) == 1
    clock.now += 2
    verifier.verify(token)
    assert len(checked) == 2


def test_a_remembered_token_is_checked_again_after_a_minute():
    verifier, token, clock, checked = remembering_verifier(ttl_s=3600)
    verifier.verify(token)

    clock.now += REMEMBER_VERIFIED_S - 1
    verifier.verify(token)
    assert len(checked) == 1
    clock.now += 1
    verifier.verify(token)
    assert len(checked) == 2


def test_a_refused_token_is_never_remembered():
    verifier, token, _, checked = remembering_verifier(ttl_s=30)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verifier.verify(token + "x")

    assert len(checked) == 2


@pytest.mark.parametrize(
    ("scope", "tokens"),
    [
        ("courses:read users:read", ["courses:read", "users:read"]),
        ("  courses:read   users:read ", ["courses:read", "users:read"]),  # empty tokens between spaces are nothing
        ("courses:read\u2003admin", ["courses:read\u2003admin"]),
        ("courses:read\tadmin\nusers:read", ["courses:read\tadmin\nusers:read"]),
        ("", []),
    ],
)
def test_scopes_are_split_on_ascii_spaces_only(scope, tokens):
    assert scope_tokens(scope) == tokens


def test_another_space_in_a_scope_claim_grants_nothing_it_seems_to_name():
    verifier = TokenVerifier(SECRET, ["HS256"])

    identity = verifier.verify(verifier.mint("ada", ["courses:read\u2003admin", "users:read"]))

    assert not identity.has_scope(Scope.ADMIN)
    assert not identity.has_scope(Scope.COURSES_READ)
    assert identity.has_scope(Scope.USERS_READ)


def test_the_token_command_reads_scopes_as_the_gateway_does():
    """``lms-api token --scope`` refuses a scope holding another space, rather than splitting it into two."""
    with pytest.raises(argparse.ArgumentTypeError, match="unknown scope"):
        cli._scopes("courses:read\u2003admin")
    assert cli._scopes("courses:read  cache:refresh") == ["courses:read", "cache:refresh"]


def test_admin_implies_cache_refresh():
    verifier = TokenVerifier(SECRET, ["HS256"])

    assert verifier.verify(verifier.mint("ada", ["admin"])).has_scope(Scope.CACHE_REFRESH)
    assert not verifier.verify(verifier.mint("bob", ["courses:read"])).has_scope(Scope.CACHE_REFRESH)


def test_an_expiry_past_a_doubles_range_is_remembered_for_a_minute_not_a_crash():
    verifier, _, clock, checked = remembering_verifier(ttl_s=30)
    token = jwt.encode({"sub": "ada", "exp": 10**400}, SECRET, algorithm="HS256")

    verifier.verify(token)
    clock.now += REMEMBER_VERIFIED_S - 1
    verifier.verify(token)
    clock.now += 1
    verifier.verify(token)

    assert len(checked) == 2
