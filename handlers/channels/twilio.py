"""Twilio Messaging webhooks: SMS, MMS and WhatsApp through Twilio (inbox ``channel: "chat"``).

Authenticity (https://www.twilio.com/docs/usage/webhooks/webhooks-security):
``X-Twilio-Signature`` = base64 HMAC-SHA1 with the inbox's ``auth_token`` of the full URL Twilio
called followed by every POST parameter, sorted by name, name and value concatenated. The form
has to be read to check it, on the event loop: it is refused (413) beyond ``MAX_FORM_BYTES`` or
INBOXSYNC_MAX_FORM_PARTS fields before it is decoded, and parsed once more, the same way, by
``accept``. Behind a proxy the URL the request
arrives at is not the one Twilio signed: the inbox secret ``public_url`` gives the public one
(``https://support.example.com/webhooks/7``); the query string of the request is appended to it
unless ``public_url`` has its own. Twilio signs no time: a replayed request is refused by nothing
here, and stores nothing new (the ``MessageSid`` is the message's identity; statuses only move
forward).

Two kinds of post, one payload each (schemas/twilio.py):

- an incoming message: identity ``twilio:<MessageSid>`` (Twilio retries a webhook it got no 2xx
  for, with the same ``MessageSid``: stored once). Sender: the contact's number in E.164
  (handlers/channels/phones.py), so SMS and WhatsApp from one phone are one contact; thread key
  ``twilio:<our E.164>:<their E.164>`` for SMS and ``twilio:whatsapp:<ours>:<theirs>`` for
  WhatsApp (another conversation: the customer chose another app, and replies must go back
  through it). Twilio gives no time for an incoming message: ``sent_at`` is when we received it.
- a status callback of one of our replies (``MessageStatus``): ``sent``, ``delivered``, ``read``
  as such, ``undelivered`` / ``failed`` / ``canceled`` as failed with the ``ErrorCode``;
  ``queued``, ``sending`` and the like say nothing new and are answered 2xx with nothing kept.

Twilio sends no echo of the messages we send, and has no edits or deletions.

Media: ``MediaUrl<n>`` on ``api.twilio.com``, which redirects to the media CDN:
``mms.twiliocdn.com`` when the account enforces HTTP auth on media, ``s3-external-1.amazonaws.com``
for older public media (Twilio help center, "Protect Media Access with HTTP Basic
Authentication"); the redirect is followed without the credentials (handlers/media.py), and only
to those hosts. Fetched with HTTP basic auth from the inbox's secrets (the worker that fetches
media reads those, not the outbound setting): ``api_key_sid`` and ``api_key_secret`` if given
(Twilio's advice for production), else the account SID the media URL names and ``auth_token``
(the token the webhook is signed with: the same account's). They are sent only to a URL with the
path of a Media resource, never to the CDN or anywhere else a ``MediaUrl`` could point.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import mimetypes
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import TypeAdapter, ValidationError

from handlers.channels.base import (
    Accepted,
    PayloadError,
    SignatureError,
    TooLarge,
    WebhookRequest,
    configured,
    constant_time_equal,
    describe,
)
from handlers.channels.phones import e164
from schemas.inbound import DeliveryUpdate, InboundMessage, MediaRef, Normalized
from schemas.twilio import TwilioMessage, TwilioPayload, TwilioStatus
from settings import get_settings

if TYPE_CHECKING:
    from handlers.media import Get

SIGNATURE_HEADER = "x-twilio-signature"
URLENCODED = "application/x-www-form-urlencoded"
PAYLOAD: TypeAdapter[TwilioMessage | TwilioStatus] = TypeAdapter(TwilioPayload)
# https://www.twilio.com/docs/messaging/api/message-resource#message-status-values. The states
# before "sent" (accepted, scheduled, queued, sending) add nothing to what the reply shows.
STATES = {
    "sent": "sent",
    "delivered": "delivered",
    "partially_delivered": "delivered",
    "read": "read",
    "undelivered": "failed",
    "failed": "failed",
    "canceled": "failed",
}
INBOUND_STATES = frozenset({"received", "receiving"})
# A Twilio post is a few kilobytes (a Body of at most 1,600 characters, ten media URLs): a form
# this large is not Twilio's, and is refused before it is decoded, whatever the body limit.
MAX_FORM_BYTES = 256 * 1024
# The path of a Media resource (https://www.twilio.com/docs/messaging/api/media-resource): the
# only URL the credentials are sent to.
_MEDIA_PATH = re.compile(
    r"/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/Messages/[A-Z]{2}[0-9a-fA-F]{32}"
    r"/Media/ME[0-9a-fA-F]{32}"
)


def sign(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """What Twilio puts in ``X-Twilio-Signature``: base64 HMAC-SHA1 of the URL and the sorted
    parameters (a name given twice contributes each distinct value, sorted, as Twilio's own
    helper libraries compute it)."""
    values: dict[str, set[str]] = defaultdict(set)
    for name, value in params:
        values[name].add(value)
    data = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signed_url(request_url: str, public_url: str | None) -> str:
    """The URL Twilio signed: the inbox's ``public_url`` (with the request's query string unless
    it has one of its own), else the URL the request arrived at."""
    if not public_url:
        return request_url
    if "?" in public_url:
        return public_url
    query = urlsplit(request_url).query
    return f"{public_url}?{query}" if query else public_url


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


class TwilioAdapter:
    name = "twilio"
    channels = frozenset({"chat"})
    blocking = False
    # ``inboxsync ingest`` of saved webhook bodies: they are forms.
    saved_content_type = URLENCODED
    media_hosts = (
        r"api\.twilio\.com",
        r"mms\.twiliocdn\.com",
        r"s3-external-1\.amazonaws\.com",
    )

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        token = configured(secrets, "auth_token")
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not given:
            raise SignatureError("missing X-Twilio-Signature header")
        try:
            params = read_form(request.headers.get("content-type", ""), request.body)
        except PayloadError as exc:
            raise SignatureError(f"no signature to check: {exc}") from None
        public_url = secrets.get("public_url")
        url = signed_url(request.url, str(public_url) if public_url else None)
        if not constant_time_equal(given.strip(), sign(token, url, params)):
            raise SignatureError("signature does not match")

    def accept(self, request: WebhookRequest) -> Accepted:
        fields = _unique(read_form(request.headers.get("content-type", ""), request.body))
        item = parse_fields(fields)
        payloads = [] if item is None else [item.model_dump(mode="json", by_alias=True)]
        # Twilio expects TwiML back: an empty <Response/> answers nothing to the customer (JSON
        # makes Twilio log error 12300; plain text would be texted back). Nothing kept is still
        # a 2xx: Twilio would retry a refusal.
        return Accepted(
            payloads=payloads, reply_text=EMPTY_TWIML, reply_type="text/xml", status=200
        )

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> Sequence[Normalized]:
        item = PAYLOAD.validate_python(payload)
        if isinstance(item, TwilioStatus):
            update = _delivery_update(inbox_id, received_at, item)
            return [update] if update is not None else []
        return [_inbound(inbox_id, received_at, item)] if _has_content(item) else []

    def fetch_media(self, ref: MediaRef, secrets: Mapping[str, Any], get: Get) -> tuple[bytes, str]:
        """The file at ``MediaUrl<n>``, with HTTP basic auth (see the module's docstring)."""
        from handlers.media import MediaError  # handlers.media imports the senders, and so this

        resource = _MEDIA_PATH.fullmatch(urlsplit(ref.url).path)
        if resource is None:
            # Not Twilio's media resource: no credentials go there (it is on an allowed host, or
            # ``get`` refuses it; public media on the CDN needs none).
            data, content_type = get(ref.url, {})
            return data, content_type or ref.content_type
        user, password = secrets.get("api_key_sid"), secrets.get("api_key_secret")
        if not (user and password):
            user, password = resource.group(1), secrets.get("auth_token")
        if not password:
            raise MediaError("no Twilio credentials to fetch the file with (auth_token secret)")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        data, content_type = get(ref.url, {"Authorization": f"Basic {basic}"})
        return data, content_type or ref.content_type


# ---- the form ----------------------------------------------------------------------------------


def read_form(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The fields of an urlencoded body, in order, blank ones included (Twilio signs them too).
    ``TooLarge`` beyond ``MAX_FORM_BYTES`` or INBOXSYNC_MAX_FORM_PARTS fields, counted before
    anything is decoded; ``PayloadError`` if it is not an urlencoded form of UTF-8 text."""
    if content_type.split(";")[0].strip().lower() != URLENCODED:
        raise PayloadError(f"Twilio posts {URLENCODED}, not {content_type or 'nothing'!r}")
    if len(body) > MAX_FORM_BYTES:
        raise TooLarge(f"a form over {MAX_FORM_BYTES} bytes: Twilio posts a few kilobytes")
    limit = get_settings().max_form_parts
    if body.count(b"&") + 1 > limit:
        raise TooLarge(f"more than {limit} form fields (INBOXSYNC_MAX_FORM_PARTS)")
    try:
        # An urlencoded body holds no whitespace of its own: a saved file's final newline goes.
        text = body.decode("ascii").strip()
        return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise PayloadError("the form is not percent-encoded UTF-8") from None


def _unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """A name given twice could be read one way here and signed another: refused."""
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise PayloadError(f"form field {name!r} given twice", field=name)
        fields[name] = value
    return fields


def parse_fields(fields: dict[str, str]) -> TwilioMessage | TwilioStatus | None:
    """The form as an incoming message or a status callback; None for what changes nothing (a
    status before "sent", an empty message). ``PayloadError`` (422) for a form that is neither."""
    status = fields.get("MessageStatus")
    try:
        if status is not None and status not in INBOUND_STATES:
            status_item = TwilioStatus.model_validate(fields)
            return status_item if status_item.message_status in STATES else None
        message = TwilioMessage.model_validate({**fields, "media": _media_fields(fields)})
    except ValidationError as exc:
        raise PayloadError(describe(exc)) from None
    return message if _has_content(message) else None


def _media_fields(fields: dict[str, str]) -> list[dict[str, str]]:
    raw = fields.get("NumMedia") or "0"
    if not raw.isdigit() or int(raw) > 10:
        raise PayloadError("NumMedia is not a number from 0 to 10", field="NumMedia")
    media = []
    for n in range(int(raw)):
        url = fields.get(f"MediaUrl{n}")
        if not url:
            raise PayloadError(f"NumMedia is {raw} but MediaUrl{n} is missing", field="NumMedia")
        kind = fields.get(f"MediaContentType{n}") or "application/octet-stream"
        media.append({"url": url, "content_type": kind})
    return media


# ---- normalizing -------------------------------------------------------------------------------


def _has_content(message: TwilioMessage) -> bool:
    return bool(message.body or message.media or message.latitude is not None)


def _channel(address: str) -> tuple[str, str]:
    """``whatsapp:+14155550100`` → ("whatsapp", "+14155550100"); a bare number is SMS (or MMS)."""
    prefix, sep, rest = address.partition(":")
    if sep and prefix.isalpha():
        return prefix.lower(), rest
    return "sms", address


def _handle(channel: str, address: str) -> str:
    """E.164 for a phone number; anything else (a short code, a Messenger id) as Twilio wrote it,
    under its channel's name."""
    try:
        return e164(address)
    except ValueError:
        return address if channel == "sms" else f"{channel}:{address}"


def _inbound(inbox_id: int, received_at: datetime, m: TwilioMessage) -> InboundMessage:
    channel, theirs = _channel(m.from_)
    ours = _handle(channel, _channel(m.to)[1])
    sender = _handle(channel, theirs)
    scope = "twilio" if channel == "sms" else f"twilio:{channel}"
    reply_to: dict[str, Any] = {"to": m.from_, "from": m.to}
    chat: dict[str, Any] = {"provider": "twilio", "channel": channel, "reply_to": reply_to}
    if m.messaging_service_sid:
        chat["messaging_service_sid"] = m.messaging_service_sid
    return InboundMessage(
        inbox_id=inbox_id,
        external_id=f"twilio:{m.message_sid}",
        provider_id=m.message_sid,
        sender=sender[:320],
        thread_key=f"{scope}:{ours}:{sender}"[:500],
        contact_name=m.profile_name[:200] if m.profile_name else None,
        text=_text(m),
        # Twilio's webhook carries no time of its own.
        sent_at=received_at,
        received_at=received_at,
        headers={"chat": chat},
        media=[
            _ref(m.message_sid, n, item.url, item.content_type) for n, item in enumerate(m.media)
        ],
    )


def _text(m: TwilioMessage) -> str:
    if m.body:
        return m.body
    if m.latitude is not None and m.longitude is not None:
        place = " ".join(p for p in (m.label, m.address) if p)
        return f"[location {m.latitude:.6f}, {m.longitude:.6f}{' ' + place if place else ''}]"
    return ""


def _ref(message_sid: str, n: int, url: str, content_type: str) -> MediaRef:
    kind = content_type.split(";")[0].strip().lower()
    extension = mimetypes.guess_extension(kind) or ""
    return MediaRef(url=url, content_type=kind, filename=f"{message_sid}-{n}{extension}")


def _delivery_update(
    inbox_id: int, received_at: datetime, status: TwilioStatus
) -> DeliveryUpdate | None:
    state = STATES.get(status.message_status)
    if state is None:
        return None
    error = None
    if state == "failed":
        code = status.error_code or "no code"
        error = f"Twilio {status.message_status}, error {code}"
        if status.error_message:
            error += f": {status.error_message}"
    return DeliveryUpdate(
        inbox_id=inbox_id,
        provider_message_id=status.message_sid,
        state=state,  # type: ignore[arg-type]
        error=error[:2000] if error else None,
        # A status callback carries no time either: when it reached us.
        at=received_at,
    )
