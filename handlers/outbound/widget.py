"""The website widget: an agent's reply is posted to the site's ``reply_url``, signed the
Standard Webhooks way (body and contract: schemas/widget.py ``WidgetReply``).

The ``webhook-id`` of the post is the reply's ``client_id``, the body is the same on every
attempt, and the site deduplicates by ``webhook-id`` (the contract, as Standard Webhooks asks of
every consumer). So where a provider would be searched, ``find`` posts again: the site answers
2xx for a reply it already has without showing it twice, and 2xx for one it never got, showing
it now. Either way the visitor sees it once, which a lookup followed by a send could promise no
better. The provider's id of the reply is our ``client_id`` (the site names it in
``reply.status`` events).
"""

from __future__ import annotations

import binascii
import time
from datetime import UTC, datetime

import orjson
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from handlers.outbound.base import SendFailed, call
from schemas.outbound import OutboundChat, WidgetOutbound
from schemas.widget import WidgetReply

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)


def signer(secret: str) -> Webhook:
    """The Standard Webhooks signer of a ``whsec_<base64>`` secret; ``ValueError`` if it is not
    one (the message names no part of it)."""
    try:
        return Webhook(secret)
    except (binascii.Error, EmptyWebhookSecretError, RuntimeError):
        raise ValueError("not a Standard Webhooks secret (whsec_ and base64)") from None


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body``: one ``v1,<base64 HMAC-SHA256>`` of
    ``{id}.{timestamp}.{body}``, by the ``standardwebhooks`` package. ``ValueError`` if the secret
    is not one or the body is not UTF-8 (which the package signs as text)."""
    stamp = datetime.fromtimestamp(timestamp, UTC)
    return signer(secret).sign(webhook_id, stamp, body.decode("utf-8"))


class WidgetSender:
    via = "widget"

    def send(self, chat: OutboundChat, config: WidgetOutbound) -> str:
        session_id = chat.target.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise SendFailed("widget: the message answered names no session", outcome="permanent")
        reply = WidgetReply(
            session_id=session_id, client_id=chat.client_id, text=chat.text, sent_at=chat.date
        )
        body = orjson.dumps(reply.model_dump(mode="json"))
        stamp = int(time.time())
        try:
            signature = sign(config.signing_secret, chat.client_id, stamp, body)
        except ValueError as exc:
            raise SendFailed(f"widget: signing_secret is {exc}", outcome="permanent") from None
        call(
            "widget",
            "POST",
            config.reply_url,
            timeout_s=config.timeout_s,
            data=body,
            headers={
                "Content-Type": "application/json",
                ID_HEADER: chat.client_id,
                TIMESTAMP_HEADER: str(stamp),
                SIGNATURE_HEADER: signature,
            },
        )
        return chat.client_id

    def find(self, chat: OutboundChat, config: WidgetOutbound) -> str | None:
        """Post again: the site's deduplication by ``webhook-id`` is the lookup (module doc)."""
        return self.send(chat, config)
