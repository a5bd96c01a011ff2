"""The sandbox's ``/webservice/upload.php`` over real HTTP, against PHP's file handling and a real Moodle 5.0."""

from __future__ import annotations

import re
import socket

import pytest
import requests

from moodle_sandbox.errors import MoodleException
from moodle_sandbox.php import php_json
from moodle_sandbox.phpform import PhpArray
from moodle_sandbox.server import SandboxServer, start_sandbox
from moodle_sandbox.site import SandboxSite
from moodle_sandbox.upload import UploadedFile, ajax_error, upload
from tests.moodle_sandbox.test_golden import golden_bytes, golden_json, recorded_content_type

TOKEN = "0123456789abcdef0123456789abcdef"
HELLO = b"print('hello from moodle')"  # 26 bytes, like the recorded hello.py

GOLDEN_UPLOAD_DRAFT = golden_bytes("upload_draft.json")
GOLDEN_BAD_TOKEN = golden_bytes("upload_error_bad_token.json")
GOLDEN_DEBUG_BAD_TOKEN = golden_bytes("debug_mode/upload_error_bad_token.json")
TEXT_PLAIN = "text/plain; charset=utf-8"
JSON_UTF8 = "application/json; charset=utf-8"


@pytest.fixture(scope="module")
def server():
    sandbox = start_sandbox(token=TOKEN)
    yield sandbox
    sandbox.stop()


@pytest.fixture
def small_server():
    """A site whose maximum upload size is 10 bytes."""
    sandbox = start_sandbox(token=TOKEN, max_bytes=10)
    yield sandbox
    sandbox.stop()


def send(server: SandboxServer, files=(), token: str | None = TOKEN, params=None, **fields) -> requests.Response:
    data = {"token": token, **fields} if token is not None else fields
    return requests.post(f"{server.url}/webservice/upload.php", params=params, data=data, files=list(files), timeout=10)


def calls(server: SandboxServer) -> dict[str, int]:
    response = requests.get(f"{server.url}/__sandbox__/calls", headers={"X-Sandbox-Token": TOKEN}, timeout=5)
    return response.json()["calls"]


def queue_fault(server: SandboxServer, **fault) -> None:
    response = requests.post(
        f"{server.url}/__sandbox__/faults", json=fault, headers={"X-Sandbox-Token": TOKEN}, timeout=5
    )
    assert response.status_code == 201


# --- The recorded Moodle ----------------------------------------------------------------------------------------------


def test_an_upload_answers_like_the_recorded_moodle(server):
    response = send(server, [("file_1", ("hello.py", HELLO))], filearea="draft", itemid="0")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == TEXT_PLAIN
    assert re.sub(rb'"itemid":\d+', b'"itemid":549014061', response.content) == GOLDEN_UPLOAD_DRAFT
    itemid = response.json()[0]["itemid"]
    assert 1 <= itemid <= 999999999
    with server.site.lock:
        assert [(draft.filepath, draft.filename, draft.filesize) for draft in server.site.state.drafts[itemid]] == [
            ("/", "hello.py", 26)
        ]


def test_a_bad_token_answers_like_the_recorded_moodle(server):
    response = send(server, [("file_1", ("hello.py", HELLO))], token="wrong")
    assert (response.status_code, response.headers["Content-Type"]) == (200, TEXT_PLAIN)
    assert response.content == GOLDEN_BAD_TOKEN


def test_a_bad_token_in_debug_mode_answers_like_the_recorded_moodle():
    site = SandboxSite(TOKEN, base_url="http://127.0.0.1:8088", debug=True)
    with pytest.raises(MoodleException) as caught:
        upload(site, PhpArray({"token": "wrong"}), {"file_1": UploadedFile("hello.py", 26)})
    assert php_json(ajax_error(site, caught.value)) == GOLDEN_DEBUG_BAD_TOKEN


def test_no_file_is_an_empty_list_like_the_recorded_moodle(server):
    response = send(server, filearea="draft")
    assert (response.content, response.headers["Content-Type"]) == (
        golden_bytes("upload_error_no_file.json"),
        JSON_UTF8,
    )


def test_two_files_share_one_new_draft_item_like_the_recorded_moodle(server):
    files = [("file_1", ("hello.py", HELLO)), ("file_2", ("notes.txt", b"notes for the lesson"))]
    response = send(server, files, filearea="draft", itemid="0")
    assert response.headers["Content-Type"] == recorded_content_type("upload_draft.json") == TEXT_PLAIN
    recorded = golden_json("upload_draft_two_files.json")
    answer = response.json()
    assert answer[0]["itemid"] == answer[1]["itemid"]
    assert [entry | {"itemid": 0} for entry in answer] == [entry | {"itemid": 0} for entry in recorded]


# --- Draft areas ------------------------------------------------------------------------------------------------------


