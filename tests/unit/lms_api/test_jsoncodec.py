"""JSON in and out: orjson, and the standard library where orjson refuses what a Moodle answer may hold."""

import json

import pytest

from lms_api.jsoncodec import dumps, loads


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"sitename":"\xc3\x89cole","userid":3}', {"sitename": "École", "userid": 3}),
        (b'\xef\xbb\xbf{"userid":3}', {"userid": 3}),  # a byte order mark, from a plugin file saved with one
        (b'{"name":"\\ud800"}', {"name": "\ud800"}),  # a lone surrogate escape: valid JSON text
    ],
)
def test_what_json_allows_is_read(raw, expected):
    assert loads(raw) == expected


def test_an_integer_past_64_bits_is_read_as_a_number_near_it():
    # PHP has no such integers, so Moodle sends none; orjson reads one as a float rather than refuse it.
    assert loads(b'{"big":123456789012345678901234567890}')["big"] == pytest.approx(1.2345678901234568e29)


@pytest.mark.parametrize("raw", [b"<html>Error</html>", b'{"a":', b'{"a":"\xe9"}', b""])
def test_what_is_not_json_is_a_value_error(raw):
    with pytest.raises(ValueError):
        loads(raw)


def test_output_is_compact_with_non_ascii_as_it_is():
    assert (
        dumps({"ok": True, "data": {"name": "École", "ids": [1, 2]}})
        == '{"ok":true,"data":{"name":"École","ids":[1,2]}}'
    )


@pytest.mark.parametrize("value", [{"big": 2**70}, {1: "one"}, {"text": 'é\n"\\'}])
def test_what_orjson_refuses_to_write_is_written_as_the_standard_library_does(value):
    assert json.loads(dumps(value)) == json.loads(json.dumps(value))
