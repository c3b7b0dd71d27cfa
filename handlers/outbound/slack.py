"""Slack: ``chat.postMessage`` into the customer's thread or DM (https://api.slack.com/methods/chat.postMessage),
with the inbox's bot token (``xoxb-…``; scopes ``chat:write``, and for ``find`` the ``*:history``
ones of the conversations the bot is in).

- Where: the ``channel`` the channel adapter kept, and its ``thread_ts`` in a channel (the
  thread the customer wrote in, or started); a DM is answered in the DM itself.
- What: the text, with ``&``, ``<`` and ``>`` escaped as Slack asks
  (https://api.slack.com/reference/surfaces/formatting#escaping): an agent's "<b>" is shown,
  not read as a link. At most 40,000 characters: Slack cuts longer texts without saying so.
- Our id of the reply goes in the message's ``metadata``
  (https://api.slack.com/metadata/using): ``{"event_type": "inboxsync_reply", "event_payload":
  {"client_id": …}}``. Slack takes no idempotency key, but it can be asked: ``find`` reads the
  thread (``conversations.replies``) or the DM (``conversations.history``) since the reply was
  queued, with ``include_all_metadata``, for that ``client_id``.
- The provider's id of the reply: ``slack:<channel>:<ts>`` (a ``ts`` is unique per channel),
  the shape of the inbound ids.
- Failures: Slack answers 200 with ``{"ok": false, "error": …}``. ``ratelimited`` (normally a
  429 with ``Retry-After``, which ``call`` honours), ``service_unavailable`` and
  ``request_timeout`` (the POST arrived truncated) are retried: nothing was posted.
  ``fatal_error`` and ``internal_error`` may have posted it ("It's possible some aspect of the
  operation succeeded", Slack's method docs): uncertain, so the next attempt asks first. Every
  other error (``channel_not_found``, ``not_in_channel``, ``is_archived``, ``invalid_auth``,
  ``token_revoked``, ``missing_scope``, ``msg_too_long``, …) is final.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from handlers.outbound.base import Outcome, SendFailed, call
from schemas.outbound import OutboundChat, SlackOutbound

METADATA_EVENT = "inboxsync_reply"
MAX_TEXT = 40_000
RETRIED = frozenset({"ratelimited", "service_unavailable", "request_timeout"})
MAYBE_POSTED = frozenset({"fatal_error", "internal_error"})
# Our clock and Slack's may disagree: the reply's ts can be a little before its queueing time.
CLOCK_SKEW = timedelta(minutes=10)
PAGE = 200
MAX_PAGES = 25


class SlackSender:
    via = "slack"

    def send(self, chat: OutboundChat, config: SlackOutbound) -> str:
        channel, thread_ts = _target(chat)
        if len(chat.text) > MAX_TEXT:
            raise SendFailed(
                f"slack: the reply has {len(chat.text)} characters; Slack cuts a message at "
                f"{MAX_TEXT}: shorten or split it",
                outcome="permanent",
            )
        body: dict[str, Any] = {
            "channel": channel,
            "text": escape(chat.text),
            "metadata": {
                "event_type": METADATA_EVENT,
                "event_payload": {"client_id": chat.client_id},
            },
        }
        if thread_ts:
            body["thread_ts"] = thread_ts
        answer = _call(config, "POST", "chat.postMessage", json=body)
        ts = answer.get("ts")
        if not isinstance(ts, str) or not ts:
            # ok: true is Slack's "posted"; without a ts we cannot say which message it is.
            raise SendFailed(
                f"slack: an answer without ts: {str(answer)[:300]}", outcome="uncertain"
            )
        return f"slack:{answer.get('channel') or channel}:{ts}"

    def find(self, chat: OutboundChat, config: SlackOutbound) -> str | None:
        """Slack's id of the message carrying our ``client_id`` in its metadata, posted in the
        reply's thread (or DM) since the reply was queued; None if there is none."""
        channel, thread_ts = _target(chat)
        params: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{(chat.date - CLOCK_SKEW).timestamp():.6f}",
            "include_all_metadata": "true",
            "limit": PAGE,
        }
        method = "conversations.history"
        if thread_ts:
            method, params["ts"] = "conversations.replies", thread_ts
        for _ in range(MAX_PAGES):
            answer = _call(config, "GET", method, params=params)
            for message in answer.get("messages") or []:
                if _carries(message, chat.client_id):
                    return f"slack:{channel}:{message['ts']}"
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            params = {**params, "cursor": cursor}
        raise SendFailed(
            f"slack: over {MAX_PAGES * PAGE} messages since the reply was queued; cannot tell "
            "whether it was posted",
            outcome="uncertain",
        )


def escape(text: str) -> str:
    """Text as Slack shows it literally (its three control characters escaped)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _target(chat: OutboundChat) -> tuple[str, str | None]:
    channel, thread_ts = chat.target.get("channel"), chat.target.get("thread_ts")
    if not isinstance(channel, str) or not channel:
        raise SendFailed("slack: the message answered names no channel", outcome="permanent")
    return channel, thread_ts if isinstance(thread_ts, str) and thread_ts else None


def _carries(message: Any, client_id: str) -> bool:
    if not isinstance(message, dict) or not isinstance(message.get("ts"), str):
        return False
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != METADATA_EVENT:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, dict) and payload.get("client_id") == client_id


def _call(config: SlackOutbound, http_method: str, method: str, **kwargs: Any) -> dict[str, Any]:
    """One Web API call; Slack's ``ok: false`` as ``SendFailed`` (module docstring)."""
    response = call(
        "slack",
        http_method,
        f"{config.api_url.rstrip('/')}/{method}",
        timeout_s=config.timeout_s,
        headers={"Authorization": f"Bearer {config.bot_token}"},
        **kwargs,
    )
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SendFailed(f"slack: {method} answered 2xx without a JSON object", outcome="uncertain")
    if answer.get("ok") is True:
        return answer
    error = str(answer.get("error") or "unknown_error")[:200]
    outcome: Outcome = "permanent"
    if error in RETRIED:
        outcome = "retry"
    elif error in MAYBE_POSTED:
        outcome = "uncertain"
    detail = f"slack: {method}: {error}"
    if answer.get("needed"):  # missing_scope names the scope the token lacks
        detail += f" (needs scope {str(answer['needed'])[:100]})"
    retry_after = response.headers.get("retry-after", "")
    raise SendFailed(
        detail,
        outcome=outcome,
        retry_after_s=float(retry_after) if retry_after.isdigit() else None,
    )
