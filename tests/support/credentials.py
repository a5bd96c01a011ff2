"""What a caller presents: tokens signed with the tests' secret, and self-signed TLS certificates."""

import datetime
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lms_api.security import Scope

JWT_TEST_SECRET = "test-secret-0123456789-abcdefghij-KLMNOPQRST-0123456789-abcdefghijklmn"
# Every scope a caller of the API may hold; refreshing the cache, the admin's and Moodle's webhook's are not a caller's.
ALL_SCOPES = " ".join(
    scope.value for scope in Scope if scope not in (Scope.ADMIN, Scope.CACHE_REFRESH, Scope.MOODLE_EVENTS)
)


def mint(scope=ALL_SCOPES, sub="user-1", secret=JWT_TEST_SECRET, algorithm="HS256", ttl=3600, **claims):
    """A caller token; its hour outlasts a test run, since many are minted when a test module is imported."""
    now = int(time.time())
    payload = {"sub": sub, "scope": scope, "iat": now, "exp": now + ttl, **claims}
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def self_signed_certificate(folder, name):
    """A self-signed certificate for the host ``name`` and its key, as ``<name>.pem`` and ``<name>.key`` in
    ``folder``; answers both paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate_path, key_path
