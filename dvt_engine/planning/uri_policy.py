"""Which plan URIs dvt may fetch (contract §2.1 step 1), decided before any byte is fetched.

Allowed: the state store's registry (``plan://sha256/<hex>``) and https origins on the
allowlist. Plain http needs an allowlist entry that names the http origin itself. Hostnames are
resolved first and refused when any address is loopback, private, link-local, cloud metadata or
otherwise not public, unless the host is named exactly on the allowlist (a ``*.`` wildcard is not
exact). Link-local, metadata, unspecified and multicast addresses are reachable only through an
IP literal named exactly on the allowlist. IP literals must be in canonical form: decimal, octal,
hexadecimal or shortened IPv4 forms are refused instead of being interpreted. URIs must be ASCII
(non-ASCII paths percent-encoded).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from dvt_engine.errors import PlanFetchFailed, PlanUriNotAllowed, UsageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

REGISTRY_SCHEME = "plan"
REGISTRY_PREFIX = "plan://sha256/"
DEFAULT_PORTS = {"https": 443, "http": 80}
MAX_URI_LENGTH = 2048

_REGISTRY_URI = re.compile(r"^plan://sha256/([0-9a-f]{64})$")
_CANONICAL_IPV4 = re.compile(
    r"^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$"
)
_NUMERIC_LABEL = re.compile(r"^(?:\d+|0x[0-9a-f]*)$")
_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORT = re.compile(r"^\d{1,5}$")

CLOUD_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
# Never reachable through a hostname, whatever the allowlist says.
HOSTNAME_NEVER = frozenset({"cloud metadata", "link-local", "unspecified", "multicast"})


def _refuse(uri: str, reason: str) -> PlanUriNotAllowed:
    shown = uri if len(uri) <= 200 else uri[:200] + "..."
    shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
    return PlanUriNotAllowed(f"{reason}: {shown!r}", details={"uri": shown, "reason": reason})


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why an address is not a plain public one (None when it is)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "link-local"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            problem = address_problem(embedded)
            if problem is not None:
                return problem
    if ip in CLOUD_METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_link_local:
        return "link-local"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def _parse_host(host: str) -> tuple[str, IPAddress | None]:
    """Canonical host text and its IP when it is a literal; ValueError when malformed."""
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if "%" in inner:
            raise ValueError("IPv6 zone identifiers are not allowed")
        ip6 = ipaddress.IPv6Address(inner)
        return str(ip6), ip6
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise ValueError("empty or overlong host")
    if _CANONICAL_IPV4.match(host):
        ip4 = ipaddress.IPv4Address(host)
        return str(ip4), ip4
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]) or all(_NUMERIC_LABEL.match(lb) for lb in labels):
        # getaddrinfo would read "2130706433", "0x7f.1" or "0177.0.0.1" as 127.0.0.1.
        raise ValueError("IP address in a non-canonical form")
    if not all(_HOST_LABEL.match(lb) for lb in labels):
        raise ValueError("host is not a valid DNS name (write IDN hosts in their xn-- form)")
    return host, None


def _split_authority(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("unterminated IPv6 literal")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError("junk after IPv6 literal")
        port_text = rest[1:] if rest else None
    elif authority.count(":") > 1:
        raise ValueError("IPv6 literals must be in brackets")
    else:
        host, _, port_text = authority.partition(":")
        port_text = port_text if ":" in authority else None
    if port_text is None:
        return host, None
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError("invalid port")
    return host, int(port_text)


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: an origin, or every subdomain of a domain (``*.example.com``)."""

    scheme: str
    host: str
    port: int | None = None
    wildcard: bool = False
    ip: IPAddress | None = None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        """Read ``host``, ``host:port``, ``*.domain``, ``[v6]:port`` or ``http(s)://host[:port]``."""
        scheme, sep, rest = text.strip().partition("://")
        if not sep:
            scheme, rest = "https", text.strip()
        scheme = scheme.lower()
        rest = rest.rstrip("/")
        if scheme not in DEFAULT_PORTS:
            raise UsageError(
                f"allowlist entry {text!r}: only https and http origins can be allowed"
            )
        wildcard = rest.startswith("*.")
        try:
            host_text, port = _split_authority(rest[2:] if wildcard else rest)
            if "@" in host_text or "/" in host_text:
                raise ValueError("entries name an origin only")
            host, ip = _parse_host(host_text)
        except ValueError as exc:
            raise UsageError(f"allowlist entry {text!r}: {exc}") from exc
        if wildcard and ip is not None:
            raise UsageError(f"allowlist entry {text!r}: wildcards apply to DNS names only")
        return cls(scheme=scheme, host=host, port=port, wildcard=wildcard, ip=ip)

    def matches(self, scheme: str, host: str, port: int) -> bool:
        """True when this entry covers ``scheme://host:port`` (host canonical)."""
        if scheme != self.scheme:
            return False
        if port != (self.port if self.port is not None else DEFAULT_PORTS[scheme]):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


