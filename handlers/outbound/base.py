"""The seam every outbound provider plugs into, and what its failures mean for a retry.

A sender does two things: ``send`` a mail (returning the provider's id for it) and ``find`` a mail
it may already have accepted (by our reply key or Message-ID), for the attempt after one whose
outcome we never learned. Which failures are safe to retry is the point of this module:

- ``retry``: the provider certainly did not take the mail (no connection, a 429, a 5xx answer);
- ``uncertain``: the request may have reached it (no answer in time, the connection dropped after
  the request went out); the next attempt asks ``find`` first and sends only if it is not there;
- ``permanent``: the provider refused the mail or our credentials; retrying changes nothing.

None of Postmark, Mailgun, SendGrid or SMTP takes an idempotency key on send; Postmark and Mailgun
can be searched for a sent mail, which is what ``find`` uses. SendGrid's search (Email Logs) is a
paid add-on and SMTP has none: for them ``find`` raises ``LookupUnsupported``.
"""

from __future__ import annotations

import threading
from typing import Any, Literal, Protocol

import requests

from handlers import netguard
from handlers.outbound import transport

Outcome = Literal["retry", "uncertain", "permanent"]


class SendFailed(Exception):
    def __init__(self, message: str, *, outcome: Outcome, retry_after_s: float | None = None):
        super().__init__(message)
        self.outcome = outcome
        self.retry_after_s = retry_after_s


class LookupUnsupported(Exception):
    """The provider cannot tell whether it has a mail."""


class Sender(Protocol):
    via: str

    def send(self, mail: Any, config: Any) -> str:
        """Send (an ``OutboundMail``, or an ``OutboundChat`` for chat providers); the
        provider's id of what it accepted."""
        ...

    def find(self, mail: Any, config: Any) -> str | None:
        """The provider's id of this reply if it has it (after an attempt with no answer), or
        None; ``LookupUnsupported`` if it cannot be asked."""
        ...


_local = threading.local()


def http() -> requests.Session:
    """One pooled HTTP session per thread (a worker process reuses its connections), connecting
    only to checked addresses (handlers/outbound/transport.py)."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = transport.session()
    return session


def call(provider: str, method: str, url: str, *, timeout_s: float, **kwargs: Any) -> Any:
    """An HTTP request to a provider's API; its failures as ``SendFailed``, 2xx as the response.

    A target netguard refuses fails for good: the setting has to change, not the weather."""
    try:
        response = http().request(
            method, url, timeout=(timeout_s, timeout_s), allow_redirects=False, **kwargs
        )
    except netguard.TargetRefused as exc:
        raise SendFailed(f"{provider}: refused target: {exc}", outcome="permanent") from None
    except netguard.Unresolvable as exc:
        raise SendFailed(f"{provider}: {exc}", outcome="retry") from None
    except requests.ConnectTimeout as exc:
        raise SendFailed(f"{provider}: connect timeout: {exc}", outcome="retry") from None
    except requests.ReadTimeout:
        raise SendFailed(
            f"{provider}: no answer within {timeout_s:g} s", outcome="uncertain"
        ) from None
    except requests.ConnectionError as exc:
        # Refused or unreachable: nothing was sent. Dropped mid-request: it may have been.
        outcome: Outcome = "retry" if transport.never_connected(exc) else "uncertain"
        raise SendFailed(f"{provider}: connection failed: {exc}", outcome=outcome) from None
    except requests.RequestException as exc:
        raise SendFailed(f"{provider}: request failed: {exc}", outcome="permanent") from None
    status = response.status_code
    if 200 <= status < 300:
        return response
    detail = f"{provider}: HTTP {status}: {response.text[:500]}"
    if status == 429 or status == 408 or status >= 500:
        raise SendFailed(detail, outcome="retry", retry_after_s=_retry_after(response))
    raise SendFailed(detail, outcome="permanent")


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
