"""The public scheme and host of the URLs the gateway writes (``Location``): PUBLIC_URL, else a trusted proxy's
view; else the path alone, which a browser resolves against the address it asked for. Never the request's own
``Host``, which any client may write."""

import itertools

import pytest

from tests.support.credentials import mint

WRITE = mint("courses:write")
_numbers = itertools.count(1)

PROXY = {"REMOTE_ADDR": "10.0.0.5"}
STRANGER = {"REMOTE_ADDR": "203.0.113.9"}


def created_location(gateway, headers, environ):
    body = {"fullname": "Located", "shortname": f"LOC{next(_numbers)}-{id(gateway)}", "categoryid": 1}
    response = gateway.post("/api/moodle/courses", body, WRITE, headers=dict(headers), extra_environ=environ)
    assert response.status_int == 201, response.text
    return response.headers["Location"], response.json["data"]["id"]


def test_an_untrusted_host_never_reaches_location_which_is_then_a_path(make_gateway):
    gateway = make_gateway(TRUSTED_PROXIES="10.0.0.0/8")

    location, course_id = created_location(
        gateway,
        {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        STRANGER,
    )

    assert location == f"/api/moodle/courses/{course_id}"


def test_a_trusted_proxy_gives_the_scheme_and_host_it_saw(make_gateway):
    gateway = make_gateway(TRUSTED_PROXIES="10.0.0.0/8")

    location, course_id = created_location(
        gateway, {"Host": "10.0.0.9:6543", "X-Forwarded-Host": "api.example.edu", "X-Forwarded-Proto": "https"}, PROXY
    )

    assert location == f"https://api.example.edu/api/moodle/courses/{course_id}"


@pytest.mark.parametrize(
    ("forwarded_host", "forwarded_proto", "origin"),
    [
        ("evil.example/path", "https", ""),
        ("a b", "https", ""),
        ("evil.example@x", "", ""),
        ("", "https", ""),
        ("api.example.edu", "javascript", "http://api.example.edu"),
        ("api.example.edu:99999", "https", ""),  # no URL has a port past 65535
        ("[::1]:8443", "https", "https://[::1]:8443"),
        ("api.example.edu", "HTTPS", "https://api.example.edu"),  # a scheme is read in any case
    ],
)
def test_a_trusted_proxy_header_is_used_only_when_it_is_a_host_or_a_scheme(
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
