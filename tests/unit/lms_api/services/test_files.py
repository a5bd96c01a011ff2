"""The files service against a mocked Moodle."""

from __future__ import annotations

import io
import json

import pytest
import responses

from lms_api.drafts import LocalDraftOwners
from lms_api.moodle.functions import MoodleFunction
from lms_api.services import files
from tests.unit.mocked_moodle import (
    ROUTE_FUNCTIONS,
    TOKEN,
    UPLOAD_URL,
    UploadFile,
    add,
    api_raised,
    assert_token_absent,
    prime,
    raised,
    refused,
    reset,
    sent,
)


def draft_entry(filename, itemid=549014061, size=26):
    return {"component": "user", "contextid": 5, "userid": "2", "filearea": "draft", "filename": filename,
            "filepath": "/", "itemid": itemid, "license": "unknown", "author": "Admin User",
            "source": 'O:8:"stdClass":1:{s:6:"source";s:8:"hello.py";}', "filesize": size}  # fmt: skip


CALLER = "ada"
MAX_MB = 1


def upload_file(name="hello.py", content=b"print('hello from lms_api')"):
    return UploadFile(name, io.BytesIO(content), "text/x-python")


def upload(moodle, uploads, itemid=0, owners=None):
    """The files service's upload by CALLER, held to MAX_MB."""
    owners = LocalDraftOwners() if owners is None else owners
    return files.upload(moodle, uploads, itemid, max_mb=MAX_MB, owners=owners, sub=CALLER)


def test_upload_streams_a_multipart_body_with_the_token_in_it(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("hello.py")], content_type="text/plain")

    owners = LocalDraftOwners()
    answer = upload(moodle, [upload_file()], owners=owners)

    request = rsps.calls[-1].request
    assert request.url == UPLOAD_URL
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    body = request.body.read() if hasattr(request.body, "read") else request.body
    body = body if isinstance(body, bytes) else body.encode()
    assert b'name="token"\r\n\r\n' + TOKEN.encode() in body
    assert b'name="itemid"\r\n\r\n0\r\n' in body
    assert b'filename="hello.py"' in body and b"print('hello from lms_api')" in body
    assert answer["itemid"] == 549014061 and owners.owner(549014061) == CALLER
    assert answer["files"][0]["filename"] == "hello.py"


def test_upload_errors_in_upload_phps_own_shape_are_mapped(moodle, rsps):
    bad_token = {"error": "Invalid token - token not found", "errorcode": "invalidtoken", "stacktrace": None,
                 "debuginfo": None, "reproductionlink": None}  # fmt: skip
    rsps.add(responses.POST, UPLOAD_URL, json=bad_token)

    error = raised(upload, moodle, [upload_file()])

    assert (error.status, error.code) == (502, "invalidtoken")
    assert "MOODLE_TOKEN" in error.message
    assert_token_absent(error)


@pytest.mark.parametrize(("errortype", "status"), [("fileoversized", 413), ("filenameexist", 409), ("virusfound", 502)])
def test_a_refused_file_is_an_error_that_never_shows_moodles_temp_path(moodle, rsps, errortype, status):
    refused_entry = {"filename": "big.bin", "errortype": errortype, "error": "[[maxbytes]]",
                     "filepath": "/var/moodledata/temp/phpAbC123", "size": 99}  # fmt: skip
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("hello.py"), refused_entry])

    owners = LocalDraftOwners()
    error = raised(upload, moodle, [upload_file(), upload_file("big.bin")], 0, owners)

    assert owners.owner(549014061) == CALLER  # the file stored stays stored: its item is its caller's to attach
    assert error.status == status
    assert error.details["stored"] == ["hello.py"] and error.details["itemid"] == 549014061
    assert "phpAbC123" not in json.dumps(error.details) + error.message


@pytest.mark.parametrize("errortype", ["cannot write /var/moodledata/temp/x", "<b>quota</b>", "a" * 65, TOKEN])
def test_a_refused_files_errortype_that_is_not_a_moodle_code_is_left_out(moodle, rsps, errortype):
    refused_entry = {"filename": "x.bin", "errortype": errortype, "error": "x"}
    rsps.add(responses.POST, UPLOAD_URL, json=[refused_entry])

    error = raised(upload, moodle, [upload_file("x.bin")])

    assert (error.status, error.code, error.message) == (502, "uploadrefused", "Moodle refused x.bin")


def test_a_refused_files_errortype_of_moodles_syntax_is_named(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, json=[{"filename": "x.bin", "errortype": "virusfound", "error": "x"}])

    error = raised(upload, moodle, [upload_file("x.bin")])

    assert (error.status, error.code, error.message) == (502, "uploadrefused", "Moodle refused x.bin (virusfound)")


@pytest.mark.parametrize("answer", [[], {"files": []}, "ok"])
def test_an_upload_answer_without_the_files_is_a_502(moodle, rsps, answer):
    rsps.add(responses.POST, UPLOAD_URL, json=answer)

    assert raised(upload, moodle, [upload_file()]).status == 502


@pytest.mark.parametrize("itemid", [None, "7", True])
def test_an_upload_answer_naming_no_draft_item_is_a_502(moodle, rsps, itemid):
    rsps.add(responses.POST, UPLOAD_URL, json=[{**draft_entry("hello.py"), "itemid": itemid}])

    error = raised(upload, moodle, [upload_file()])

    assert (error.status, error.code) == (502, "badresponse")


def test_an_upload_is_not_sent_twice_after_the_connection_dropped(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, body=reset())

    error = raised(upload, moodle, [upload_file()])

    assert error.details["outcome"] == "unknown"
    assert len([c for c in rsps.calls if c.request.url == UPLOAD_URL]) == 1


