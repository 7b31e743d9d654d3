"""SSRF guard: decide whether an address may be fetched.

A worker fetches URLs that strangers can publish, so by default it only talks to public
addresses. Two places enforce that:

* ``check_url`` before every request and every redirect hop: scheme, and the host when it
  is an IP literal (aiohttp never calls the resolver for those);
* ``GuardedResolver`` inside the connector for host names: every resolved address is
  checked and exactly those checked addresses are handed to aiohttp, so there is no second
  lookup an attacker could answer differently (DNS rebinding).

Intranet hosts are exempted one ``host[:port]`` at a time via ``FLEET_ALLOW_HOSTS``.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from fleet.errors import BlockedAddress, ConfigError, InvalidUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_OCT_DIGITS: Final = frozenset("01234567")
_NUMERIC_FLAGS: Final = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
# How long check_url trusts a host:port it let through (the connector's DNS cache keeps
# resolved names as long); bounded, emptied when full.
VERDICT_TTL_S: Final = 60.0
_MAX_VERDICTS: Final = 4096

# Belt and braces over ``is_global``: older Pythons got several of these wrong, and a guard
# must not depend on the patch level of the interpreter.
_BLOCKED_V4: Final = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_BLOCKED_V6: Final = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",  # local-use NAT64: translator-specific, may reach private space
        "100::/64",
        "2001::/23",  # IETF protocol assignments, incl. Teredo (obfuscated embedded IPv4)
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPAT: Final = ipaddress.IPv6Network("::/96")
_V4_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")


def _parse_ipv4_part(part: str) -> int | None:
    """One inet_aton component: 0x-prefixed hex, 0-prefixed octal, else decimal."""
    if not part:
        return None
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if not digits or not set(digits) <= _HEX_DIGITS:
            return None
        return int(digits, 16)
    if not part.isascii() or not part.isdigit():
        return None
    if len(part) > 1 and part[0] == "0":
        if not set(part) <= _OCT_DIGITS:
            return None
        return int(part, 8)
    return int(part)


def _parse_inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 with inet_aton semantics: 1-4 parts, the last one fills the remaining bytes."""
    parts = host.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _parse_ipv4_part(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(v > 0xFF for v in head):
        return None
    if last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """Return the address ``host`` denotes if a resolver would take it as an IP literal.

    Accepts everything libc does (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``),
    IPv6 with or without brackets and with a zone id. Returns None for host names.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        h = h.split("%", 1)[0]  # zone id: "fe80::1%eth0", or "%25eth0" as seen in URLs
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            return None
    # glibc's inet_aton ignores anything after whitespace, and some resolvers accept a
    # trailing dot; recognising too much only means one more check, never one less.
    h = h.split(None, 1)[0].rstrip(".") if h else h
    if not h or h[0] not in "0123456789":
        return None
    return _parse_inet_aton(h)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one tunnels to, if any: it decides where packets end up."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _V4_COMPAT or ip in _V4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_ip(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (judging tunnels by their IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = _embedded_ipv4(ip)
        if v4 is not None:
            # Packets end up at the embedded IPv4 (mapped, 6to4, NAT64...), so judge that.
            return is_public_ip(v4)
        if ip.scope_id:
            return False
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in net for net in _BLOCKED_V4)
    return not any(ip in net for net in _BLOCKED_V6)


def _describe(ip: IPAddress) -> str:
    for attr in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(ip, f"is_{attr}"):
            return attr.replace("_", "-")
    return "non-public"


def _norm_host(host: str) -> str:
    """Key for comparing hosts: canonical text of an IP, or a lowercased IDNA name."""
    ip = parse_ip_literal(host)
    if ip is not None:
        return str(ip)
    name = host.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return name
    return name


class HostPolicy:
    """Which ``host[:port]`` may be fetched even though it is not a public address.

    Also remembers, for ``verdict_ttl_s``, each raw host:port ``check_url`` let through, so
    the same host is not parsed and judged again for every URL; refusals are never cached
    (each one raises with its own URL).
    """

    __slots__ = ("_any_port", "_exact", "_passed", "_ttl_s", "entries")

    def __init__(
        self, allow_hosts: tuple[str, ...] = (), *, verdict_ttl_s: float = VERDICT_TTL_S
    ) -> None:
        self.entries = allow_hosts
        self._ttl_s = verdict_ttl_s
        self._passed: dict[tuple[str, int], float] = {}
        self._any_port: frozenset[str]
        self._exact: frozenset[tuple[str, int]]
        any_port: set[str] = set()
        exact: set[tuple[str, int]] = set()
        for entry in allow_hosts:
            host, port = self._parse_entry(entry)
            if port is None:
                any_port.add(host)
            else:
                exact.add((host, port))
        self._any_port = frozenset(any_port)
        self._exact = frozenset(exact)

    @staticmethod
    def _parse_entry(entry: str) -> tuple[str, int | None]:
        raw = entry.strip()
        host, port_text = raw, ""
        if raw.startswith("["):
            end = raw.find("]")
            if end < 0:
                raise ConfigError(f"FLEET_ALLOW_HOSTS entry {entry!r}: missing ']'")
            host, rest = raw[1:end], raw[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ConfigError(f"FLEET_ALLOW_HOSTS entry {entry!r}: expected [ipv6]:port")
                port_text = rest[1:]
        elif raw.count(":") == 1:
            host, port_text = raw.split(":")
        # More than one colon without brackets: a bare IPv6 address, every port.
        if not host or "/" in host or "@" in host:
            raise ConfigError(
                f"FLEET_ALLOW_HOSTS entry {entry!r} is not host or host:port "
                "(write IPv6 as [::1]:8080)"
            )
        port: int | None = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(f"FLEET_ALLOW_HOSTS entry {entry!r}: bad port {port_text!r}")
            port = int(port_text)
        return _norm_host(host), port

    def passed_recently(self, host: str, port: int, now: float) -> bool:
        """True if ``check_url`` let ``host:port`` through less than the TTL ago."""
        until = self._passed.get((host, port))
        return until is not None and until > now

    def remember_passed(self, host: str, port: int, now: float) -> None:
        """Note that ``host:port`` passed ``check_url`` at ``now``."""
        if len(self._passed) >= _MAX_VERDICTS:
            self._passed.clear()
        self._passed[(host, port)] = now + self._ttl_s

    def is_allowed_exception(self, host: str, port: int) -> bool:
        """True if exactly this host (any port, or this port) was listed in allow_hosts."""
        if not self._any_port and not self._exact:
            return False  # the common case, kept free of any parsing
        key = _norm_host(host)
        return key in self._any_port or (key, port) in self._exact

    def check_ip(self, ip: IPAddress, host: str, port: int, *, url: str | None = None) -> None:
        """Raise BlockedAddress unless ``ip`` is public or ``host:port`` is exempt."""
        if is_public_ip(ip) or self.is_allowed_exception(host, port):
            return
        shown_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        target = url or f"{shown_host}:{port}"
        what = f"{shown_host} is" if host.strip("[]") == str(ip) else f"{shown_host} is {ip},"
        raise BlockedAddress(
            f"refusing to fetch {target}: {what} a {_describe(ip)} address, and only public "
            "addresses are fetched; to allow an intranet host add it to FLEET_ALLOW_HOSTS "
            f"(e.g. FLEET_ALLOW_HOSTS={shown_host}:{port})"
        )


def check_url(url: str | URL, policy: HostPolicy) -> URL:
    """Check what can be checked without DNS: the scheme, and the host if it is numeric.

    Parses with yarl, as aiohttp does, so the host checked is the host aiohttp dials:
    e.g. "127。0。0。1" or full-width digits only become an IP literal after IDNA mapping.
    Returns the parsed URL so the caller can request exactly it. Host names are left to
    GuardedResolver, which checks what they resolve to.
    """
    try:
        target = url if isinstance(url, URL) else URL(url)
        host = target.raw_host
        port = target.port
    except (ValueError, UnicodeError) as exc:
        raise InvalidUrl(f"cannot parse URL {str(url)!r}: {exc}") from None
    scheme = target.scheme
    if scheme not in ALLOWED_SCHEMES:
        raise InvalidUrl(f"scheme {scheme or 'none'!r} not supported in {str(url)!r}: use http(s)")
    if not host:
        raise InvalidUrl(f"URL {str(url)!r} has no host")
    port = port or _DEFAULT_PORTS[scheme]
    now = time.monotonic()
    if policy.passed_recently(host, port, now):
        return target
    ip = parse_ip_literal(host)
    if ip is not None:
        policy.check_ip(ip, host, port, url=str(url))
    policy.remember_passed(host, port, now)
    return target


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a host if ANY of its addresses is not public.

    Returns only addresses it checked, as numeric strings, so the connector dials exactly
    those; the connector's DNS cache then only ever holds checked answers.
    """

    def __init__(self, policy: HostPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host``, each checked, as numeric results aiohttp dials as given.

        Raises ``BlockedAddress`` if any address is not public and ``host:port`` is not allowed
        (an IP literal is checked itself, never handed to the system resolver).
        """
        literal = parse_ip_literal(host)
        if literal is not None:
            # A numeric form aiohttp did not recognise (e.g. 0x7f000001): never let the
            # system resolver reinterpret it; dial what we checked.
            self._policy.check_ip(literal, host, port)
            return [self._result(host, literal, port, 0)]
        if self._inner is None:
            self._inner = DefaultResolver()
        results = await self._inner.resolve(host, port, family)
        checked: list[ResolveResult] = []
        for res in results:
            ip = parse_ip_literal(res["host"])
            if ip is None:
                raise BlockedAddress(
                    f"resolver returned non-numeric address {res['host']!r} for {host!r}"
                )
            self._policy.check_ip(ip, host, port)
            checked.append(self._result(host, ip, res["port"], res["proto"]))
        return checked

    @staticmethod
    def _result(host: str, ip: IPAddress, port: int, proto: int) -> ResolveResult:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return ResolveResult(
            hostname=host, host=str(ip), port=port, family=family, proto=proto, flags=_NUMERIC_FLAGS
        )

    async def close(self) -> None:
        """Close the inner resolver if this one made it (a given one is the caller's)."""
        if self._inner is not None and self._owns_inner:
            await self._inner.close()
