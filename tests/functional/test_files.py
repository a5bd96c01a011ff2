"""File routes: upload to the draft area through upload.php, then attach the draft item to a course."""

import pytest

from lms_api.moodle.functions import MoodleFunction
from lms_api.schemas.files import DRAFT_AREA_ONLY, NO_INTRO
from tests.support.credentials import mint
from tests.support.sandbox import queue_fault, sandbox_calls

TOKEN = mint("files:write")
UPLOAD = "/api/moodle/files/upload"
ATTACH = "/api/moodle/files/attach"
HELLO = ("file", "hello.py", b"print('hello from lms_api')\n")
ATTACH_FUNCTION = MoodleFunction.ATTACH_FILE.value  # the development settings' MOODLE_ATTACH_FUNCTION


def course_module(sandbox, cmid):
    with sandbox.site.lock:
        module = sandbox.site.state.course_modules[cmid]
    return {"course": module.course, "name": module.name, "visible": bool(module.visible), "files": module.files}


def uploads(sandbox):
    return sandbox_calls(sandbox).get("upload.php", 0)


def test_upload_answers_the_draft_item_and_its_files(gateway):
    response = gateway.upload(UPLOAD, [HELLO], TOKEN)

    assert response.status_int == 201, response.text
    data = response.json["data"]
    assert isinstance(data["itemid"], int) and data["itemid"] > 0
    stored = data["files"][0]
    assert (stored["filename"], stored["filesize"], stored["userid"], stored["filearea"]) == (
        "hello.py", 28, 2, "draft")  # fmt: skip
    assert stored["itemid"] == data["itemid"]
    assert "source" not in stored


def test_several_files_share_one_draft_item_and_itemid_adds_to_it(gateway):
    first = gateway.upload(UPLOAD, [HELLO, ("file", "notes.txt", b"some notes")], TOKEN).json["data"]
    itemid = first["itemid"]

    more = gateway.upload(UPLOAD, [("file", "more.txt", b"more")], TOKEN, fields=[("itemid", str(itemid))])

    assert [f["filename"] for f in first["files"]] == ["hello.py", "notes.txt"]
    assert more.json["data"]["itemid"] == itemid


def test_the_same_name_twice_in_one_draft_item_is_a_409(gateway):
    itemid = gateway.upload(UPLOAD, [HELLO], TOKEN).json["data"]["itemid"]

    response = gateway.upload(UPLOAD, [HELLO], TOKEN, fields=[("itemid", str(itemid))])

    assert response.status_int == 409
    assert response.json["error"]["code"] == "filenameexist"
    assert "hello.py" in response.json["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value"), [("contextid", "5"), ("component", "mod_resource"), ("filearea", "content")]
)
def test_the_original_designs_place_fields_are_refused_saying_why_and_nothing_reaches_moodle(
    gateway, sandbox, field, value
):
    before = uploads(sandbox)

    response = gateway.upload(UPLOAD, [HELLO], TOKEN, fields=[(field, value)])

    assert response.status_int == 400
    assert response.json["error"]["code"] == "validationerror"
    assert response.json["error"]["details"]["fields"] == {field: [DRAFT_AREA_ONLY]}
    assert "draft area" in DRAFT_AREA_ONLY
    assert uploads(sandbox) == before


def test_a_file_over_moodle_max_upload_mb_is_a_413_and_nothing_reaches_moodle(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_MAX_UPLOAD_MB="1")
    before = uploads(sandbox)

    response = gateway.upload(UPLOAD, [("file", "big.bin", b"x" * (1024 * 1024 + 1))], TOKEN)

    assert response.status_int == 413
    assert response.json["error"]["code"] == "filetoolarge"
    assert uploads(sandbox) == before


def test_a_declared_body_far_over_the_limit_is_refused_before_it_is_read(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_MAX_UPLOAD_MB="1")

    response = gateway.upload(UPLOAD, [("file", "huge.bin", b"x" * (3 * 1024 * 1024))], TOKEN)

    assert response.status_int == 413


def test_a_file_over_the_sites_own_limit_is_a_413(make_sandbox, make_gateway):
    small = make_sandbox(max_bytes=10)
    gateway = make_gateway(base_url=small.url, token=small.site.token)

    response = gateway.upload(UPLOAD, [HELLO], TOKEN)

    assert response.status_int == 413
    assert response.json["error"]["code"] == "fileoversized"
    assert "temp" not in response.text  # Moodle's record of a refused file may hold its temp path


@pytest.mark.parametrize(
    ("files", "fields", "field"),
    [
        ([], [("itemid", "0")], "file"),
        ([], [("file", "just text")], "file"),
        ([HELLO], [("itemid", "abc")], "itemid"),
        ([HELLO], [("itemid", "-1")], "itemid"),
        ([HELLO], [("folder", "x")], "folder"),
        ([("attachment", "a.txt", b"a")], [], "attachment"),
    ],
)
def test_bad_forms_are_400s_before_moodle_is_called(gateway, sandbox, files, fields, field):
    before = uploads(sandbox)

    response = gateway.upload(UPLOAD, files, TOKEN, fields=fields)

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]
    assert uploads(sandbox) == before


def test_a_json_body_is_a_415(gateway):
    response = gateway.post(UPLOAD, {"file": "aGVsbG8="}, TOKEN)

    assert response.status_int == 415
    assert response.json["error"]["code"] == "unsupportedmediatype"


