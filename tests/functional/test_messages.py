"""POST /api/moodle/messages: personal messages from the gateway's Moodle user, each with its own outcome."""

import pytest

from tests.support.credentials import mint
from tests.support.sandbox import queue_fault, sandbox_calls

STUDENT, TEACHER = 3, 5
TOKEN = mint("messages:write")


def test_messages_are_sent_and_answered_in_order(gateway):
    body = {
        "messages": [{"touserid": STUDENT, "text": "Hello", "clientmsgid": "m-1"}, {"touserid": TEACHER, "text": "Hi"}]
    }

    response = gateway.post("/api/moodle/messages", body, TOKEN)

    assert response.status_int == 200, response.text
    data = response.json["data"]
    assert (data["sent"], data["failed"]) == (2, 0)
    first, second = data["messages"]
    assert (first["touserid"], first["clientmsgid"], first["sent"]) == (STUDENT, "m-1", True)
    assert first["msgid"] > 0 and first["conversationid"] > 0 and first["timecreated"] > 0
    assert second["touserid"] == TEACHER and second["sent"] and "clientmsgid" not in second and "error" not in second


def test_a_message_moodle_refuses_is_its_item_not_an_error(gateway):
    body = {
        "messages": [
            {"touserid": 999999, "text": "x"},
            {"touserid": STUDENT, "text": "é" * 4000},
            {"touserid": STUDENT, "text": "ok"},
        ]
    }

    response = gateway.post("/api/moodle/messages", body, TOKEN)

    assert response.status_int == 200, response.text
    missing, too_long, sent = response.json["data"]["messages"]
    assert missing == {"touserid": 999999, "sent": False, "msgid": None, "conversationid": None, "timecreated": None,
                       "error": "You can not send a message to a user id (999999) that doesn't exist"}  # fmt: skip
    assert too_long["sent"] is False and "longer" in too_long["error"]  # Moodle counts bytes: 8,000 here
    assert sent["sent"] is True
    assert response.json["data"]["sent"] == 1 and response.json["data"]["failed"] == 2


def test_a_message_is_never_sent_twice(gateway, sandbox):
    before = sandbox_calls(sandbox).get("core_message_send_instant_messages", 0)
    queue_fault(sandbox, kind="reset", function="core_message_send_instant_messages")

    response = gateway.post("/api/moodle/messages", {"messages": [{"touserid": STUDENT, "text": "once"}]}, TOKEN)

    assert response.status_int == 504, response.text
    assert response.json["error"]["details"]["outcome"] == "unknown"  # the write may have been applied: not resent
    assert sandbox_calls(sandbox)["core_message_send_instant_messages"] == before + 1


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"text": "x"}, "touserid"),
        ({"touserid": 0, "text": "x"}, "touserid"),
        ({"touserid": "3", "text": "x"}, "touserid"),
        ({"touserid": STUDENT}, "text"),
        ({"touserid": STUDENT, "text": ""}, "text"),
        ({"touserid": STUDENT, "text": "x" * 4097}, "text"),
        ({"touserid": STUDENT, "text": "a\x00b"}, "text"),
        ({"touserid": STUDENT, "text": "x", "clientmsgid": "a b"}, "clientmsgid"),
        ({"touserid": STUDENT, "text": "x", "clientmsgid": ""}, "clientmsgid"),
        ({"touserid": STUDENT, "text": "x", "other": 1}, "other"),
    ],
)
def test_bad_messages_are_400s_and_moodle_is_not_asked(gateway, sandbox, message, field):
    before = sandbox_calls(sandbox)

    response = gateway.post("/api/moodle/messages", {"messages": [message]}, TOKEN)

    assert response.status_int == 400, response.text
    assert field in response.json["error"]["details"]["fields"]["messages"]["0"]
    assert sandbox_calls(sandbox) == before


@pytest.mark.parametrize("messages", [[], [{"touserid": STUDENT, "text": "x"}] * 101, None])
def test_one_to_a_hundred_messages(gateway, messages):
    response = gateway.post("/api/moodle/messages", {"messages": messages}, TOKEN)

    assert response.status_int == 400
    assert "messages" in response.json["error"]["details"]["fields"]


def test_a_hundred_messages_go_in_one_call(gateway, sandbox):
    before = sandbox_calls(sandbox).get("core_message_send_instant_messages", 0)

    response = gateway.post("/api/moodle/messages", {"messages": [{"touserid": STUDENT, "text": "x"}] * 100}, TOKEN)

    assert response.json["data"]["sent"] == 100
    assert sandbox_calls(sandbox)["core_message_send_instant_messages"] == before + 1


def test_the_route_needs_messages_write(gateway):
    response = gateway.post(
        "/api/moodle/messages",
        {"messages": [{"touserid": STUDENT, "text": "x"}]},
        mint("notifications:read users:write"),
    )

    assert response.status_int == 403
    assert response.json["error"]["details"]["required_scope"] == "messages:write"
