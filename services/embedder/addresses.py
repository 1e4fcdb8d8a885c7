"""Which IP addresses a URL fetch may connect to: public unicast only, or an operator's allowed networks.

Pure functions, no network: the fetcher (fetch.py) resolves a host once, asks `refusal` about every address it
got, and connects to exactly the addresses that passed. An address that embeds an IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64, 6to4) is judged by the IPv4 address it reaches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Not public, with what each is (IANA special-purpose registries, RFC 6890 and its updates). Order matters only
# for the name given: the first network that holds the address names it.
_IPV4_NOT_PUBLIC: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(network), name)
    for network, name in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment (reserved)"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.31.196.0/24", "an AS112 anycast address (reserved)"),
        ("192.52.193.0/24", "an AMT address (reserved)"),
        ("192.88.99.0/24", "a 6to4 relay anycast address (reserved)"),
        ("192.168.0.0/16", "a private address"),
        ("192.175.48.0/24", "an AS112 address (reserved)"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),  # 255.255.255.255, the broadcast address, included
    )
)

# IPv6 addresses that carry an IPv4 address in their last 32 bits, and reach it.
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")  # the IPv4 address in bits 16–48
# Only 2000::/3 is allocated as global unicast; inside it, these are not public.
_IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_IPV6_NOT_PUBLIC: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(network), name)
    for network, name in (
        ("::1/128", "a loopback address"),
        ("::/128", "an unspecified address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an IETF protocol assignment (Teredo, benchmarking, ORCHID; reserved)"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("5f00::/16", "a segment routing (SRv6) address"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address (deprecated)"),
        ("ff00::/8", "a multicast address"),
    )
)

# The dotted forms the C resolver (inet_aton) also accepts: 1 to 4 parts, each decimal, 0x-hex or 0-octal, the last
# filling the remaining bytes: 2130706433, 0x7f.1 and 017700000001 all mean 127.0.0.1.
_NUMERIC_PART = re.compile(r"^(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


def numeric_ipv4(host: str) -> IPv4Address | None:
    """The IPv4 address a numeric host denotes in any of inet_aton's forms; None if it is not one."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.match(part) for part in parts):
        return None
    values = [
        int(part, 16) if part[:2].lower() == "0x" else int(part, 8) if part[:1] == "0" else int(part) for part in parts
    ]
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (5 - len(parts))):
        return None
    number = last
    for position, value in enumerate(leading):
        number |= value << (8 * (3 - position))
    return IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names without DNS (an IPv6 literal, or IPv4 in any numeric form); else None."""
    try:
        return ip_address(host.strip("[]"))
    except ValueError:
        return numeric_ipv4(host)


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 address reaches."""
    if address in _IPV4_MAPPED or address in _NAT64_WELL_KNOWN:
        return IPv4Address(address.packed[-4:])
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are themselves, not IPv4
        return IPv4Address(address.packed[-4:])
    if address in _SIX_TO_FOUR:
        return IPv4Address(address.packed[2:6])
    return None


def not_public(address: IPAddress) -> str | None:
    """What kind of non-public address this is ("a loopback address", …); None for a public unicast address."""
    if isinstance(address, IPv4Address):
        return next((name for network, name in _IPV4_NOT_PUBLIC if address in network), None)
    # A scope id (fe80::1%eth0) changes nothing about the address itself.
    address = IPv6Address(address.packed)
    inner = embedded_ipv4(address)
    if inner is not None:
        inner_kind = not_public(inner)
        return None if inner_kind is None else f"an IPv6 address embedding {inner}, {inner_kind}"
    named = next((name for network, name in _IPV6_NOT_PUBLIC if address in network), None)
    if named is None and address not in _IPV6_GLOBAL_UNICAST:
        named = "a reserved address (outside global unicast 2000::/3)"
    return named


def _allowed(address: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in allowed)


def refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why a fetch may not connect to `address` ("a loopback address"); None when it may: a public address, or one
    inside a network of MMRAG_FETCH_ALLOW_NETWORKS."""
    return None if _allowed(address, allowed) else not_public(address)