def test_moodle_refusing_the_gateways_token_on_upload_is_a_502(make_gateway, sandbox):
    gateway = make_gateway(token="not-the-sandbox-token")

    response = gateway.upload(UPLOAD, [HELLO], TOKEN)

    assert response.status_int == 502
    assert response.json["error"]["code"] == "invalidtoken"


def test_an_upload_is_not_retried_after_the_connection_dropped(gateway, sandbox):
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))
    queue_fault(sandbox, kind="reset", function="upload.php", times=2)
    before = uploads(sandbox)

    response = gateway.upload(UPLOAD, [HELLO], TOKEN)

    assert response.status_int == 504
    assert response.json["error"]["details"]["outcome"] == "unknown"
    assert uploads(sandbox) == before + 1


def test_upload_needs_files_write(gateway):
    assert gateway.upload(UPLOAD, [HELLO], mint("courses:write")).status_int == 403


# -- attach ----------------------------------------------------------------------------------------


def test_an_uploaded_file_is_attached_to_a_course(gateway, sandbox):
    itemid = gateway.upload(UPLOAD, [HELLO], TOKEN).json["data"]["itemid"]

    response = gateway.post(ATTACH, {"courseid": 2, "draftitemid": itemid, "name": "Hello script", "section": 1}, TOKEN)

    assert response.status_int == 201, response.text
    data = response.json["data"]
    assert data == {"cmid": data["cmid"], "courseid": 2, "section": 1, "name": "Hello script", "visible": True}
    module = course_module(sandbox, data["cmid"])
    assert (module["course"], module["name"], module["visible"]) == (2, "Hello script", True)
    assert [stored.filename for stored in module["files"]] == ["hello.py"]


def test_attach_hidden(gateway, sandbox):
    itemid = gateway.upload(UPLOAD, [HELLO], TOKEN).json["data"]["itemid"]
    body = {"courseid": 2, "draftitemid": itemid, "name": "Hidden", "visible": False}

    data = gateway.post(ATTACH, body, TOKEN).json["data"]

    assert course_module(sandbox, data["cmid"])["visible"] is False


@pytest.mark.parametrize("intro", ["A description", "", None])
def test_an_intro_is_refused_saying_the_attach_function_has_none_and_moodle_is_not_called(gateway, sandbox, intro):
    itemid = gateway.upload(UPLOAD, [HELLO], TOKEN).json["data"]["itemid"]
    before = sandbox_calls(sandbox).get(ATTACH_FUNCTION, 0)

    response = gateway.post(ATTACH, {"courseid": 2, "draftitemid": itemid, "name": "Notes", "intro": intro}, TOKEN)

    assert response.status_int == 400
    assert response.json["error"]["details"]["fields"] == {"intro": [NO_INTRO]}
    assert "no intro" in NO_INTRO
    assert sandbox_calls(sandbox).get(ATTACH_FUNCTION, 0) == before


def test_attach_to_a_missing_course_is_a_404(gateway):
    itemid = gateway.upload(UPLOAD, [HELLO], TOKEN).json["data"]["itemid"]

    response = gateway.post(ATTACH, {"courseid": 99999, "draftitemid": itemid, "name": "x"}, TOKEN)

    assert response.status_int == 404


def test_a_site_without_the_plugin_answers_501_saying_what_to_install(make_sandbox, make_gateway):
    from moodle_sandbox.site import FUNCTIONS

    without = make_sandbox(service_functions=[name for name in FUNCTIONS if not name.startswith("local_")])
    gateway = make_gateway(base_url=without.url, token=without.site.token)
    itemid = gateway.upload(UPLOAD, [HELLO], TOKEN).json["data"]["itemid"]

    response = gateway.post(ATTACH, {"courseid": 2, "draftitemid": itemid, "name": "x"}, TOKEN)

    assert response.status_int == 501
    error = response.json["error"]
    assert error["code"] == "functionnotavailable"
    assert "local_course_add_new_course_module_resource" in error["message"]
    assert "moodle-local_sync_service" in error["message"]
    assert sandbox_calls(without).get("local_course_add_new_course_module_resource", 0) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"draftitemid": 1, "name": "x"}, "courseid"),
        ({"courseid": 2, "name": "x"}, "draftitemid"),
        ({"courseid": 2, "draftitemid": 1}, "name"),
        ({"courseid": 2, "draftitemid": 1, "name": "  "}, "name"),
        ({"courseid": 2, "draftitemid": 1, "name": "x", "section": -1}, "section"),
        ({"courseid": 2, "draftitemid": 1, "name": "x", "visible": "no"}, "visible"),
        ({"courseid": 2, "draftitemid": 1, "name": "x", "contextid": 5}, "contextid"),
    ],
)
def test_bad_attach_bodies_are_400s(gateway, body, field):
    response = gateway.post(ATTACH, body, TOKEN)

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]


def test_a_multipart_body_without_a_boundary_is_a_400(gateway, sandbox):
    before = uploads(sandbox)

    response = gateway.app.post(
        UPLOAD,
        b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\nx\r\n",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "multipart/form-data"},
        expect_errors=True,
    )

    assert (response.status_int, response.json["error"]["code"]) == (400, "invalidmultipart")
    assert uploads(sandbox) == before


def test_a_service_without_file_uploads_is_a_403_saying_so(make_sandbox, make_gateway):
    closed = make_sandbox(upload_files=False)
    gateway = make_gateway(base_url=closed.url, token=closed.site.token)

    response = gateway.upload(UPLOAD, [HELLO], TOKEN)

    assert response.status_int == 403
    assert response.json["error"]["code"] == "accessexception"
