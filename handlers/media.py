"""Files chat messages carry, fetched from the provider's own hosts into the blob store.

A chat webhook names its files by URL (Twilio's ``MediaUrl0``) or by an id to look up (WhatsApp,
Telegram, Slack). The worker fetches them before the message's transaction opens
(handlers/pipeline.py ``_prepare``), and only:

- from hosts the provider's adapter allows (``media_hosts``, regular expressions matched against
  the whole host name; the operator may replace them, ``INBOXSYNC_MEDIA_HOSTS``, e.g. with a
  stand-in on loopback): a webhook cannot make a worker fetch from anywhere else;
- through the connections of handlers/outbound/transport.py: the address is resolved once and
  checked (no loopback, private or link-local address unless ``INBOXSYNC_OUTBOUND_ALLOW_PRIVATE``),
  no proxy, redirects followed only to another allowed host, at most three;
- up to ``INBOXSYNC_MAX_MEDIA_BYTES`` each, read in chunks and cut off beyond.

An adapter that needs credentials or a lookup implements ``fetch_media(ref, secrets, get)``,
calling ``get(url, headers)`` as often as it needs. A file that cannot be fetched is listed with
``stored: false`` and the reason in the message's ``problems``; the message is stored all the
same (the text matters more than the photo).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from handlers import netguard
from handlers.outbound import base
from schemas.inbound import InboundMessage, MediaRef
from settings import get_settings

Get = Callable[[str, Mapping[str, str]], tuple[bytes, str]]
MAX_REDIRECTS = 3


class MediaError(Exception):
    """Why a file was not fetched (said in the message's problems)."""


def allowed_hosts(provider: str, adapter: Any) -> list[str]:
    configured: dict[str, list[str]] = get_settings().media_hosts
    return configured.get(provider, list(getattr(adapter, "media_hosts", ())))


def getter(hosts: list[str], timeout_s: float = 10.0) -> Get:
    """A ``get(url, headers) -> (bytes, content type)`` held to ``hosts`` and the size limit."""
    limit = get_settings().max_media_bytes

    def get(url: str, headers: Mapping[str, str]) -> tuple[bytes, str]:
        for _ in range(MAX_REDIRECTS + 1):
            _check_host(url, hosts)
            try:
                response = base.http().get(
                    url,
                    headers=dict(headers),
                    timeout=timeout_s,
                    stream=True,
                    allow_redirects=False,
                )
            except netguard.TargetError as exc:
                raise MediaError(f"refused: {exc}") from None
            except requests.RequestException as exc:
                raise MediaError(f"could not fetch: {type(exc).__name__}") from None
            with response:
                if response.is_redirect and response.headers.get("location"):
                    url = urljoin(url, response.headers["location"])
                    headers = {}  # credentials are for the provider's host, not the next one
                    continue
                if response.status_code != 200:
                    raise MediaError(f"the provider answered HTTP {response.status_code}")
                return _read(response, limit), response.headers.get("content-type", "")
        raise MediaError(f"more than {MAX_REDIRECTS} redirects")

    return get


def _check_host(url: str, hosts: list[str]) -> None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or not any(re.fullmatch(h, host) for h in hosts):
        raise MediaError(f"{host or url[:60]!r} is not one of the provider's media hosts")


def _read(response: requests.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise MediaError(f"larger than {limit} bytes (INBOXSYNC_MAX_MEDIA_BYTES)")
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise MediaError(f"larger than {limit} bytes (INBOXSYNC_MAX_MEDIA_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def fetch(
    message: InboundMessage, provider: str, adapter: Any, secrets: Mapping[str, Any]
) -> InboundMessage:
    """``message`` with its files fetched: their bytes in ``blobs``, each listed under
    ``headers["chat"]["attachments"]`` like a mail's attachments (stored or not, and why)."""
    if not message.media:
        return message
    get = getter(allowed_hosts(provider, adapter))
    fetch_one = getattr(adapter, "fetch_media", None)
    listed, blobs, problems = [], [], []
    for ref in message.media:
        try:
            data, content_type = fetch_one(ref, secrets, get) if fetch_one else get(ref.url, {})
        except MediaError as exc:
            listed.append(_listed(ref, None, ref.content_type))
            problems.append(f"attachment {ref.filename or ref.url[:80]}: {exc}")
            continue
        blobs.append(data)
        listed.append(_listed(ref, data, content_type or ref.content_type))
    chat = {**(message.headers.get("chat") or {}), "attachments": listed}
    if problems:
        chat["problems"] = [*(chat.get("problems") or []), *problems]
    return message.model_copy(
        update={"headers": {**message.headers, "chat": chat}, "blobs": [*message.blobs, *blobs]}
    )


def _listed(ref: MediaRef, data: bytes | None, content_type: str) -> dict[str, Any]:
    return {
        "filename": ref.filename or "attachment",
        "content_type": content_type.split(";")[0].strip() or "application/octet-stream",
        "size": len(data) if data is not None else 0,
        "sha256": hashlib.sha256(data).hexdigest() if data is not None else "",
        "stored": data is not None,
        "source": ref.url,
    }
