"""Token minting and verification, without an app."""

import time

import pytest

from lms_api.security import REMEMBER_VERIFIED_S, InvalidToken, TokenVerifier

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
