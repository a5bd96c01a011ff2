"""Popup notifications (``message/output/popup/externallib.php``) as the token's site admin reads them, and personal
messages sent as the admin (``core_message_send_instant_messages``, ``message/externallib.php``).

A personal message is not a popup notification: Moodle keeps it in the ``messages`` table, in the conversation of its
two users, and the popup notification functions (which read ``notifications``) never count it. Sending one leaves the
recipient's unread popup notification count as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import MoodleException, missing_record, moodle_exception
from moodle_sandbox.functions.formatting import FORMAT_MOODLE, format_plain_text, validate_format
from moodle_sandbox.params import DEFAULT, OPTIONAL, Multiple, Single, Value
from moodle_sandbox.records import Message, Notification
from moodle_sandbox.registry import sandbox_function

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

GET_POPUP_NOTIFICATIONS = Single(
    {
        "useridto": Value("int"),
        "newestfirst": Value("bool", DEFAULT, True),
        "limit": Value("int", DEFAULT, 0),
        "offset": Value("int", DEFAULT, 0),
    }
)
GET_UNREAD_COUNT = Single({"useridto": Value("int")})
SEND_INSTANT_MESSAGES = Single(
    {
        "messages": Multiple(
            Single(
                {
                    "touserid": Value("int"),
                    "text": Value("raw"),
                    "textformat": Value("int", DEFAULT, FORMAT_MOODLE),
                    "clientmsgid": Value("alphanumext", OPTIONAL),
                }
            )
        )
    }
)
MESSAGE_MAX_LENGTH = 4096  # \core_message\api::MESSAGE_MAX_LENGTH, in bytes (PHP's strlen)
_YEAR, _DAY, _HOUR, _MINUTE = 31536000, 86400, 3600, 60


def format_time(seconds: int) -> str:
    """Moodle's ``format_time()``, including its quirk of counting hours from the whole time when there are days."""
    seconds = abs(seconds)
    years = seconds // _YEAR
    days = (seconds - years * _YEAR) // _DAY
    remainder = seconds - days * _DAY
    hours = remainder // _HOUR
    remainder -= hours * _HOUR
    minutes = remainder // _MINUTE
    secs = remainder - minutes * _MINUTE

    def part(count: int, unit: str) -> str:
        return f"{count} {unit if count == 1 else unit + 's'}" if count else ""

    if years:
        return f"{part(years, 'year')} {part(days, 'day')}".strip()
    if days:
        return f"{part(days, 'day')} {part(hours, 'hour')}".strip()
    if hours:
        return f"{part(hours, 'hour')} {part(minutes, 'min')}".strip()
    if minutes:
        return f"{part(minutes, 'min')} {part(secs, 'sec')}".strip()
    return part(secs, "sec") if secs else "now"


def _invalid_user() -> MoodleException:
    return moodle_exception("invaliduser", "Invalid user")


@sandbox_function("message_popup_get_popup_notifications", GET_POPUP_NOTIFICATIONS)
def get_popup_notifications(site: SandboxSite, params: dict[str, Any]) -> dict[str, Any]:
    """``useridto`` 0 means the token user; the admin may read anybody's. Ids that cannot be real users (zero or
    below) are refused first; then ``message_popup\\api`` reads another user's ``emailstop`` with MUST_EXIST, so an id
    nobody has is a missing record, and a user who stopped notifications gets none listed (but still a count)."""
    useridto = params["useridto"] or site.admin.id
    if useridto <= 0:
        raise _invalid_user()
    if useridto == site.admin.id:
        emailstop = site.admin.emailstop
    else:
        user = site.state.users.get(useridto)
        if user is None:
            raise missing_record("user", "emailstop", useridto, site.debug)
        emailstop = user.emailstop
    mine = sorted(
        (notification for notification in site.state.notifications.values() if notification.useridto == useridto),
        key=lambda notification: (notification.timecreated, notification.id),
        reverse=params["newestfirst"],
    )
    offset, limit = max(params["offset"], 0), max(params["limit"], 0)
    mine = mine[offset : offset + limit] if limit else mine[offset:]
    if emailstop:
        mine = []
    return {
        "notifications": [_notification_record(site, notification) for notification in mine],
        "unreadcount": _unread_count(site, useridto),
    }


@sandbox_function("message_popup_get_unread_popup_notification_count", GET_UNREAD_COUNT)
def get_unread_popup_notification_count(site: SandboxSite, params: dict[str, Any]) -> int:
    """A bare number. Any other id than 0 must be a real user's: ids that cannot be (zero or below) are refused,
    then ``core_user::get_user($useridto, '*', MUST_EXIST)`` fails for an id nobody has; 0 counts the token user's,
    as ``message_popup\\api::count_unread_popup_notifications()`` does."""
    useridto = params["useridto"]
    if useridto < 0:
        raise _invalid_user()
    if useridto and useridto not in site.state.users:
        raise missing_record("user", "*", useridto, site.debug)
    return _unread_count(site, useridto or site.admin.id)


