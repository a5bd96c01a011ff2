"""Token minting and verification, without an app."""

import pytest

from lms_api.security import TokenVerifier

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
