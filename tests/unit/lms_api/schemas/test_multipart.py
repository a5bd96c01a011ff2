"""The streaming multipart reader: what it takes as cgi.FieldStorage did, where it stops, and what it closes."""

import tempfile

import pytest
from marshmallow import ValidationError, fields
from pyramid.request import Request

from lms_api.errors import ApiError
from lms_api.schemas.base import MAX_PARTS, FilePart, RequestSchema, load_multipart

BOUNDARY = "b0und4ry"


class Form(RequestSchema):
    file = fields.Raw()
    note = fields.String()


def part(headers, content):
    return b"--" + BOUNDARY.encode() + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"


FILE = part(b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain', b"hello")
NOTE = part(b'Content-Disposition: form-data; name="note"', b"caf\xc3\xa9")
CLOSE = b"--" + BOUNDARY.encode() + b"--\r\n"


def spooled_files(monkeypatch):
    """The temporary files the multipart reader makes from now on, in the order made."""
    opened = []

    class Tracked(tempfile.SpooledTemporaryFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr("lms_api.schemas.base.SpooledTemporaryFile", Tracked)
    return opened


def request_for(body, content_type=f"multipart/form-data; boundary={BOUNDARY}"):
    return Request.blank("/api/moodle/files/upload", method="POST", body=body, content_type=content_type)


def load(body, max_files=2, **kwargs):
    request = request_for(body, **kwargs)
    try:
        return load_multipart(request, Form(), max_files=max_files), request
    finally:
        request._process_finished_callbacks()


def refusal(body, max_files=2):
    with pytest.raises(ApiError) as refused:
        load(body, max_files)
    assert refused.value.code == "invalidmultipart"
    return str(refused.value)


def test_files_and_text_fields_are_read():
    request = request_for(FILE + NOTE + CLOSE)

    form = load_multipart(request, Form(), max_files=1)

    upload = form["file"]
    assert isinstance(upload, FilePart)
    assert (upload.filename, upload.type, form["note"]) == ("a.txt", "text/plain", "café")
    upload.file.seek(0)
    assert upload.file.read() == b"hello"
    request._process_finished_callbacks()
    assert upload.file.closed


@pytest.mark.parametrize(
    "body",
    [
        b"a preamble a client may send\r\n" + FILE + CLOSE,
        FILE + CLOSE + b"an epilogue " * 20_000,  # arrives in later chunks than the close delimiter
        FILE.replace(b"Content-Type: text/plain", b"Content-Type:\r\n text/plain") + CLOSE,  # a folded header
    ],
    ids=["preamble", "long-epilogue", "folded-header"],
)
def test_what_cgi_fieldstorage_read_is_read(body):
    form, _ = load(body)

    assert form["file"].filename == "a.txt"


def test_the_files_read_before_a_refusal_are_closed_when_the_request_finishes(monkeypatch):
    opened = spooled_files(monkeypatch)
    request = request_for(FILE + FILE + FILE + CLOSE)

    with pytest.raises(ApiError):
        load_multipart(request, Form(), max_files=2)
    request._process_finished_callbacks()

    assert len(opened) == 2
    assert all(file.closed for file in opened)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (FILE, "does not end with its closing boundary"),
        (FILE[:-10], "does not end with its closing boundary"),
        (part(b"Content-Type: text/plain", b"x") + CLOSE, "Content-Disposition"),
        (part(b'Content-Disposition: form-data; name="\xff"', b"x") + CLOSE, "cannot be read"),
        (FILE + FILE + FILE + CLOSE, "more than 2 files"),
        (b"".join(part(f'Content-Disposition: form-data; name="n{n}"'.encode(), b"x") for n in range(100)) + CLOSE,
         f"more than {MAX_PARTS} parts"),
    ],
    ids=["no-close", "cut-short", "no-disposition", "header-not-utf8", "too-many-files", "too-many-parts"],
)  # fmt: skip
def test_unreadable_bodies_are_refused_saying_why(body, says):
    assert says in refusal(body)


def test_a_text_field_that_is_not_utf8_names_the_field():
    with pytest.raises(ValidationError) as refused:
        load(part(b'Content-Disposition: form-data; name="note"', b"\xff") + CLOSE)

    assert refused.value.messages == {"note": ["Must be UTF-8 text"]}


@pytest.mark.parametrize(
    ("content_type", "says"),
    [
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=", "cannot be read from"),
        ("multipart/form-data; boundary=" + "x" * 71, "no boundary"),
        ('multipart/form-data; boundary="a\\"b"; x', "cannot be read from 'x'"),
        ("multipart/form-data; Boundary=a; BOUNDARY=b", "gives boundary twice"),
        ("multipart/form-data; boundary=a; charset=iso-8859-1", "charset=iso-8859-1"),
    ],
)
def test_content_type_parameters_are_read_strictly(content_type, says):
    with pytest.raises(ApiError) as refused:
        load(FILE + CLOSE, content_type=content_type)

    assert refused.value.code == "invalidmultipart"
    assert says in str(refused.value)


def test_a_quoted_boundary_is_unquoted():
    body = (FILE + CLOSE).replace(BOUNDARY.encode(), b'a"b')

    form, _ = load(body, content_type='multipart/form-data; boundary="a\\"b"')

    assert form["file"].filename == "a.txt"


def test_another_media_type_is_a_415():
    with pytest.raises(ApiError) as refused:
        load(b"{}", content_type="application/json")

    assert (refused.value.code, refused.value.status) == ("unsupportedmediatype", 415)
