"""Connections to providers, made only to addresses handlers/netguard.py checked.

Resolving a name to check it and letting the HTTP or SMTP library resolve it again to connect
leaves a gap DNS rebinding walks through: the first answer public, the second 169.254.169.254.
So the name is resolved once, here, and the socket goes to a checked address, while the name is
kept for everything else: the ``Host`` header, TLS SNI and certificate verification (a pinned
HTTPS connection still verifies the provider's certificate against its name).

- HTTP (``session``): a requests ``HTTPAdapter`` that rewrites each request's URL to a checked
  address and sets ``Host`` to the name, and gives urllib3 the name as ``server_hostname``
  (requests' documented extension point, ``build_connection_pool_key_attributes``). Redirects
  are not followed and proxies from the environment are not used: either would connect
  somewhere unchecked.
- SMTP (``smtp_client``): smtplib with its socket opened to a checked address; smtplib keeps
  the name it was given for STARTTLS and implicit TLS (``server_hostname``).

With several addresses, each is tried in the resolver's order until one accepts the connection,
as urllib3 and ``socket.create_connection`` do with a name.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError
from urllib3.util import parse_url

from handlers import netguard
from settings import get_settings

_DEFAULT_PORTS = {"http": 80, "https": 443}


def allow_private() -> bool:
    return get_settings().outbound_allow_private


# ---- HTTP ----------------------------------------------------------------------------------------


class PinnedAdapter(HTTPAdapter):
    """Sends every request to an address of its host that netguard checked."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        url = parse_url(request.url or "")
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise netguard.TargetRefused(f"not an http(s) URL with a host: {url.scheme}://…")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        host = url.host.strip("[]")
        addresses = netguard.resolve_checked(host, port, allow_private=allow_private())
        for address in addresses[:-1]:
            try:
                return super().send(_pinned(request, address), *args, **kwargs)
            except requests.ConnectionError as exc:
                if not never_connected(exc):
                    raise
        return super().send(_pinned(request, addresses[-1]), *args, **kwargs)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params["scheme"] != "https":
            return host_params, pool_kwargs
        # The URL names the address; TLS must still speak to, and verify, the name.
        return host_params, {**pool_kwargs, "server_hostname": _name(request)}


def _pinned(request: requests.PreparedRequest, address: str) -> requests.PreparedRequest:
    """A copy of ``request`` aimed at ``address``, its ``Host`` header still the name."""
    url = parse_url(request.url or "")
    pinned = request.copy()
    pinned.headers["Host"] = url.netloc or ""
    pinned.url = url._replace(host=f"[{address}]" if ":" in address else address).url
    return pinned


def _name(request: requests.PreparedRequest) -> str:
    host = parse_url("//" + str(request.headers.get("Host", ""))).host or ""
    return host.strip("[]")


def never_connected(exc: requests.ConnectionError) -> bool:
    """True if the request failed before a connection existed (refused, unreachable, connect
    timeout): nothing was sent, so another address, or a retry, cannot double a mail."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
    return isinstance(reason, ConnectTimeoutError)  # urllib3's NewConnectionError is one too


def session() -> requests.Session:
    """A requests session whose connections go only to checked addresses."""
    http = requests.Session()
    http.trust_env = False  # no HTTP(S)_PROXY, no .netrc: nothing between us and the address
    adapter = PinnedAdapter()
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http


# ---- SMTP ----------------------------------------------------------------------------------------


class _PinnedConnect(smtplib.SMTP):
    """smtplib that opens its socket to the checked addresses instead of resolving the host
    name (which it keeps as ``_host``, what STARTTLS and SMTP_SSL give TLS as server name)."""

    _addresses: Sequence[str] = ()

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        failure: OSError = OSError(f"no address to connect to for {host}")
        for address in self._addresses:
            try:
                return socket.create_connection((address, port), timeout, self.source_address)
            except OSError as exc:
                failure = exc
        raise failure


class _PinnedSMTP(_PinnedConnect):
    def __init__(self, host: str, port: int, addresses: Sequence[str], timeout: float) -> None:
        self._addresses = addresses
        super().__init__(host, port, timeout=timeout)


class _PinnedSMTPSSL(smtplib.SMTP_SSL, _PinnedConnect):
    # SMTP_SSL._get_socket wraps what super()._get_socket opens: _PinnedConnect's socket.
    def __init__(
        self,
        host: str,
        port: int,
        addresses: Sequence[str],
        timeout: float,
        context: ssl.SSLContext,
    ) -> None:
        self._addresses = addresses
        super().__init__(host, port, timeout=timeout, context=context)


def smtp_client(
    host: str, port: int, *, timeout_s: float, implicit_tls: bool, context: ssl.SSLContext
) -> smtplib.SMTP:
    """A connected SMTP client for ``host`` (TLS from the start if ``implicit_tls``), its socket
    opened to a checked address. Raises ``netguard.TargetError`` before any connection."""
    addresses = netguard.resolve_checked(host, port, allow_private=allow_private())
    if implicit_tls:
        return _PinnedSMTPSSL(host, port, addresses, timeout_s, context)
    return _PinnedSMTP(host, port, addresses, timeout_s)
