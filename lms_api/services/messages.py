"""Personal messages from the gateway's Moodle user to Moodle users, each with its own outcome."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from lms_api.moodle.client import Moodle
from lms_api.moodle.errors import expect_list, unexpected_answer
from lms_api.moodle.functions import MoodleFunction

MESSAGE_NOT_SENT = -1  # Moodle's msgid of a message it refused


class MessageOutcome(TypedDict):
    touserid: int
    clientmsgid: NotRequired[str]
    sent: bool
    msgid: int | None
    conversationid: int | None
    timecreated: int | None
    error: NotRequired[str]


class MessagesSent(TypedDict):
    messages: list[MessageOutcome]
    sent: int
    failed: int


def send_messages(moodle: Moodle, messages: list[dict[str, Any]]) -> MessagesSent:
    """Send ``messages`` (``touserid``, ``text``, optional ``clientmsgid``) in one call, never sent twice (the
    function is a write). Moodle sends each on its own: a message it refuses (a recipient it does not have, a text
    over 4,096 bytes) is that item's ``error``, in the order asked, while the others are sent."""
    answer = moodle.call(MoodleFunction.SEND_INSTANT_MESSAGES, {"messages": messages})
    items = expect_list(answer, MoodleFunction.SEND_INSTANT_MESSAGES, key="msgid")
    if len(items) != len(messages) or not all(isinstance(item["msgid"], int) for item in items):
        raise unexpected_answer(MoodleFunction.SEND_INSTANT_MESSAGES)
    outcomes = [_outcome(wanted, item) for wanted, item in zip(messages, items, strict=True)]
    sent = sum(outcome["sent"] for outcome in outcomes)
    return {"messages": outcomes, "sent": sent, "failed": len(outcomes) - sent}


def _outcome(wanted: dict[str, Any], item: dict[str, Any]) -> MessageOutcome:
    sent = item["msgid"] != MESSAGE_NOT_SENT
    outcome: MessageOutcome = {
        "touserid": wanted["touserid"],
        "sent": sent,
        "msgid": item["msgid"] if sent else None,
        "conversationid": item.get("conversationid") if sent else None,
        "timecreated": item.get("timecreated") if sent else None,
    }
    if "clientmsgid" in wanted:
        outcome["clientmsgid"] = wanted["clientmsgid"]
    if not sent:
        outcome["error"] = str(item.get("errormessage") or "Moodle did not send the message")
    return outcome
