"""The server refuses to listen where others can reach it while nobody is
authenticated, unless the operator says something else does it
(`--allow-unauthenticated`, Cloud Run's word for it). Loopback addresses and
Unix sockets are always fine, so `make run` stays zero-config."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

Resolver = Callable[[str], list[str]]

#: Hosts that mean "every interface".
_WILDCARDS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})


class ExposureRefused(Exception):
    """A non-loopback listener without authentication (one line of text)."""


def resolve(host: str) -> list[str]:
    """The IP addresses `host` stands for (getaddrinfo)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def host_of(address: str) -> str | None:
    """The host of a listen address (`host:port`, `[v6]:port`, `:port`);
    None for a Unix socket (`unix:PATH`), which only local users reach."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    host = address.rpartition(":")[0] if ":" in address else address
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def non_loopback(address: str, resolver: Resolver = resolve) -> str | None:
    """Why `address` is reachable from other machines, or None if it is not."""
    host = host_of(address)
    if host is None:
        return None
    if host in _WILDCARDS:
        return "every interface"
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            addresses = resolver(host)
        except OSError as exc:
            return f"{host!r} does not resolve ({exc})"
        if not addresses:
            return f"{host!r} does not resolve"
    for found in addresses:
        ip = ipaddress.ip_address(found.split("%", 1)[0])
        if not ip.is_loopback:
            return f"{found}, not a loopback address" if found != host else "not loopback"
    return None


def check_exposure(
    addresses: Iterable[str],
    *,
    authentication_configured: bool,
    allow_unauthenticated: bool,
    resolver: Resolver = resolve,
) -> None:
    """Raise ExposureRefused when one of the listen `addresses` is not
    loopback and callers are not authenticated, unless allowed."""
    if authentication_configured or allow_unauthenticated:
        return
    for address in addresses:
        reason = non_loopback(address, resolver)
        if reason is not None:
            raise ExposureRefused(
                f"refusing to listen on {address} ({reason}) without authentication: anyone "
                "who reaches it could read, cancel and delete every operation. Configure "
                "authentication, listen on localhost, or pass --allow-unauthenticated "
                "(LONGRUN_ALLOW_UNAUTHENTICATED=true) if something in front authenticates "
                "callers"
            )