def test_files_of_one_request_share_a_new_draft_item_and_can_be_added_to(server):
    first = send(server, [("file_1", ("a.txt", b"A" * 3)), ("file_2", ("b.txt", b"B" * 20))]).json()
    itemid = first[0]["itemid"]
    assert [(entry["filename"], entry["filesize"], entry["itemid"]) for entry in first] == [
        ("a.txt", 3, itemid),
        ("b.txt", 20, itemid),
    ]
    more = send(server, [("data", ("c.txt", b"C"))], itemid=str(itemid), filepath="/sub/").json()
    assert (more[0]["itemid"], more[0]["filepath"]) == (itemid, "/sub/")
    with server.site.lock:
        area = server.site.state.drafts[itemid]
        assert [(draft.filepath, draft.filename) for draft in area] == [
            ("/", "a.txt"),
            ("/", "b.txt"),
            ("/sub/", "c.txt"),
        ]


def test_a_taken_name_is_reported_in_the_list_and_the_others_are_stored(server):
    itemid = send(server, [("file_1", ("same.txt", b"one"))]).json()[0]["itemid"]
    answer = send(server, [("file_1", ("same.txt", b"two!")), ("file_2", ("other.txt", b"x"))], itemid=str(itemid))
    taken, other = answer.json()
    assert list(taken) == ["avscantime", "filename", "filepath", "size", "errortype", "error"]
    assert (taken["filename"], taken["size"], taken["errortype"]) == ("same.txt", 4, "filenameexist")
    assert taken["error"] == "File name already exists: same.txt"
    assert re.fullmatch(r"/tmp/php[A-Za-z0-9]{6}", taken["filepath"])  # noqa: S108 - PHP's temporary name
    assert other["filename"] == "other.txt"
    with server.site.lock:
        assert [draft.filesize for draft in server.site.state.drafts[itemid]] == [3, 1]


def test_a_file_over_the_sites_limit_is_reported_and_not_stored(small_server):
    answer = send(small_server, [("file_1", ("small.txt", b"12345")), ("file_2", ("big.txt", b"x" * 11))]).json()
    assert answer[0]["filename"] == "small.txt"
    assert list(answer[1]) == ["avscantime", "filename", "errortype", "error"]
    assert (answer[1]["filename"], answer[1]["errortype"], answer[1]["error"]) == (
        "big.txt",
        "fileoversized",
        "[[maxbytes]]",
    )
    with small_server.site.lock:
        assert [draft.filename for draft in small_server.site.state.drafts[answer[0]["itemid"]]] == ["small.txt"]
    assert small_server.site.max_bytes == 10


def test_file_names_are_cleaned_like_php_and_moodle(server):
    files = [
        ("f1", ("C:\\Users\\me\\report.pdf", b"pdf")),
        ("f2", ('dir/sub/a:b"c|d.txt', b"txt")),
        ("f3", ("héllo wörld.txt", b"utf")),
    ]
    answer = send(server, files).json()
    # urllib3 sends the quote as %22, which PHP keeps; PARAM_FILE drops ':' and '|'.
    assert [entry["filename"] for entry in answer] == ["report.pdf", "ab%22cd.txt", "héllo wörld.txt"]
    assert answer[2]["source"] == 'O:8:"stdClass":1:{s:6:"source";s:17:"héllo wörld.txt";}'


def test_a_quote_escaped_with_a_backslash_is_unescaped_like_php(server):
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="token"\r\n\r\n' + TOKEN.encode() + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="file_1"; filename="say \\"hi\\".txt"\r\n\r\nhi\r\n--XyZ--\r\n'
    )
    response = requests.post(
        f"{server.url}/webservice/upload.php",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        timeout=5,
    )
    assert response.json()[0]["filename"] == "say hi.txt"


def test_a_non_numeric_itemid_starts_a_new_draft_item(server):
    [entry] = send(server, [("file_1", ("x.txt", b"x"))], itemid="abc").json()
    assert entry["itemid"] > 0


def test_the_path_is_cleaned_and_must_start_and_end_with_a_slash(server):
    [entry] = send(server, [("file_1", ("p.txt", b"p"))], filepath="/a/../b/").json()
    assert entry["filepath"] == "/a/b/"
    response = send(server, [("file_1", ("p.txt", b"p"))], filepath="sub")
    assert response.json() == {
        "error": "Unknown exception related to local files (Invalid file path)",
        "errorcode": "storedfileproblem",
        "stacktrace": None,
        "debuginfo": None,
        "reproductionlink": None,
    }


def test_a_file_part_without_a_name_is_no_file_and_nothing_is_stored(server):
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="token"\r\n\r\n' + TOKEN.encode() + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="file_1"; filename="kept.txt"\r\n\r\nkept\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file_2"; filename=""\r\n\r\n\r\n--XyZ--\r\n'
    )
    with server.site.lock:
        before = dict(server.site.state.drafts)
    response = requests.post(
        f"{server.url}/webservice/upload.php",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
        timeout=5,
    )
    assert (response.json()["errorcode"], response.json()["error"]) == ("upload_error_no_file", "No file was uploaded.")
    with server.site.lock:
        assert server.site.state.drafts == before