def _unread_count(site: SandboxSite, useridto: int) -> int:
    return sum(
        1
        for notification in site.state.notifications.values()
        if notification.useridto == useridto and notification.timeread is None
    )


def _notification_record(site: SandboxSite, notification: Notification) -> dict[str, Any]:
    """``popup_notification::export_for_template()`` cut to the returns description, in its key order.

    The seeded subjects are short, so ``shorten_text()`` leaves them as they are.
    """
    text = notification.fullmessagehtml or notification.fullmessage or notification.smallmessage
    return {
        "id": notification.id,
        "useridfrom": notification.useridfrom,
        "useridto": notification.useridto,
        "subject": notification.subject,
        "shortenedsubject": notification.subject,
        "text": text,
        "fullmessage": notification.fullmessage,
        "fullmessageformat": notification.fullmessageformat,
        "fullmessagehtml": notification.fullmessagehtml,
        "smallmessage": notification.smallmessage,
        "contexturl": site.base_url + notification.contexturl,
        "contexturlname": notification.contexturlname,
        "timecreated": notification.timecreated,
        "timecreatedpretty": f"{format_time(site.now() - notification.timecreated)} ago",
        "timeread": notification.timeread,
        "read": notification.timeread is not None,
        "deleted": False,
        "iconurl": site.image_url("i/marker"),
        "component": notification.component,
        "eventtype": notification.eventtype,
        "customdata": notification.customdata,
    }


@sandbox_function("core_message_send_instant_messages", SEND_INSTANT_MESSAGES)
def send_instant_messages(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Each message from the token user to ``touserid``, on its own (no transaction): a recipient who is not a user
    of the site (deleted included) or a text over 4,096 bytes is refused in its item with ``msgid`` -1 and an
    ``errormessage``; the site admin may message anyone else, themselves included. An unknown ``textformat`` fails
    the call when its message is sent, those sent before it staying sent.

    Each message sent to another user triggers ``\\core\\event\\message_sent`` (the sender the event's user, the
    recipient its related user, in the system context); one to oneself goes to the self-conversation, which Moodle
    does not process, so triggers nothing. The answer is shaped as Moodle 5.0 cleans it: once any message was sent,
    every item (refused ones too) gets ``text``, ``conversationid`` (null for a refused one) and ``useridfrom``.
    """
    sender = site.admin
    recipients = {user.id for user in site.state.users.values() if not user.deleted}
    answers: list[dict[str, Any]] = []
    sent: dict[int, Message] = {}
    for wanted in params["messages"]:
        answer: dict[str, Any] = {"msgid": -1}
        if "clientmsgid" in wanted:
            answer["clientmsgid"] = wanted["clientmsgid"]
        if wanted["touserid"] not in recipients:
            answer["errormessage"] = (
                f"You can not send a message to a user id ({wanted['touserid']}) that doesn't exist"
            )
        elif len(wanted["text"].encode()) > MESSAGE_MAX_LENGTH:
            answer["errormessage"] = "The message is longer than the maximum allowed."
        else:
            validate_format(wanted["textformat"])  # external_validate_format() as message_post_message() is called
            message = _post_message(site, sender.id, wanted["touserid"], wanted["text"], wanted["textformat"])
            sent[message.id] = message
            answer |= {"msgid": message.id, "timecreated": message.timecreated}
        answers.append(answer)
    return [_sent_answer(answer, sent, sender.id) for answer in answers]


def _post_message(site: SandboxSite, useridfrom: int, useridto: int, text: str, textformat: int) -> Message:
    """``message_post_message()``: the message in the users' conversation (made on the first message), and its event."""
    state = site.state
    members = frozenset((useridfrom, useridto))
    conversationid = state.conversations.get(members)
    if conversationid is None:
        conversationid = state.conversations[members] = state.next_id("message_conversations")
    message = Message(state.next_id("messages"), useridfrom, conversationid, text, textformat, site.now())
    state.messages[message.id] = message
    if useridto != useridfrom:
        site.trigger("\\core\\event\\message_sent", message.id, relateduserid=useridto)
    return message


def _sent_answer(answer: dict[str, Any], sent: dict[int, Message], useridfrom: int) -> dict[str, Any]:
    """One item in the returns description's key order. Moodle adds ``conversationid``, ``useridfrom`` and ``text`` to
    every item once any message was sent, reading a refused item's message (id -1) as nothing: null and empty text."""
    if sent:
        message = sent.get(answer["msgid"])
        answer["text"] = format_plain_text(message.smallmessage) if message else ""
        answer["conversationid"] = message.conversationid if message else None
        answer["useridfrom"] = useridfrom
    # The site admin has moodle/site:deleteanymessage; a refused item gets the description's default, false.
    answer["candeletemessagesforallusers"] = answer["msgid"] != -1
    order = ("msgid", "clientmsgid", "errormessage", "text", "timecreated", "conversationid", "useridfrom")
    return {key: answer[key] for key in (*order, "candeletemessagesforallusers") if key in answer}
