"""core_message_send_instant_messages as Moodle 5.0 answers the site admin: each message on its own."""

from lms_api.moodle.encoding import encode_params
from moodle_sandbox.phpform import parse_php_form
from moodle_sandbox.site import SandboxSite

TOKEN = "messages-test-token"
NOW = 1_800_000_000
ADMIN, STUDENT, TEACHER, DELETED = 2, 3, 5, 7


def send(site, *messages):
    params = encode_params({"messages": list(messages)})
    form, _ = parse_php_form([("wstoken", TOKEN), ("wsfunction", "core_message_send_instant_messages"), *params], 5000)
    return site.rest(form)


def unread(site, userid):
    form, _ = parse_php_form(
        [
            ("wstoken", TOKEN),
            ("wsfunction", "message_popup_get_unread_popup_notification_count"),
            ("useridto", str(userid)),
        ],
        5000,
    )
    return site.rest(form)


def test_a_sent_message_is_answered_in_the_returns_descriptions_order():
    site = SandboxSite(TOKEN, clock=lambda: NOW)

    answer = send(site, {"touserid": STUDENT, "text": "Hi <Ada> & 'all'\nbye", "clientmsgid": "c-1"})

    assert answer == [
        {
            "msgid": 1,
            "clientmsgid": "c-1",
            "text": "Hi &lt;Ada&gt; &amp; &#039;all&#039;<br />\nbye",
            "timecreated": NOW,
            "conversationid": 1,
            "useridfrom": ADMIN,
            "candeletemessagesforallusers": True,
        }
    ]
    assert list(answer[0]) == ["msgid", "clientmsgid", "text", "timecreated", "conversationid", "useridfrom",
                               "candeletemessagesforallusers"]  # fmt: skip


def test_the_same_two_users_share_a_conversation():
    site = SandboxSite(TOKEN)

    first, second, other = send(site, {"touserid": STUDENT, "text": "a"}, {"touserid": STUDENT, "text": "b"},
                                {"touserid": TEACHER, "text": "c"})  # fmt: skip

    assert first["conversationid"] == second["conversationid"] != other["conversationid"]
    assert [first["msgid"], second["msgid"], other["msgid"]] == [1, 2, 3]


def test_a_refused_message_is_its_item_and_the_others_are_sent():
    site = SandboxSite(TOKEN, clock=lambda: NOW)

    answer = send(site, {"touserid": 999, "text": "x", "clientmsgid": "lost"}, {"touserid": STUDENT, "text": "ok"},
                  {"touserid": DELETED, "text": "x"}, {"touserid": TEACHER, "text": "é" * 2049})  # fmt: skip

    nobody = "You can not send a message to a user id ({}) that doesn't exist"
    refused = {"text": "", "conversationid": None, "useridfrom": ADMIN, "candeletemessagesforallusers": False}
    assert answer[0] == {"msgid": -1, "clientmsgid": "lost", "errormessage": nobody.format(999), **refused}
    assert answer[1]["msgid"] == 1
    assert answer[2] == {"msgid": -1, "errormessage": nobody.format(DELETED), **refused}
    assert answer[3] == {"msgid": -1, "errormessage": "The message is longer than the maximum allowed.", **refused}


def test_when_nothing_is_sent_the_items_carry_only_the_refusal():
    site = SandboxSite(TOKEN)

    assert send(site, {"touserid": 999, "text": "x"}) == [
        {"msgid": -1, "errormessage": "You can not send a message to a user id (999) that doesn't exist",
         "candeletemessagesforallusers": False}
    ]  # fmt: skip


def test_a_message_is_no_popup_notification_the_unread_count_stays():
    site = SandboxSite(TOKEN)
    before = unread(site, STUDENT)

    send(site, {"touserid": STUDENT, "text": "Hi"})

    assert unread(site, STUDENT) == before == 1
