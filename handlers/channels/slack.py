"""Slack Events API: https://api.slack.com/apis/events-api

Inbox secrets: ``signing_secret`` (the app's, from its Basic Information page) and, to fetch
shared files, ``bot_token`` (the same ``xoxb-`` token as the inbox's outbound setting: the worker
that fetches files reads the inbox's secrets, not its outbound setting). No ``bot_user_id``
secret: which user is our bot is in every event, signed (``authorizations[].user_id`` with
``is_bot``), so echoes are recognized the same way at the edge and in a saved file.

Authenticity (https://api.slack.com/authentication/verifying-requests-from-slack):
``X-Slack-Signature: v0=<hex HMAC-SHA256(signing_secret, "v0:" + X-Slack-Request-Timestamp +
":" + raw body)>``, the timestamp within ``INBOXSYNC_WEBHOOK_TOLERANCE_SECONDS``; checked before
the body is parsed. Every answer is a 200, as Slack wants (within 3 s, or it retries).

- ``url_verification`` (setting the Request URL): answered ``{"challenge": …}``.
- ``event_callback`` with a ``message`` event: journaled once per ``event_id`` (a Slack retry,
  ``X-Slack-Retry-Num``, carries the same one: the journal keeps the first only), and stored
  once per message (``slack:<channel>:<ts>``, unique per channel) whatever the event.
- Not a customer's message, answered with nothing journaled: any bot's or app's (a ``bot_id``,
  subtype ``bot_message``, or our bot user: our own replies come back as events), service
  subtypes (joins, topics, pins), other events, ``app_rate_limited``.
- Thread key: a DM (``channel_type`` ``im``, and ``mpim``: a group DM is one small group's
  conversation, as in Slack's own sidebar) is one conversation, ``slack:<channel>``; in a channel
  a message in a thread joins ``slack:<channel>:<thread_ts>``, and a top-level message starts a
  thread of its own, ``slack:<channel>:<ts>`` (its replies carry ``thread_ts`` = its ``ts``, and
  ours go there too). Sender ``slack:<user id>``.
- ``message_changed`` with an ``edited`` stamp: an edit (its time is ``edited.ts``); without one
  it is Slack updating the message itself (link unfurls, reply counts): nothing. A thread
  parent deleted while it has replies becomes a ``tombstone``: a deletion, like
  ``message_deleted`` (its time is the event's ``ts``).
- Texts lose Slack's markup (https://api.slack.com/reference/surfaces/formatting#retrieving-messages):
  ``<@U123>`` → ``@U123``, ``<https://x|label>`` → ``label (https://x)``, ``&amp;`` → ``&``.
- Files: ``url_private_download`` on ``files.slack.com`` only (``media_hosts``), fetched with
  ``Authorization: Bearer <bot_token>`` (scope ``files:read``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    WebhookRequest,
    configured,
    constant_time_equal,
    hmac_sha256_hex,
    stamped_signature,
    validated,
)
from schemas.inbound import InboundMessage, MediaRef, MessageEdit, Normalized
from schemas.slack import SlackCallback, SlackChallenge, SlackFile, SlackMessage

if TYPE_CHECKING:
    from handlers.media import Get

TIMESTAMP_HEADER = "x-slack-request-timestamp"
SIGNATURE_HEADER = "x-slack-signature"
# Subtypes that are a person's message (https://api.slack.com/events/message#subtypes); the rest
# are Slack's own notices (channel_join, channel_topic, pinned_item, …) or bots'.
MESSAGE_SUBTYPES = frozenset({None, "file_share", "thread_broadcast", "me_message"})
DIRECT = frozenset({"im", "mpim"})
Kind = Literal["message", "edit", "delete", "ignore"]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """What Slack puts in ``X-Slack-Signature``."""
    return "v0=" + hmac_sha256_hex(secret, b"v0:" + timestamp.encode() + b":" + body)


class SlackAdapter:
    name = "slack"
    channels = frozenset({"chat"})
    blocking = False
    media_hosts = (r"files\.slack\.com",)

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        secret = configured(secrets, "signing_secret")
        stamp, given = stamped_signature(request, now, TIMESTAMP_HEADER, SIGNATURE_HEADER)
        if not constant_time_equal(given.strip(), sign(secret, stamp, request.body)):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        body = _json_object(request.body)
        kind = body.get("type")
        if kind == "url_verification":
            challenge = validated(SlackChallenge, body).challenge
            return Accepted(reply={"challenge": challenge}, status=200)
        event = body.get("event")
        if (
            kind != "event_callback"
            or not isinstance(event, dict)
            or event.get("type") != "message"
        ):
            return Accepted(status=200)  # nothing to keep; a refusal would only be retried
        callback = validated(SlackCallback, body)
        if classify(callback) == "ignore":
            return Accepted(status=200)
        return Accepted(
            payloads=[callback.model_dump(mode="json", exclude_none=True)],
            status=200,
            replay_key=f"slack:{callback.event_id}",
        )

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> Sequence[Normalized]:
        callback = validated(SlackCallback, payload)
        kind = classify(callback)  # again: a journaled payload is not trusted to be filtered
        if kind == "message":
            return [_inbound(inbox_id, received_at, callback.event)]
        if kind == "edit":
            return [_edit(inbox_id, received_at, callback)]
        if kind == "delete":
            return [_deletion(inbox_id, received_at, callback)]
        return []

    def fetch_media(self, ref: MediaRef, secrets: Mapping[str, Any], get: Get) -> tuple[bytes, str]:
        """The file, with the bot token (https://api.slack.com/types/file#auth)."""
        # Imported here: handlers.media imports the senders, whose mail composer imports the
        # channel registry, which imports this module.
        from handlers.media import MediaError

        token = str(secrets.get("bot_token") or "")
        if not token:
            raise MediaError("the inbox has no bot_token secret to fetch Slack files with")
        data, content_type = get(ref.url, {"Authorization": f"Bearer {token}"})
        # Without a token Slack can use, files.slack.com answers 200 with its sign-in page.
        if content_type.startswith("text/html") and not ref.content_type.startswith("text/html"):
            raise MediaError(
                "Slack answered with its sign-in page, not the file: the bot_token is wrong "
                "or lacks the files:read scope"
            )
        return data, content_type or ref.content_type


# ---- what an event is --------------------------------------------------------------------------


def classify(callback: SlackCallback) -> Kind:
    """What a message event means for inboxsync; ``PayloadError`` (naming the field) if it
    lacks what its kind needs."""
    event, ours = callback.event, _bot_user(callback)
    if event.subtype in MESSAGE_SUBTYPES:
        _require(event, "event", "channel", "ts")
        if _is_echo(event, ours):
            return "ignore"
        _require(event, "event", "user")
        return "message" if (event.text or event.files) else "ignore"
    if event.subtype == "message_changed":
        _require(event, "event", "channel", "ts", "message")
        now = event.message
        assert now is not None
        _require(now, "event.message", "ts")
        if _is_echo(now, ours):
            return "ignore"
        if now.subtype == "tombstone":
            return "delete"
        before = event.previous_message
        if now.edited is None or (before is not None and before.text == now.text):
            return "ignore"  # Slack's own update of the message (unfurls, replies), not an edit
        return "edit"
    if event.subtype == "message_deleted":
        _require(event, "event", "channel", "ts", "deleted_ts")
        gone = event.previous_message
        return "ignore" if gone is not None and _is_echo(gone, ours) else "delete"
    return "ignore"


def _bot_user(callback: SlackCallback) -> str | None:
    return next((a.user_id for a in callback.authorizations if a.is_bot and a.user_id), None)


def _is_echo(message: SlackMessage, bot_user: str | None) -> bool:
    """Written by a bot or an app (ours included), not by a person."""
    return (
        message.bot_id is not None
        or message.subtype == "bot_message"
        or (bot_user is not None and message.user == bot_user)
    )


def _require(message: SlackMessage, where: str, *names: str) -> None:
    for name in names:
        if getattr(message, name) is None:
            raise PayloadError(f"{where}.{name}: missing", field=f"{where}.{name}")


# ---- normalized --------------------------------------------------------------------------------


def _inbound(inbox_id: int, received_at: datetime, event: SlackMessage) -> InboundMessage:
    channel, ts, user = event.channel, event.ts, event.user
    assert channel is not None and ts is not None and user is not None  # classify() checked
    media, problems = _media(event.files)
    chat: dict[str, Any] = {"provider": "slack", "reply_to": _reply_to(event)}
    if event.channel_type:
        chat["channel_type"] = event.channel_type
    if problems:
        chat["problems"] = problems
    return InboundMessage(
        inbox_id=inbox_id,
        external_id=f"slack:{channel}:{ts}",
        provider_id=ts,
        sender=f"slack:{user}",
        thread_key=_thread_key(event),
        contact_name=_name(event),
        text=plain_text(event.text or ""),
        sent_at=slack_time(ts),
        received_at=received_at,
        headers={"chat": chat},
        media=media,
    )


def _is_direct(event: SlackMessage) -> bool:
    # DM channel ids start with D (older events may lack channel_type).
    if event.channel_type is not None:
        return event.channel_type in DIRECT
    return (event.channel or "").startswith("D")


def _thread_key(event: SlackMessage) -> str:
    if _is_direct(event):
        return f"slack:{event.channel}"
    return f"slack:{event.channel}:{event.thread_ts or event.ts}"


def _reply_to(event: SlackMessage) -> dict[str, Any]:
    """Where a reply goes: the DM itself, or the thread in the channel (the one the message is
    in, or the one it starts)."""
    target: dict[str, Any] = {"channel": event.channel, "ts": event.ts}
    if not _is_direct(event):
        target["thread_ts"] = event.thread_ts or event.ts
    return target


def _name(event: SlackMessage) -> str | None:
    profile = event.user_profile
    if profile is None:
        return None
    name = profile.real_name or profile.display_name or profile.name
    return name[:200] if name else None


def _edit(inbox_id: int, received_at: datetime, callback: SlackCallback) -> MessageEdit:
    event, now = callback.event, callback.event.message
    assert now is not None and now.ts is not None and now.edited is not None  # classify() checked
    return MessageEdit(
        inbox_id=inbox_id,
        external_id=f"slack:{event.channel}:{now.ts}",
        event_id=f"slack:{callback.event_id}",
        text=plain_text(now.text or ""),
        edited_at=slack_time(now.edited.ts),
        received_at=received_at,
    )


def _deletion(inbox_id: int, received_at: datetime, callback: SlackCallback) -> MessageEdit:
    event = callback.event
    # message_deleted names the message in deleted_ts; a tombstone is the changed message.
    gone = event.deleted_ts or (event.message.ts if event.message is not None else None)
    assert gone is not None and event.ts is not None  # classify() checked
    return MessageEdit(
        inbox_id=inbox_id,
        external_id=f"slack:{event.channel}:{gone}",
        event_id=f"slack:{callback.event_id}",
        deleted=True,
        edited_at=slack_time(event.ts),  # the deletion event's own ts: when it happened
        received_at=received_at,
    )


def _media(files: list[SlackFile]) -> tuple[list[MediaRef], list[str]]:
    refs, problems = [], []
    for item in files:
        url = item.url_private_download or item.url_private
        name = item.name or item.title or item.id
        if not url:  # hidden by the plan's limit, deleted, or Slack Connect's check_file_info
            problems.append(f"attachment {name}: Slack shares no download for it")
            continue
        refs.append(
            MediaRef(
                url=url,
                content_type=item.mimetype or "application/octet-stream",
                filename=name,
                provider_ref=item.id,
            )
        )
    return refs, problems


# ---- Slack's formats ---------------------------------------------------------------------------

_MARKUP = re.compile(r"<([^<>]*)>")


def plain_text(text: str) -> str:
    """Slack's message markup as a person reads it: mentions, channel and link references
    unwrapped, and the three escaped characters back (``&lt;``, ``&gt;``, ``&amp;``)."""

    def unwrap(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target[:1] in ("@", "#"):  # <@U123>, <#C123|general>
            return target[0] + (label or target[1:])
        if target.startswith("!"):  # <!here>, <!subteam^S123|@support>, <!date^…|fallback>
            return label or "@" + target[1:].split("^")[0]
        if not label or label == target or target == f"mailto:{label}":
            return label or target
        return f"{label} ({target})"

    return _MARKUP.sub(unwrap, text).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def slack_time(ts: str) -> datetime:
    """A Slack ``ts`` ("1355517523.000005": seconds and microseconds) as an aware datetime,
    without the rounding of a float."""
    seconds, _, fraction = ts.partition(".")
    micro = int((fraction + "000000")[:6])
    return datetime.fromtimestamp(int(seconds), UTC) + timedelta(microseconds=micro)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise PayloadError("body is not JSON") from None
    if not isinstance(parsed, dict):
        raise PayloadError("body is not a JSON object")
    return parsed
