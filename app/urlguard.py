"""The SSRF guard for webhook URLs: no delivery to private, loopback or other inner addresses.

A URL is checked when a job is submitted and again before every delivery attempt, and the
attempt then connects to an address that was checked (not a second DNS answer), so a name that
is re-pointed at an inner address after submission (DNS rebinding) is refused too.
`WEBHOOK_ALLOWED_HOSTS` exempts host names (exact, case-insensitive) and networks (CIDRs).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RefusedURL(ValueError):
    """The URL may not receive webhooks; the message says why."""


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in filter(None, (e.strip() for e in text.split(","))):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class CheckedURL:
    url: str
    scheme: str
    host: str  # as written in the URL (a name, or an address without brackets)
    port: int
    addresses: tuple[str, ...]  # the checked addresses to connect to, in resolver order


def why_refused(address: IPAddress) -> str | None:
    """The kind of inner address this is, or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo) is judged as itself.
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if inner is not None:
            return why_refused(inner)
        if address.is_site_local:
            return "site-local"
    kinds = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    )
    for kind, hit in kinds:
        if hit:
            return kind
    if not address.is_global:  # shared (100.64/10), documentation ranges and the like
        return "non-global"
    return None


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%")[0], None)
    return list(seen)


def check_url(url: str, allowlist: Allowlist) -> CheckedURL:
    """Resolve the URL's host and refuse it unless every address may be reached."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"webhook URL must be http or https, not {parts.scheme or 'none'!r}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise RefusedURL("webhook URL has no host")
    if parts.username or parts.password:
        raise RefusedURL("webhook URL may not carry credentials")
    try:
        given = parts.port
    except ValueError as exc:
        raise RefusedURL(f"webhook URL has a bad port: {exc}") from None
    # Port 0 is not "the default": it was delivered to port 80 (issue 25).
    if given is not None and not 1 <= given <= 65535:
        raise RefusedURL(f"webhook URL has a bad port: {given} (1 to 65535)")
    port = given if given is not None else (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise RefusedURL(f"webhook host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise RefusedURL(f"webhook host {host!r} does not resolve")
    if host.lower() not in allowlist.hosts:
        for text in addresses:
            address = ipaddress.ip_address(text)
            kind = why_refused(address)
            if kind is not None and not allowlist.allows(address):
                raise RefusedURL(
                    f"webhook host {host!r} resolves to {text}, a {kind} address; "
                    "add it to WEBHOOK_ALLOWED_HOSTS to allow it"
                )
    return CheckedURL(url, parts.scheme, host, port, tuple(addresses))
