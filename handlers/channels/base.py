"""The seam every provider plugs into: one adapter per provider, each doing the same three things.

1. ``verify`` the request's authenticity against the inbox's secrets (before anything is parsed);
2. ``accept`` it at the HTTP edge: a cheap structural check that turns the body into the JSON
   payloads to enqueue (one webhook may carry several messages), or a handshake answer;
3. ``normalize`` a payload, in a worker, into ``InboundMessage`` objects.

Adding a provider is one module here, one schema in schemas/, one line in the registry
(handlers/channels/__init__.py), one fixture folder and one test file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.inbound import Normalized
from settings import get_settings

ModelT = TypeVar("ModelT", bound=BaseModel)


class WebhookError(Exception):
    """Base of the errors an adapter raises; ``status`` is the HTTP answer (api/errors.py)."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SignatureError(WebhookError):
    status = 401


class PayloadError(WebhookError):
    status = 422


class TooLarge(WebhookError):
    """More parts or header lines than the edge parses (INBOXSYNC_MAX_FORM_PARTS, …)."""

    status = 413


class Forbidden(WebhookError):
    """Authentic, but not for this inbox (an SNS topic it does not subscribe to, say)."""

    status = 403


@dataclass(frozen=True)
class WebhookRequest:
    method: str
    url: str
    headers: Mapping[str, str]  # lower-cased names
    query: Mapping[str, str]
    body: bytes
    # The inbox of the URL, for the checks a body can fail against it (the generic webhook's
    # ``inbox``); None where there is no URL (``inboxsync ingest`` of saved files).
    inbox_id: int | None = None


@dataclass(frozen=True)
class Accepted:
    """What the edge does with a verified request: enqueue ``payloads`` and/or answer ``reply``."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    reply: Any = None
    # A handshake answered in plain text (WhatsApp's hub.challenge), instead of ``reply``'s JSON.
    reply_text: str | None = None
    # Its content type (Twilio wants TwiML: text/xml; a text/plain answer would be texted back).
    reply_type: str = "text/plain; charset=utf-8"
    # The status to answer with, where a provider insists (Slack wants 200); default 202/200.
    status: int | None = None
    # A one-time token of the request (Mailgun's): the journal stores a request with a token it
    # has seen within the signature window only once, so a replay is answered but changes nothing.
    replay_key: str | None = None


class ChannelAdapter(Protocol):
    name: str
    channels: frozenset[str]
    # The HTTP methods its webhook takes (the ingress answers 405 to others): POST, and GET for
    # providers that verify a subscription with a GET handshake (WhatsApp Cloud). Optional:
    # ``methods_of`` reads it, POST when absent. Also optional: ``saved_content_type``, the
    # content type ``inboxsync ingest`` gives a saved payload (default application/json).
    # True if verify/accept may wait on the network: the ingress then runs them in a thread
    # instead of on its event loop.
    blocking: bool

    def verify(self, request: WebhookRequest, secrets: Mapping[str, Any], now: float) -> None: ...

    def accept(self, request: WebhookRequest) -> Accepted: ...

    def normalize(
        self, inbox_id: int, received_at: datetime, payload: dict[str, Any]
    ) -> Sequence[Normalized]: ...


def methods_of(adapter: Any) -> frozenset[str]:
    methods: frozenset[str] = getattr(adapter, "methods", frozenset({"POST"}))
    return methods


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def hmac_sha256_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def configured(secrets: Mapping[str, Any], name: str) -> str:
    """The inbox's secret ``name``; without it no request can be verified."""
    value = secrets.get(name)
    if not value:
        raise SignatureError(f"inbox has no {name} configured")
    return str(value)


def stamped_signature(
    request: WebhookRequest, now: float, timestamp_header: str, signature_header: str
) -> tuple[str, str]:
    """A signature sent with the unix time it was made (Slack's, the generic webhook's): both
    headers, as given, once the time is within ``INBOXSYNC_WEBHOOK_TOLERANCE_SECONDS`` of
    ``now`` (a replayed request is refused after it)."""
    stamp = request.headers.get(timestamp_header, "")
    given = request.headers.get(signature_header, "")
    if not stamp or not given:
        raise SignatureError(f"missing {timestamp_header} or {signature_header} header")
    try:
        age = abs(now - int(stamp))  # OverflowError: an integer no float can hold
    except (ValueError, OverflowError):
        raise SignatureError(f"{timestamp_header} is not a unix time") from None
    tolerance = get_settings().webhook_tolerance_seconds
    if age > tolerance:
        raise SignatureError(f"timestamp outside the {tolerance} s tolerance window")
    return stamp, given


def check_basic_auth(request: WebhookRequest, user: object, password: object) -> None:
    """HTTP basic auth against the inbox's credentials, in constant time."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        given = ""
    given_user, _, given_password = given.partition(":")
    ok_user = constant_time_equal(given_user, str(user))
    ok_password = constant_time_equal(given_password, str(password))
    if scheme.lower() != "basic" or not (ok_user and ok_password):
        raise SignatureError("missing or wrong basic auth credentials")


def validated(model: type[ModelT], data: bytes | Mapping[str, Any]) -> ModelT:
    """``data`` (a JSON body, or a payload already decoded) as ``model``; a PayloadError that
    names what is wrong otherwise."""
    try:
        if isinstance(data, bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(describe(exc)) from None


def describe(exc: ValidationError, most: int = 5) -> str:
    """A pydantic error as one line: ``field.path: problem; …``, the first ``most`` problems
    (a body with ten thousand bad items gets a short answer)."""
    errors = exc.errors(include_url=False, include_input=False)
    line = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in errors[:most]
    )
    return line + (f"; and {len(errors) - most} more" if len(errors) > most else "")
