import pytest

from lms_api.errors import ApiError
from lms_api.moodle.functions import MoodleFunction
from lms_api.schemas.files import UploadedFile
from tests.unit.lms_api.views.support import answering, view_answer

BOUNDARY = "b0und4ry"
UPLOAD, ATTACH = "api.moodle.files.upload", "api.moodle.files.attach"


def multipart(*parts):
    body = b"".join(
        f"--{BOUNDARY}\r\n".encode() + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode()


def upload_request(make_request, body):
    return make_request(
        "/api/moodle/files/upload",
        "POST",
        body=body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        route=UPLOAD,
    )


def test_an_upload_streams_every_file_part_to_upload_php(make_request, moodle):
    moodle.upload.return_value = [
        {"filename": "a.txt", "filepath": "/", "filesize": 5, "itemid": 77, "source": "O:8:..."},
        {"filename": "b.txt", "filepath": "/", "filesize": 3, "itemid": 77},
    ]
    body = multipart(
        (b'Content-Disposition: form-data; name="file"; filename="C:\\\\Users\\\\ada\\\\a.txt"', b"hello"),
        (b'Content-Disposition: form-data; name="file"; filename="b.txt"', b"abc"),
    )
    request = upload_request(make_request, body)

    data = view_answer(request)
    files, itemid = moodle.upload.call_args.args
    contents = [file.stream.seek(0) or file.stream.read() for file in files]
    request._process_finished_callbacks()  # as the router does: the spooled files are closed

    assert data["itemid"] == 77 and [file["filename"] for file in data["files"]] == ["a.txt", "b.txt"]
    assert "source" not in data["files"][0]
    assert all(type(file) is UploadedFile for file in files)  # the form's own type, not the client's
    assert [file.filename for file in files] == ["a.txt", "b.txt"] and itemid == 0
    assert contents == [b"hello", b"abc"] and files[0].content_type == "application/octet-stream"
    assert request.answered.status_int == 201
    assert request.audit_targets == {"filenames": ["a.txt", "b.txt"], "itemid": 77}
    assert request.draft_owners.owner(77) == "ada"


def test_an_upload_into_an_item_the_caller_never_got_is_refused_before_moodle(make_request, moodle):
    body = multipart(
        (b'Content-Disposition: form-data; name="file"; filename="a.txt"', b"hello"),
        (b'Content-Disposition: form-data; name="itemid"', b"77"),
    )
    request = upload_request(make_request, body)

    with pytest.raises(ApiError) as refused:
        view_answer(request)
    request._process_finished_callbacks()

    assert (refused.value.code, refused.value.status) == ("draftnotfound", 404)
    moodle.upload.assert_not_called()


def test_attach_calls_the_attach_function(make_request, moodle):
    function = MoodleFunction.ATTACH_FILE  # the client sends it by the name MOODLE_ATTACH_FUNCTION gives
    answering(moodle, **{function.value: {"id": 12}})
    make_request().draft_owners.remember(77, "ada")
    body = {"courseid": 2, "draftitemid": 77, "name": "Slides", "section": 1}
    request = make_request("/api/moodle/files/attach", "POST", json_body=body, route=ATTACH)

    data = view_answer(request)

    assert data == {"cmid": 12, "courseid": 2, "section": 1, "name": "Slides", "visible": True}
    moodle.call.assert_called_once_with(
        function, {"courseid": 2, "sectionnum": 1, "itemid": 77, "displayname": "Slides", "visible": "true"}
    )
    assert request.answered.status_int == 201


@pytest.mark.parametrize("owner", ["bo", None], ids=["another-callers", "never-issued"])
def test_attach_of_a_draft_the_caller_did_not_upload_is_refused_before_moodle(
    make_request, moodle, pyramid_config, owner
):
    if owner:
        make_request().draft_owners.remember(77, owner)
    body = {"courseid": 2, "draftitemid": 77, "name": "Slides"}

    with pytest.raises(ApiError) as refused:
        view_answer(make_request("/api/moodle/files/attach", "POST", json_body=body, route=ATTACH))

    assert (refused.value.code, refused.value.status) == ("draftnotfound", 404)
    moodle.call.assert_not_called()
