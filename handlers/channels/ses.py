"""Amazon SES receiving through an SNS topic: https://docs.aws.amazon.com/ses/latest/dg/receiving-email-action-sns.html

SNS posts JSON messages: a ``SubscriptionConfirmation`` when the endpoint is subscribed, then a
``Notification`` per mail, whose ``Message`` is SES's JSON with the raw mail in ``content``
(UTF-8, or base64 when the SNS action's encoding is BASE64).

Authenticity: every message is signed by SNS (SignatureVersion 1: SHA1withRSA, 2: SHA256withRSA)
over its fields in a fixed order, with the certificate at ``SigningCertURL``. That URL must be
https on an SNS host (``INBOXSYNC_SNS_CERT_HOSTS``); the message must be younger than
``INBOXSYNC_SNS_MAX_AGE_S``; its ``TopicArn`` must be one of the inbox's ``topic_arns`` (403
otherwise), and only then is a subscription confirmed (by fetching its ``SubscribeURL``, which
must be an SNS host too). Fetching is the edge of the network: both calls are injectable.

Malformed bodies (a field of the wrong JSON type, nesting deeper than the parser's limit) are a
422 naming the field, before any certificate is fetched (schemas/ses.py).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import ValidationError

from handlers.channels import mail
from handlers.channels.base import (
    Accepted,
    Forbidden,
    PayloadError,
    SignatureError,
    WebhookRequest,
    describe,
)
from handlers.email.parse import parse_raw
from schemas.inbound import InboundMessage
from schemas.ses import SesNotification, SnsMessage
from settings import get_settings

SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_FIELDS["UnsubscribeConfirmation"] = SIGNED_FIELDS["SubscriptionConfirmation"]


def string_to_sign(message: Mapping[str, str]) -> bytes:
    """What SNS signs: ``Key\\nValue\\n`` for each signed field present, in order."""
    keys = SIGNED_FIELDS[message["Type"]]
    return "".join(f"{k}\n{message[k]}\n" for k in keys if k in message).encode()


def _fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=5.0, follow_redirects=False)
    response.raise_for_status()
    return response.content


class SesAdapter:
    name = "ses"
    channels = frozenset({"email"})
    # verify may fetch a signing certificate and accept may confirm a subscription (network).
    blocking = True

    def __init__(
        self,
        fetch: Callable[[str], bytes] = _fetch,
        confirm: Callable[[str], Any] = _fetch,
    ) -> None:
        self._certificate = lru_cache(maxsize=32)(
            lambda url: x509.load_pem_x509_certificate(fetch(url))
        )
        self._confirm = confirm

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None:
        message = _sns_message(request.body)
        settings = get_settings()
        url = message.signing_cert_url
        if not _sns_url(url, settings.sns_cert_hosts) or not urlsplit(url).path.endswith(".pem"):
            raise SignatureError(f"SigningCertURL {url[:200]!r} is not an SNS certificate URL")
        try:
            stamp = datetime.fromisoformat(message.timestamp.replace("Z", "+00:00"))
            age = now - stamp.timestamp()
        except ValueError:
            raise SignatureError("malformed Timestamp") from None
        if age > settings.sns_max_age_s:
            raise SignatureError(f"message older than {settings.sns_max_age_s} s")
        self._check_signature(message, url)
        if message.topic_arn not in set(secrets.get("topic_arns", [])):
            raise Forbidden(f"topic {message.topic_arn!r} is not one of this inbox's")

    def _check_signature(self, message: SnsMessage, url: str) -> None:
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(message.signature_version)
        if algorithm is None:
            raise SignatureError("unknown SignatureVersion")
        try:
            certificate = self._certificate(url)
            signature = base64.b64decode(message.signature, validate=True)
        except (httpx.HTTPError, ValueError, binascii.Error) as exc:
            raise SignatureError(f"cannot check the signature: {exc}") from None
        if certificate.not_valid_after_utc < datetime.now(UTC):
            raise SignatureError("the signing certificate has expired")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureError("the signing certificate's key is not RSA")
        signed = string_to_sign(message.signed_fields())
        try:
            key.verify(signature, signed, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SignatureError("signature does not match") from None

    def accept(self, request: WebhookRequest) -> Accepted:
        message = _sns_message(request.body)
        if message.type == "SubscriptionConfirmation":
            url = message.subscribe_url or ""
            if not _sns_url(url, get_settings().sns_cert_hosts):
                raise PayloadError("SubscribeURL is not an SNS URL", field="SubscribeURL")
            try:
                self._confirm(url)
            except httpx.HTTPError as exc:  # SNS sends the confirmation again; answer 503-like
                raise PayloadError(f"confirming the subscription failed: {exc}") from None
            return Accepted(reply={"confirmed": message.topic_arn})
        if message.type == "UnsubscribeConfirmation":
            return Accepted(reply={"unsubscribed": message.topic_arn})
        try:
            ses = SesNotification.model_validate_json(message.message)
        except ValidationError as exc:
            raise PayloadError(
                f"Message is not SES's JSON: {describe(exc)}", field="Message"
            ) from None
        if ses.notification_type != "Received" or ses.content is None:
            raise PayloadError("not a received mail with its content (SNS action, not S3?)")
        payload = {"sns_message_id": message.message_id, "ses": ses.model_dump(by_alias=True)}
        return Accepted(payloads=[payload])

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> list[InboundMessage]:
        ses = payload.get("ses", {})
        content = ses.get("content", "")
        encoding = ses.get("receipt", {}).get("action", {}).get("encoding", "UTF8")
        try:
            raw = (
                base64.b64decode(content)
                if encoding == "BASE64"
                else content.encode("utf-8", "surrogateescape")
            )
        except binascii.Error:
            raise PayloadError("content is not base64 although the encoding says so") from None
        return mail.one_message(
            lambda: parse_raw(raw),
            inbox_id=inbox_id,
            received_at=received_at,
            provider=self.name,
            provider_id=ses.get("mail", {}).get("messageId"),
            fallback_id=raw,
        )


def _sns_message(body: bytes) -> SnsMessage:
    try:
        return SnsMessage.model_validate_json(body)
    except ValidationError as exc:
        raise PayloadError(f"not an SNS message: {describe(exc)}") from None


def _sns_url(url: str, hosts: list[str]) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme == "https" and any(re.fullmatch(pattern, host) for pattern in hosts)
