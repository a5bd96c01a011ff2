"""The public scheme and host of absolute URLs (``Location``): PUBLIC_URL, else a trusted proxy's view, else the
address the gateway listens on; never the request's own ``Host``, which any client may write."""

import itertools

import pytest

from tests.conftest import mint

WRITE = mint("courses:write")
_numbers = itertools.count(1)

PROXY = {"REMOTE_ADDR": "10.0.0.5"}
STRANGER = {"REMOTE_ADDR": "203.0.113.9"}
LISTENING = {"SERVER_NAME": "127.0.0.1", "SERVER_PORT": "6543"}


def created_location(gateway, headers=None, environ=None):
    body = {"fullname": "Located", "shortname": f"LOC{next(_numbers)}-{id(gateway)}", "categoryid": 1}
    response = gateway.app.post_json(
        "/api/moodle/courses",
        body,
        headers={"Authorization": f"Bearer {WRITE}", **(headers or {})},
        extra_environ={**LISTENING, **(environ or {})},
    )
    assert response.status_int == 201, response.text
    return response.headers["Location"], response.json["data"]["id"]


def test_an_untrusted_host_never_reaches_location(make_gateway):
    gateway = make_gateway()

    location, course_id = created_location(
        gateway,
        {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        STRANGER,
    )

    assert location == f"http://127.0.0.1:6543/api/moodle/courses/{course_id}"


def test_a_trusted_proxy_gives_the_scheme_and_host_it_saw(make_gateway):
    gateway = make_gateway(TRUSTED_PROXIES="10.0.0.0/8")

    location, course_id = created_location(
        gateway, {"Host": "10.0.0.9:6543", "X-Forwarded-Host": "api.example.edu", "X-Forwarded-Proto": "https"}, PROXY
    )
    spoofed, _ = created_location(gateway, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}, STRANGER)

    assert location == f"https://api.example.edu/api/moodle/courses/{course_id}"
    assert spoofed.startswith("http://127.0.0.1:6543/")


@pytest.mark.parametrize(
    ("forwarded_host", "forwarded_proto", "origin"),
    [
        ("evil.example/path", "https", "https://127.0.0.1:6543"),
        ("a b", "https", "https://127.0.0.1:6543"),
        ("evil.example@x", "", "http://127.0.0.1:6543"),
        ("api.example.edu", "javascript", "http://api.example.edu"),
        ("", "", "http://127.0.0.1:6543"),
    ],
)
def test_a_trusted_proxy_header_that_is_not_a_host_or_scheme_is_not_used(
    make_gateway, forwarded_host, forwarded_proto, origin
):
    gateway = make_gateway(TRUSTED_PROXIES="10.0.0.0/8")

    location, course_id = created_location(
        gateway, {"X-Forwarded-Host": forwarded_host, "X-Forwarded-Proto": forwarded_proto}, PROXY
    )

    assert location == f"{origin}/api/moodle/courses/{course_id}"


def test_the_nearest_proxy_wins_when_several_wrote_the_header(make_gateway):
    gateway = make_gateway(TRUSTED_PROXIES="10.0.0.0/8")

    location, course_id = created_location(
        gateway, {"X-Forwarded-Host": "evil.example, api.example.edu", "X-Forwarded-Proto": "http, https"}, PROXY
    )

    assert location == f"https://api.example.edu/api/moodle/courses/{course_id}"


def test_public_url_beats_every_header(make_gateway):
    gateway = make_gateway(PUBLIC_URL="https://lms-api.example.edu:8443", TRUSTED_PROXIES="10.0.0.0/8")

    location, course_id = created_location(
        gateway, {"Host": "evil.example", "X-Forwarded-Host": "proxy.example", "X-Forwarded-Proto": "http"}, PROXY
    )

    assert location == f"https://lms-api.example.edu:8443/api/moodle/courses/{course_id}"


def test_an_ipv6_listening_address_is_bracketed(make_gateway):
    gateway = make_gateway()

    location, course_id = created_location(gateway, environ={"SERVER_NAME": "::1", "SERVER_PORT": "80"})

    assert location == f"http://[::1]/api/moodle/courses/{course_id}"