@dataclass(frozen=True)
class CheckedUri:
    """A URI the policy allows, with the addresses a fetcher must connect to (pinned)."""

    uri: str
    scheme: str
    host: str = ""
    port: int = 0
    target: str = "/"
    addresses: tuple[str, ...] = ()
    digest: str | None = None


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve a hostname with the operating system's resolver (in the event loop's executor)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UriPolicy:
    """The plan URI allowlist: ``check(uri)`` allows a URI or raises PLAN_URI_NOT_ALLOWED."""

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        allow_registry: bool = True,
        resolver: Resolver | None = None,
        resolve_timeout_s: float = 5.0,
    ) -> None:
        if isinstance(allowed_hosts, str):
            allowed_hosts = (allowed_hosts,)
        self.entries: tuple[AllowEntry, ...] = tuple(AllowEntry.parse(e) for e in allowed_hosts)
        self.allow_registry = allow_registry
        self._resolver: Resolver = resolver or system_resolver
        self._resolve_timeout_s = resolve_timeout_s

    def _entry_for(self, scheme: str, host: str, port: int) -> AllowEntry | None:
        exact = [e for e in self.entries if not e.wildcard and e.matches(scheme, host, port)]
        if exact:
            return exact[0]
        return next((e for e in self.entries if e.matches(scheme, host, port)), None)

    async def check(self, uri: str) -> CheckedUri:
        """Allow ``uri`` (saying where to connect) or raise PLAN_URI_NOT_ALLOWED; never fetches."""
        if not isinstance(uri, str) or not uri:
            raise _refuse(str(uri), "not a URI")
        if len(uri) > MAX_URI_LENGTH:
            raise _refuse(uri, "URI is too long")
        if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in uri) or (
            "\\" in uri
        ):
            raise _refuse(uri, "URI contains whitespace, control characters or backslashes")
        if not uri.isascii():
            # A request line carries ASCII only; guessing an encoding could fetch another path.
            raise _refuse(uri, "URI contains non-ASCII characters (percent-encode them as UTF-8)")
        scheme, sep, rest = uri.partition("://")
        scheme = scheme.lower()
        if not sep:
            raise _refuse(uri, "not an absolute URI")
        if scheme == REGISTRY_SCHEME:
            return self._check_registry(uri)
        if scheme not in DEFAULT_PORTS:
            raise _refuse(uri, f"scheme {scheme!r} is not allowed")
        authority, path_start = rest, len(rest)
        for i, ch in enumerate(rest):
            if ch in "/?#":
                authority, path_start = rest[:i], i
                break
        if "@" in authority:
            raise _refuse(uri, "credentials (userinfo) in plan URIs are not allowed")
        target = rest[path_start:].split("#", 1)[0] or "/"
        if not target.startswith("/"):
            target = "/" + target
        try:
            host_text, port = _split_authority(authority)
            host, ip = _parse_host(host_text)
        except ValueError as exc:
            raise _refuse(uri, f"invalid host ({exc})") from exc
        port = port if port is not None else DEFAULT_PORTS[scheme]
        entry = self._entry_for(scheme, host, port)
        if entry is None:
            raise _refuse(uri, f"{scheme}://{host}:{port} is not on the plan URI allowlist")
        if ip is not None:
            # IP entries match exactly, so naming the address is the explicit allowlisting.
            problem = address_problem(ip)
            if problem in ("unspecified", "multicast"):
                raise _refuse(uri, f"address is {problem}")
            addresses: tuple[str, ...] = (str(ip),)
        else:
            addresses = await self._resolve_checked(uri, host, port, entry)
        return CheckedUri(
            uri=uri, scheme=scheme, host=host, port=port, target=target, addresses=addresses
        )

    def _check_registry(self, uri: str) -> CheckedUri:
        if not self.allow_registry:
            raise _refuse(uri, "the plan registry is not enabled here")
        match = _REGISTRY_URI.match(uri)
        if match is None:
            raise _refuse(uri, "registry URIs have the form plan://sha256/<64 lowercase hex>")
        return CheckedUri(uri=uri, scheme=REGISTRY_SCHEME, digest=match.group(1))

    async def _resolve_checked(
        self, uri: str, host: str, port: int, entry: AllowEntry
    ) -> tuple[str, ...]:
        try:
            raw = await asyncio.wait_for(self._resolver(host, port), self._resolve_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise PlanFetchFailed(
                f"cannot resolve plan host {host!r}: {exc}", details={"host": host}
            ) from exc
        if not raw:
            raise PlanFetchFailed(f"plan host {host!r} has no address", details={"host": host})
        addresses: list[str] = []
        for text in raw:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError as exc:
                raise _refuse(uri, f"{host} resolves to an unreadable address") from exc
            problem = address_problem(ip)
            if problem is not None and (entry.wildcard or problem in HOSTNAME_NEVER):
                # One bad address is enough: the connection could land on any of them.
                raise _refuse(uri, f"{host} resolves to a {problem} address ({ip})")
            addresses.append(str(ip))
        return tuple(addresses)


def registry_uri(digest: str) -> str:
    """The registry URI of a sha256 digest."""
    return REGISTRY_PREFIX + digest
