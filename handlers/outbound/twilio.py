"""Twilio Messaging: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (SMS and WhatsApp),
https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource

- Where: ``To`` and ``From`` as the channel adapter kept them from the customer's message
  (handlers/channels/twilio.py): their address and ours, ``whatsapp:`` prefix and all, so the
  reply goes back through the app the customer wrote from. ``StatusCallback``: the setting's
  ``status_callback_url`` (the inbox's webhook URL), for delivered / read / failed.
- Auth: HTTP basic, account SID and auth token. Twilio's id of the reply: ``sid``.
- Failures: ``call`` maps them (429 with ``Retry-After``, 5xx: retried; 400 such as 21211 "invalid
  To", 21610 "unsubscribed recipient", 63016 "outside the WhatsApp 24 h window": final).
- Finding a reply after an attempt with no answer: Twilio takes no idempotency key and no
  metadata on a message, but lists an account's messages filtered by ``To`` and ``From``, newest
  first. ``find`` looks there for an outbound message with exactly our text created since the
  reply was queued (less a few minutes for the clocks). Not by ``DateSent``: a message still
  queued at Twilio has none yet, and would be missed and sent again. The caveats: two replies
  with the same text to the same person within minutes of each other can be taken for one
  another (the second is then recorded as sent without a second copy going out), and a Messaging
  Service that rewrites bodies (Smart Encoding of curly quotes and the like) makes our text
  unrecognisable, so the reply is sent again. Both are rarer than a lost answer, and the first
  errs towards the customer getting one message.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from handlers.outbound.base import SendFailed, call
from schemas.outbound import OutboundChat, TwilioOutbound

# https://www.twilio.com/docs/messaging/api/message-resource: "up to 1,600 characters".
MAX_TEXT = 1600
# How far Twilio's clock may be behind ours when we compare its date_created with our queueing.
CLOCK_SKEW = timedelta(minutes=2)
# Pages of 50 messages looked through, newest first, before giving up the lookup.
MAX_PAGES = 4


class TwilioSender:
    via = "twilio"

    def send(self, chat: OutboundChat, config: TwilioOutbound) -> str:
        if len(chat.text) > MAX_TEXT:
            raise SendFailed(
                f"twilio: the reply has {len(chat.text)} characters, Twilio takes at most "
                f"{MAX_TEXT} in one message: shorten or split it",
                outcome="permanent",
            )
        to, ours = _target(chat)
        form = {"To": to, "From": ours, "Body": chat.text}
        if config.status_callback_url:
            form["StatusCallback"] = config.status_callback_url
        answer = _json(
            call(
                "twilio",
                "POST",
                _messages_url(config),
                timeout_s=config.timeout_s,
                data=form,
                auth=(config.account_sid, config.auth_token),
                headers={"Accept": "application/json"},
            )
        )
        sid = answer.get("sid")
        if not isinstance(sid, str) or not sid:
            # A 2xx is Twilio's "created"; without its sid we cannot say which message it is.
            raise SendFailed(
                f"twilio: answer without a sid: {str(answer)[:300]}", outcome="uncertain"
            )
        return sid

    def find(self, chat: OutboundChat, config: TwilioOutbound) -> str | None:
        """Twilio's id of an outbound message to the same person with exactly our text, created
        since the reply was queued (see the module's docstring for the caveats)."""
        to, ours = _target(chat)
        since = chat.date - CLOCK_SKEW
        url: str | None = _messages_url(config)
        params: dict[str, Any] | None = {"To": to, "From": ours, "PageSize": 50}
        for _ in range(MAX_PAGES):
            if url is None:
                return None
            answer = _json(
                call(
                    "twilio",
                    "GET",
                    url,
                    timeout_s=config.timeout_s,
                    params=params,
                    auth=(config.account_sid, config.auth_token),
                    headers={"Accept": "application/json"},
                )
            )
            messages = [m for m in answer.get("messages") or [] if isinstance(m, dict)]
            for message in messages:
                if _is_ours(message, chat.text, since):
                    return str(message["sid"])
            if messages and all(_created(m) < since for m in messages):
                return None  # the page is older than the reply: so are the next ones
            url = _next_page(config, answer.get("next_page_uri"))
            params = None  # the next page's URI carries the filters
        return None


def _target(chat: OutboundChat) -> tuple[str, str]:
    to, ours = chat.target.get("to"), chat.target.get("from")
    if not isinstance(to, str) or not isinstance(ours, str) or not to or not ours:
        raise SendFailed("twilio: the message answered names no To and From", outcome="permanent")
    return to, ours


def _messages_url(config: TwilioOutbound) -> str:
    return f"{config.api_url.rstrip('/')}/2010-04-01/Accounts/{config.account_sid}/Messages.json"


def _next_page(config: TwilioOutbound, uri: object) -> str | None:
    # Twilio's next_page_uri is a path on its API host; a full URL is not followed anywhere else.
    if not isinstance(uri, str) or not uri.startswith("/"):
        return None
    return config.api_url.rstrip("/") + uri


def _json(response: Any) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SendFailed("twilio: a 2xx answer that is not a JSON object", outcome="uncertain")
    return answer


def _created(message: dict[str, Any]) -> datetime:
    """``date_created`` (RFC 2822, as Twilio writes its dates); the distant past if unreadable."""
    try:
        created = parsedate_to_datetime(str(message.get("date_created")))
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _is_ours(message: dict[str, Any], text: str, since: datetime) -> bool:
    return (
        str(message.get("direction", "")).startswith("outbound")
        and message.get("body") == text
        and isinstance(message.get("sid"), str)
        and _created(message) >= since
    )
