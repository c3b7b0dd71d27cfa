"""WhatsApp Cloud API: ``POST {api_url}/{phone_number_id}/messages``, a text message, with the
access token as a bearer token.
https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/text-messages

- Where: ``to`` is the customer's ``wa_id`` and the number it goes from is the one they wrote to
  (``reply_to.phone_number_id`` of their message; the setting's ``phone_number_id`` if it names
  none): one app receives every number of the business.
- The provider's id of the reply: ``messages[0].id`` (a wamid), which the status webhooks name.
  ``biz_opaque_callback_data`` carries our ``client_id``, which Meta returns in those webhooks.
- Failures: Graph API errors are ``{"error": {"code", "message", …}}``. Throttling comes as a
  4xx with a code of its own (4, 80007, 130429 throughput, 131056 pair rate, 2 / 131016 service
  unavailable: https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes),
  retried like a 429; other 4xx are final (131047: more than 24 hours since the customer wrote,
  only a template may be sent; 190: the access token expired).
- No lookup: Cloud API cannot list the messages of a number, so ``find`` raises
  ``LookupUnsupported``: a reply whose outcome is unknown ends ``failed`` ("outcome unknown") and
  an agent resends it explicitly, rather than the customer getting it twice.
"""

from __future__ import annotations

from typing import Any

import requests

from handlers.outbound.base import LookupUnsupported, SendFailed, call
from schemas.outbound import OutboundChat, WhatsAppOutbound

# https://developers.facebook.com/documentation/business-messaging/whatsapp/messages/text-messages:
# "maximum 4096 characters".
MAX_TEXT = 4096
THROTTLED = frozenset({2, 4, 80007, 130429, 131016, 131056})


class WhatsAppSender:
    via = "whatsapp"

    def send(self, chat: OutboundChat, config: WhatsAppOutbound) -> str:
        if len(chat.text) > MAX_TEXT:
            raise SendFailed(
                f"whatsapp: the reply has {len(chat.text)} characters, WhatsApp takes at most "
                f"{MAX_TEXT} in one message: shorten or split it",
                outcome="permanent",
            )
        to = chat.target.get("to")
        if not isinstance(to, str) or not to:
            raise SendFailed("whatsapp: the message answered names no wa_id", outcome="permanent")
        number = chat.target.get("phone_number_id") or config.phone_number_id
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"body": chat.text, "preview_url": False},
            "biz_opaque_callback_data": chat.client_id,
        }
        response = call(
            "whatsapp",
            "POST",
            f"{config.api_url.rstrip('/')}/{number}/messages",
            timeout_s=config.timeout_s,
            json=body,
            headers={"Authorization": f"Bearer {config.access_token}"},
            hooks={"response": [_throttling_as_429]},
        )
        try:
            answer = response.json()
            wamid = answer["messages"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            wamid = None
        if not isinstance(wamid, str) or not wamid:
            # A 2xx is Meta's "accepted"; without its id we cannot say which message it is.
            raise SendFailed(
                f"whatsapp: an answer without messages[0].id: {response.text[:300]}",
                outcome="uncertain",
            )
        return wamid

    def find(self, chat: OutboundChat, config: WhatsAppOutbound) -> str | None:
        raise LookupUnsupported("WhatsApp Cloud API cannot be asked whether a message was sent")


def _throttling_as_429(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Meta answers throttling with a 400 and an error code (module docstring): shown to ``call``
    as the 429 it means, so it is retried with backoff instead of failing the reply."""
    if response.status_code < 400 or response.status_code >= 500 or response.status_code == 429:
        return
    try:
        code = int(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return
    if code in THROTTLED:
        response.status_code = 429
