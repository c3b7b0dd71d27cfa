"""A reply in a chat: where it goes (the chat the customer wrote from) and what it says.

Each chat adapter keeps, with every inbound message, what its provider needs to answer in the
same chat (``headers["chat"]["reply_to"]``: a Slack channel and thread, the customer's number and
ours, a Telegram chat id, a widget session). A reply answers the customer's newest message; the
provider's sender (handlers/outbound/<provider>.py) turns ``OutboundChat`` into its API call.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from handlers.outbound.compose import ComposeError
from schemas.outbound import OutboundChat, ReplyIn


def compose_chat(
    *, reply_key: str, answered: dict[str, Any] | None, body: ReplyIn, now: datetime
) -> OutboundChat:
    """The reply to the chat of ``answered`` (``headers["chat"]`` of the customer's newest
    message); a chat reply has text only (``to``, ``cc``, ``subject`` and ``html`` are mail's)."""
    target = (answered or {}).get("reply_to")
    if not isinstance(target, dict) or not target:
        raise ComposeError("the conversation has no chat message to answer")
    if body.to or body.cc or body.subject or body.html:
        raise ComposeError("a chat reply is text only: to, cc, subject and html are for mail")
    return OutboundChat(
        reply_key=reply_key,
        client_id=f"isx-{uuid.uuid4().hex}",
        text=body.text,
        target=target,
        date=now,
    )
