"""Which address a request came from, for `ip` limit rules: the peer, unless the peer is a trusted proxy.

Only then is ``X-Forwarded-For`` read, from the right: each proxy appends the address it saw, so the right-most
entry that is not a trusted proxy is the first one nobody trusted wrote; anything left of it is the client's own
text and may be invented.

A dual-stack socket (``--host ::``) sees IPv4 peers as IPv4-mapped IPv6 addresses (``::ffff:10.0.0.5``): they are
read as the IPv4 address they are, so IPv4 ``trusted_proxies`` match them and an `ip` rule counts one client
under one name whichever way it connected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(trusted: Sequence[str]) -> tuple[Network, ...]:
    """The parsed ``server.trusted_proxies`` (validated by the config model)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in trusted)


def host_of(value: str) -> str:
    """The address in ``value``: ``1.2.3.4``, ``1.2.3.4:5678``, ``[::1]:5678`` or ``::1``; "" if none."""
    value = value.strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return ""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def client_address(peer: str, forwarded_for: str, trusted: Sequence[Network]) -> str:
    """The client's address given the connection's ``peer`` and the request's ``X-Forwarded-For``."""
    if peer[:7].lower() == "::ffff:":  # the only form a socket reports: no parse for every other peer
        peer = host_of(peer) or peer
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    for hop in reversed(forwarded_for.split(",")):
        address = host_of(hop)
        if not address:
            break  # not an address: written by no proxy we trust, so nothing further left can be believed
        if not _is_trusted(address, trusted):
            return address
    return peer


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
