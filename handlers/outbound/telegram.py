"""Telegram: ``sendMessage`` into the customer's chat (https://core.telegram.org/bots/api#sendmessage).

- Where: ``chat_id`` (and the forum topic, ``message_thread_id``; and for a Telegram Business
  chat, ``business_connection_id``, so the reply comes from the business account) as the
  channel adapter kept them (handlers/channels/telegram.py). In a group the reply quotes the
  customer's message (``reply_parameters``: who is answered); in a private chat it does not,
  and if that message was deleted meanwhile the reply goes out all the same.
- The provider's id of the reply: ``result.message_id``.
- Failures: Telegram answers ``{"ok": false, "error_code", "description", "parameters"}``. A
  429's wait is in ``parameters.retry_after``, not in a ``Retry-After`` header
  (https://core.telegram.org/bots/api#responseparameters): it is copied there for ``call``. 400
  (chat not found, text too long) and 403 (the user blocked the bot) are final.
- No lookup: the Bot API cannot list a chat's messages, so ``find`` raises ``LookupUnsupported``
  and a reply whose outcome is unknown fails with that reason, never sent twice.
- The bot token is part of every URL (``/bot<token>/…``): it is cut out of every error we keep,
  and out of urllib3's debug log of request lines (``TokenFilter``), so it is never logged.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import requests

from handlers.outbound.base import LookupUnsupported, SendFailed, call
from schemas.outbound import OutboundChat, TelegramOutbound

DEFAULT_API_URL = "https://api.telegram.org"
# https://core.telegram.org/bots/api#sendmessage: "1-4096 characters after entities parsing".
MAX_TEXT = 4096
# A bot token in a URL path: /bot<digits>:<secret>/ (https://core.telegram.org/bots/api#authorizing-your-bot).
_TOKEN_IN_PATH = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


def redact(text: str, token: str | None = None) -> str:
    """``text`` without the bot token (the given one, and anything shaped like one in a path)."""
    if token:
        text = text.replace(token, "<bot-token>")
    return _TOKEN_IN_PATH.sub("/bot<bot-token>", text)


class TokenFilter(logging.Filter):
    """Takes bot tokens out of a log record before it is formatted (urllib3 logs every request
    line, path included, at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _install_filter() -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, TokenFilter) for f in logger.filters):
        logger.addFilter(TokenFilter())


_install_filter()


class TelegramSender:
    via = "telegram"

    def send(self, chat: OutboundChat, config: TelegramOutbound) -> str:
        if len(chat.text) > MAX_TEXT:
            raise SendFailed(
                f"telegram: the reply has {len(chat.text)} characters, Telegram takes at most "
                f"{MAX_TEXT} in one message: shorten or split it",
                outcome="permanent",
            )
        answer = _call(config, "sendMessage", _body(chat))
        result = answer.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        if answer.get("ok") is not True or message_id is None:
            # A 2xx is Telegram's "sent"; without an id we cannot say which message it is.
            raise SendFailed(
                f"telegram: unexpected answer: {str(answer)[:300]}", outcome="uncertain"
            )
        return str(message_id)

    def find(self, chat: OutboundChat, config: TelegramOutbound) -> str | None:
        raise LookupUnsupported("Telegram's Bot API cannot be asked whether a message was sent")


def _body(chat: OutboundChat) -> dict[str, Any]:
    target = chat.target
    if "chat_id" not in target:
        raise SendFailed("telegram: the message answered names no chat", outcome="permanent")
    body: dict[str, Any] = {"chat_id": target["chat_id"], "text": chat.text}
    if target.get("message_thread_id") is not None:
        body["message_thread_id"] = target["message_thread_id"]
    if target.get("business_connection_id"):
        body["business_connection_id"] = target["business_connection_id"]
    if target.get("chat_type") not in (None, "private") and target.get("message_id") is not None:
        body["reply_parameters"] = {
            "message_id": target["message_id"],
            "allow_sending_without_reply": True,
        }
    return body


def _call(config: TelegramOutbound, method: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{config.api_url.rstrip('/')}/bot{config.bot_token}/{method}"
    try:
        response = call(
            "telegram",
            "POST",
            url,
            timeout_s=config.timeout_s,
            json=body,
            hooks={"response": [_retry_after_from_body]},
        )
    except SendFailed as exc:
        # The URL holds the token, and connection errors quote the URL.
        raise SendFailed(
            redact(str(exc), config.bot_token),
            outcome=exc.outcome,
            retry_after_s=exc.retry_after_s,
        ) from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise SendFailed("telegram: a 2xx answer that is not a JSON object", outcome="uncertain")
    return answer


def _retry_after_from_body(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Telegram's 429 says how long to wait in ``parameters.retry_after`` (seconds)."""
    if response.status_code != 429 or "retry-after" in response.headers:
        return
    try:
        seconds = int(response.json()["parameters"]["retry_after"])
    except (ValueError, KeyError, TypeError):
        return
    response.headers["Retry-After"] = str(max(seconds, 0))