def test_an_upload_that_never_connected_is_retried_from_the_start_of_the_file(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, body=refused())
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("hello.py")])

    assert upload(moodle, [upload_file()])["files"][0]["filename"] == "hello.py"
    body = rsps.calls[-1].request.body
    body = body.read() if hasattr(body, "read") else body
    assert b"print('hello from lms_api')" in body


def test_the_size_limit_counts_all_files_before_anything_is_sent(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("a.bin"), draft_entry("b.bin")])
    at_the_limit = [upload_file("a.bin", b"x" * (MAX_MB * 1024 * 1024 - 1)), upload_file("b.bin", b"y")]
    assert upload(moodle, at_the_limit)["itemid"] == 549014061
    calls_before = len(rsps.calls)

    error = api_raised(
        upload, moodle, [upload_file("a.bin", b"x" * (MAX_MB * 1024 * 1024)), upload_file("b.bin", b"y")]
    )

    assert (error.status, error.code, error.details) == (413, "filetoolarge", {"max_bytes": MAX_MB * 1024 * 1024})
    assert len(rsps.calls) == calls_before


def test_files_are_added_to_a_draft_item_the_caller_uploaded(moodle, rsps):
    owners = LocalDraftOwners()
    owners.remember(549014061, CALLER)
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("more.py")])

    assert upload(moodle, [upload_file("more.py")], 549014061, owners)["itemid"] == 549014061
    body = rsps.calls[-1].request.body
    body = body.read() if hasattr(body, "read") else body
    assert b'name="itemid"\r\n\r\n549014061\r\n' in body


@pytest.mark.parametrize("owner", ["grace", None])  # another caller's item, and one the gateway never issued
def test_adding_to_a_draft_item_the_caller_did_not_upload_is_a_404_before_anything_is_sent(moodle, rsps, owner):
    owners = LocalDraftOwners()
    if owner is not None:
        owners.remember(549014061, owner)
    calls_before = len(rsps.calls)

    error = api_raised(upload, moodle, [upload_file()], 549014061, owners)

    assert (error.status, error.code, error.details) == (404, "draftnotfound", {"draftitemid": 549014061})
    assert len(rsps.calls) == calls_before
    assert owners.owner(549014061) == owner


ATTACH_FIELDS = {"courseid": 2, "draftitemid": 549014061, "name": "Slides", "section": 1, "visible": False}


def attach(moodle, fields=ATTACH_FIELDS, owner=CALLER):
    """The files service's attach by CALLER, of a draft item ``owner`` uploaded."""
    owners = LocalDraftOwners()
    owners.remember(fields["draftitemid"], owner)
    return files.attach(moodle, fields, owners=owners, sub=CALLER)


def test_attach_calls_the_plugin_with_its_parameter_names(moodle, rsps):
    add(rsps, MoodleFunction.ATTACH_FILE, json={"message": "Successful", "id": "17"})

    attached = attach(moodle)

    form = sent(rsps)
    assert (form["courseid"], form["sectionnum"], form["itemid"], form["displayname"], form["visible"]) == (
        "2", "1", "549014061", "Slides", "false")  # fmt: skip
    assert attached == {"cmid": 17, "courseid": 2, "section": 1, "name": "Slides", "visible": False}


def test_attach_without_the_plugin_is_a_501_naming_it(make_client, rsps):
    moodle = make_client()
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != MoodleFunction.ATTACH_FILE])

    error = raised(attach, moodle)

    assert (error.status, error.code) == (501, "functionnotavailable")
    assert files.SYNC_SERVICE_PLUGIN in error.message and "MOODLE_ATTACH_FUNCTION" in error.message
    assert error.details == {"function": MoodleFunction.ATTACH_FILE}


def test_attach_with_a_function_of_the_sites_own_is_a_501_naming_the_setting(make_client, rsps):
    moodle = make_client(attach_function="local_other_attach")
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != MoodleFunction.ATTACH_FILE])

    other = raised(attach, moodle)

    assert "MOODLE_ATTACH_FUNCTION" in other.message and files.SYNC_SERVICE_PLUGIN not in other.message
    assert other.details == {"function": "local_other_attach"}


def test_a_missing_record_on_attach_makes_the_function_list_be_read_again(moodle, rsps):
    missing = {"exception": "dml_missing_record_exception", "errorcode": "invalidrecordunknown", "message": "x"}
    add(rsps, MoodleFunction.ATTACH_FILE, json=missing)

    assert raised(attach, moodle).status == 404
    add(rsps, "core_webservice_get_site_info", json={"functions": []})
    assert raised(attach, moodle).status == 501


@pytest.mark.parametrize(
    "answer",
    [
        {"message": "Successful"},
        {"id": "x"},
        {"id": None},
        {"id": True},
        {"id": "²"},
        {"id": "\N{FULLWIDTH DIGIT ONE}\N{FULLWIDTH DIGIT SEVEN}"},
        {"id": "9" * 5000},
    ],
)
def test_attach_without_a_module_id_is_a_502(moodle, rsps, answer):
    add(rsps, MoodleFunction.ATTACH_FILE, json=answer)

    error = raised(attach, moodle)

    assert (error.status, error.code, error.details) == (502, "badresponse", {"setting": "MOODLE_ATTACH_FUNCTION"})


def test_attach_of_a_draft_item_of_another_caller_is_a_404_before_moodle_is_asked(moodle, rsps):
    calls_before = len(rsps.calls)

    error = api_raised(attach, moodle, ATTACH_FIELDS, "grace")

    assert (error.status, error.code, error.details) == (404, "draftnotfound", {"draftitemid": 549014061})
    assert len(rsps.calls) == calls_before
