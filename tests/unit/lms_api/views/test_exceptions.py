"""The exception view of any other HTTP error Pyramid raises: the table's member when its reason phrase names one."""

import json

import pytest
from pyramid import testing
from pyramid.httpexceptions import HTTPConflict, HTTPMethodNotAllowed, HTTPUnsupportedMediaType

from lms_api.errors import ErrorCode
from lms_api.views.exceptions import http_error


def answered(error):
    request = testing.DummyRequest()
    request.id = "r1"
    response = http_error(error, request)
    return request.api_error, response.status_int, json.loads(response.body)["error"]["code"]


@pytest.mark.parametrize(
    ("error", "member"),
    [
        (HTTPMethodNotAllowed(), ErrorCode.METHOD_NOT_ALLOWED),
        (HTTPUnsupportedMediaType(), ErrorCode.UNSUPPORTED_MEDIA_TYPE),
    ],
)
def test_an_http_error_whose_reason_phrase_the_table_knows_is_answered_with_its_member(error, member):
    api_error, status, code = answered(error)

    assert api_error.code is member  # audit's outcome and metrics read the member, not a string equal to it
    assert (status, code) == (member.status, member.value)


def test_an_http_error_the_table_does_not_know_keeps_its_status_and_reason_phrase():
    api_error, status, code = answered(HTTPConflict())

    assert not isinstance(api_error.code, ErrorCode)
    assert (status, code) == (409, "conflict")