def test_an_array_of_files_is_nofile_like_moodle(server):
    response = send(server, [("file[]", ("a.txt", b"a")), ("file[]", ("b.txt", b"b"))])
    assert (response.json()["errorcode"], response.json()["error"]) == ("nofile", "File not specified")


def test_php_keeps_the_last_file_of_a_field_and_at_most_twenty(server):
    twice = send(server, [("file", ("first.txt", b"1")), ("file", ("second.txt", b"2"))]).json()
    assert [entry["filename"] for entry in twice] == ["second.txt"]
    many = send(server, [(f"file_{number}", (f"{number}.txt", b"n")) for number in range(25)]).json()
    assert [entry["filename"] for entry in many] == [f"{number}.txt" for number in range(20)]


def test_a_big_file_is_read_in_chunks_and_only_its_size_kept(server):
    big = bytes(range(256)) * (6 * 4096)  # 6 MiB with every byte value, CR and LF included
    [entry] = send(server, [("file_1", ("big.bin", big))]).json()
    assert entry["filesize"] == len(big)


# --- Token and request errors -----------------------------------------------------------------------------------------


def test_the_token_can_come_from_the_query_string_but_post_wins(server):
    from_query = send(server, [("file_1", ("q.txt", b"q"))], token=None, params={"token": TOKEN})
    assert from_query.json()[0]["filename"] == "q.txt"
    post_wins = send(server, [("file_1", ("q.txt", b"q"))], token="wrong", params={"token": TOKEN})
    assert post_wins.json()["errorcode"] == "invalidtoken"


@pytest.mark.parametrize(("files", "content_type"), [([], JSON_UTF8), ([("file_1", ("m.txt", b"m"))], TEXT_PLAIN)])
def test_a_missing_token_is_missingparam(server, files, content_type):
    response = send(server, files, token=None)
    assert response.headers["Content-Type"] == content_type
    assert response.json() == {
        "error": "A required parameter (token) was missing",
        "errorcode": "missingparam",
        "stacktrace": None,
        "debuginfo": None,
        "reproductionlink": None,
    }


def test_a_urlencoded_body_carries_only_fields(server):
    response = requests.post(f"{server.url}/webservice/upload.php", data={"token": TOKEN}, timeout=5)
    assert (response.content, response.headers["Content-Type"]) == (b"[]", JSON_UTF8)


def test_a_body_over_the_size_limit_is_413(server):
    head = b"POST /webservice/upload.php HTTP/1.1\r\nHost: sandbox\r\nContent-Length: 99999999\r\n\r\n"
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 413")


# --- Counting and faults ----------------------------------------------------------------------------------------------


def test_uploads_are_counted_and_faults_can_target_them(server):
    before = calls(server).get("upload.php", 0)
    queue_fault(server, kind="http", status=503, function="upload.php")
    rest = requests.post(
        f"{server.url}/webservice/rest/server.php",
        data={"wstoken": TOKEN, "wsfunction": "core_webservice_get_site_info", "moodlewsrestformat": "json"},
        timeout=5,
    )
    assert rest.status_code == 200
    assert send(server, [("file_1", ("f.txt", b"f"))]).status_code == 503
    queue_fault(server, kind="maintenance", function="upload.php")
    maintenance = send(server, [("file_1", ("f.txt", b"f"))])
    assert maintenance.headers["Content-Type"] == TEXT_PLAIN
    assert maintenance.json() == {
        "error": "The site is undergoing maintenance and is currently not available",
        "errorcode": "sitemaintenance",
        "stacktrace": None,
        "debuginfo": None,
        "reproductionlink": None,
    }
    assert send(server, [("file_1", ("f.txt", b"f"))]).status_code == 200
    assert calls(server)["upload.php"] == before + 3


# --- Upload, then attach ----------------------------------------------------------------------------------------------


def test_uploaded_files_are_attached_by_the_sync_service_plugin(server):
    itemid = send(server, [("file_1", ("lecture.pdf", b"%PDF-1.7"))]).json()[0]["itemid"]
    data = {
        "wstoken": TOKEN,
        "wsfunction": "local_course_add_new_course_module_resource",
        "moodlewsrestformat": "json",
        "courseid": "3",
        "sectionnum": "2",
        "itemid": str(itemid),
        "displayname": "Lecture 1",
        "visible": "false",
    }
    answer = requests.post(f"{server.url}/webservice/rest/server.php", data=data, timeout=5).json()
    assert answer["message"] == "Successful"
    with server.site.lock:
        module = server.site.state.course_modules[int(answer["id"])]
        assert (module.course, module.section, module.name, module.visible) == (3, 2, "Lecture 1", 0)
        assert [(file.filename, file.filesize) for file in module.files] == [("lecture.pdf", 8)]


def test_a_service_without_uploads_refuses_like_moodle():
    site = SandboxSite("tok", upload_files=False, debug=True)

    with pytest.raises(MoodleException) as info:
        upload(site, PhpArray({"token": "tok"}), {})

    assert (info.value.errorcode, info.value.message) == ("accessexception", "Access control exception")
    assert info.value.debuginfo == "Web service file upload must be enabled in external service settings"
