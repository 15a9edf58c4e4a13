"""The egress policy: which addresses an outbound URL set by a tenant may reach.

Every URL a tenant controls (provider base URLs, alert webhooks, batch backends, deployment hosts)
is fetched from inside our network, so a URL that names loopback, a private range or the cloud
metadata address would turn our servers into the tenant's proxy. The rule:

- the host is resolved and EVERY address it resolves to must be public (globally routable unicast);
  loopback, private, link-local, shared (CGNAT), multicast, reserved, unspecified and documentation
  ranges are refused, IPv4 and IPv6 alike, including IPv4 written inside IPv6 (mapped, NAT64, 6to4);
- an operator allow-list admits what the rule refuses: a host name (``vllm.internal``), a host name
  and port (``localhost:9100``), an address (``10.0.0.5``, ``10.0.0.5:8000``, ``[fd00::5]:8000``) or
  a network (``10.0.0.0/8``, ``::1/128``). A listed name is trusted whatever it resolves to;
- numeric hosts must be written canonically: ``2130706433``, ``0177.0.0.1`` or ``0x7f.1`` (which the
  C resolver reads as 127.0.0.1) are refused outright.

Callers check at save time (``check_url``: a clear error for the form or API) AND connect to the
addresses this module checked (``resolve``), so a DNS answer that changes after the save (rebinding)
is caught when it matters. Redirects are never followed (the HTTP clients in ``egress_http`` and the
gateway's session say so), so a public host cannot bounce us inward either.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64) or bits 16-48 (6to4).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")


class EgressRefused(OSError):
    """The URL may not be fetched; the message says why, in words for the person who set it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message  # what aiohttp's connection errors quote


def classify(ip: IPAddress) -> str:
    """Why ``ip`` is not a public unicast address ("" when it is one)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = classify(embedded)
            return f"{inner} (an IPv4 address inside IPv6)" if inner else ""
        if ip.teredo is not None:
            return "a Teredo tunnel address"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared address space (carrier-grade NAT)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "not globally routable"
    return ""


def _same_address(host: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]) == ip
    except ValueError:
        return False


def odd_numeric_host(host: str) -> bool:
    """True for hosts the C resolver reads as an IPv4 address although they are not dotted-decimal
    (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``)."""
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str = ""  # lower-case host name; empty for an address or network entry
    network: IPNetwork | None = None
    port: int | None = None  # None: any port

    def admits(self, host: str, ip: IPAddress | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.name:
            return self.name == host
        assert self.network is not None
        if ip is None or ip.version != self.network.version:
            return False
        return ip in self.network


def _parse_entry(raw: str) -> _Entry:
    text = raw.strip().lower()
    if not text:
        raise ValueError("empty entry")
    port: int | None = None
    if text.startswith("["):  # [v6] or [v6]:port
        address, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{raw!r}: write [IPv6]:port")
            port = int(rest[1:])
        text = address
    elif "/" not in text and text.count(":") == 1:  # name:port or IPv4:port
        text, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{raw!r}: the port must be a number")
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{raw!r}: the port must be between 1 and 65535")
    try:
        return _Entry(network=ipaddress.ip_network(text, strict=False), port=port)
    except ValueError:
        pass
    if "/" in text or ":" in text or odd_numeric_host(text) or not text.replace("-", "").replace(".", "").isalnum():
        raise ValueError(f"{raw!r} is neither a host name, an address nor a network")
    return _Entry(name=text.rstrip("."), port=port)


class EgressPolicy:
    """The rule above with one operator allow-list; immutable, cheap to share between threads."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.allow = tuple(_parse_entry(item) for item in allow if item.strip())
        self._names = frozenset(entry.name for entry in self.allow if entry.name)

    def refusal(self, host: str, ip: IPAddress | None, port: int) -> str:
        """Why ``host`` (resolved to ``ip``; None before resolution) may not be reached on ``port``."""
        host = host.lower().rstrip(".")
        if any(entry.admits(host, ip, port) for entry in self.allow):
            return ""
        if ip is None:
            return "" if not odd_numeric_host(host) else f"write the address {host!r} in dotted-decimal form"
        why = classify(ip)
        if not why:
            return ""
        return f"{host} is {why}" if _same_address(host, ip) else f"{host} resolves to {ip}, which is {why}"

    def name_allowed(self, host: str, port: int) -> bool:
        """A listed host name (and port): trusted whatever it resolves to."""
        host = host.lower().rstrip(".")
        return host in self._names and any(entry.admits(host, None, port) for entry in self.allow if entry.name)

    def check_addresses(self, host: str, port: int, addresses: Iterable[str]) -> None:
        """Raise ``EgressRefused`` unless every address ``host`` resolved to may be reached."""
        if self.name_allowed(host, port):
            return
        for address in addresses:
            why = self.refusal(host, ipaddress.ip_address(address.split("%", 1)[0]), port)
            if why:
                raise EgressRefused(f"{why}: not allowed by the egress policy (COSTCONTROL_EGRESS_ALLOW)")

    def check_literal(self, host: str, port: int) -> None:
        """The checks that need no DNS: odd numeric spellings, and hosts that are IP addresses."""
        why = self.refusal(host, None, port)
        if not why:
            try:
                ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
            except ValueError:
                return
            why = self.refusal(host, ip, port)
        if why:
            raise EgressRefused(f"{why}: not allowed by the egress policy (COSTCONTROL_EGRESS_ALLOW)")

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``:``port``, every one checked (blocking: getaddrinfo)."""
        self.check_literal(host, port)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise EgressRefused(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        self.check_addresses(host, port, addresses)
        return addresses

    def check_url(self, url: str) -> None:
        """Raise ``EgressRefused`` unless ``url`` is http(s) and its host may be reached (resolves it,
        unless the name is on the allow-list: it may resolve only where the gateways run)."""
        host, port = url_host_port(url)
        if not self.name_allowed(host, port):
            self.resolve(host, port)


def url_host_port(url: str) -> tuple[str, int]:
    """The host and port an http(s) URL connects to; ``EgressRefused`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EgressRefused("only http:// and https:// URLs with a host can be fetched")
    try:
        port = parts.port
    except ValueError:
        raise EgressRefused("the port in this URL is not a number") from None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def url_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: what a secret is bound to."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").rstrip("."), port or (443 if scheme == "https" else 80)
