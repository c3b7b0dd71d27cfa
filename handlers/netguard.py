"""Where workers may connect on an account's behalf: public addresses only (SSRF guard).

An account token chooses an inbox's outbound ``api_url`` or SMTP ``host``, and a worker then
connects there carrying the inbox's API key or password. Pointed at loopback, a private network
or a cloud metadata address (169.254.169.254), that would make our workers a way into networks
the account has no business reaching. So an address is refused when it is unspecified, loopback,
link-local, multicast, in the shared CGNAT range (100.64.0.0/10), private (RFC 1918, fc00::/7),
reserved, or otherwise not globally routable; an IPv6 address that embeds an IPv4 one (mapped,
6to4, NAT64) is judged by the IPv4 address. The operator setting ``outbound_allow_private``
lifts the refusal (tests and the demo talk to stand-ins on loopback).

Checked twice: when the setting is saved (``check_saved``: a friendly 422) and when a worker
connects (``resolve_checked``). The second is the one that counts: a name is resolved once,
every address it gives is checked, and the connection goes to a checked address, never to a
second resolution of the name, which DNS rebinding could point elsewhere in between
(handlers/outbound/transport.py does the connecting).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Sequence

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

SETTING = "INBOXSYNC_OUTBOUND_ALLOW_PRIVATE"
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address

# In the order the reasons are tried: the first that fits names the refusal.
_REFUSED: tuple[tuple[str, Callable[[IP], bool]], ...] = (
    ("unspecified", lambda ip: ip.is_unspecified),
    ("loopback", lambda ip: ip.is_loopback),
    ("link-local (cloud metadata lives there)", lambda ip: ip.is_link_local),
    ("multicast", lambda ip: ip.is_multicast),
    ("shared address space (CGNAT, 100.64.0.0/10)", lambda ip: ip in _CGNAT),
    ("reserved", lambda ip: ip.is_reserved),
    ("private", lambda ip: ip.is_private),
    ("not globally routable", lambda ip: not ip.is_global),
)


class TargetError(Exception):
    """Workers will not connect to this host (``TargetRefused``) or cannot (``Unresolvable``)."""


class TargetRefused(TargetError):
    """The host is, or resolves to, an address workers may not connect to."""


class Unresolvable(TargetError):
    """The name does not resolve now (it may later: not a reason to refuse a setting)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for a TCP connection to ``port``, in the system's
    order of preference (getaddrinfo: RFC 6724)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# DNS is the network edge: tests replace this to play a name that resolves somewhere else.
resolve: Callable[[str, int], list[str]] = system_resolver


def literal(host: str) -> IP | None:
    """``host`` as an IP address if it is one written out (``[::1]`` included), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def refusal(address: str | IP) -> str | None:
    """Why workers may not connect to this IP address, or None for a public one."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    ip = _embedded_ipv4(ip) or ip
    for reason, applies in _REFUSED:
        if applies(ip):
            return reason
    return None


def _embedded_ipv4(ip: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, where the network would route it there."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_addresses(host: str, addresses: Sequence[str]) -> None:
    """Raise ``TargetRefused`` if any of ``host``'s addresses is refused: a name that gives
    one public and one private address is refused whole (the connection could take either)."""
    if not addresses:
        raise Unresolvable(f"{host!r} resolves to no address")
    for address in addresses:
        if (why := refusal(address)) is not None:
            named = "" if literal(host) is not None else f"{host} resolves to "
            raise TargetRefused(
                f"{named}{address}, which is {why}: workers do not connect there"
                f" (an operator may allow it with {SETTING})"
            )


def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``host``: resolved once (an IP literal is its own), each
    checked unless ``allow_private``. Connect only to these, never to ``host`` again."""
    ip = literal(host)
    addresses = [str(ip)] if ip is not None else resolve(host, port)
    if not allow_private:
        check_addresses(host, addresses)
    return addresses


def check_saved(host: str, port: int, *, allow_private: bool) -> None:
    """At save time: refuse a host that is, or now resolves to, a refused address. A name that
    does not resolve now is accepted; ``resolve_checked`` judges it when a worker connects."""
    if allow_private:
        return
    with contextlib.suppress(Unresolvable):
        resolve_checked(host, port, allow_private=False)
