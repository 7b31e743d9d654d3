"""SSRF guard: pure address checks, host policy, and the resolver (stubbed, no real DNS)."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from fleet.errors import BlockedAddress, ConfigError, InvalidUrl, PermanentError
from fleet.scrape.netguard import (
    GuardedResolver,
    HostPolicy,
    check_url,
    is_public_ip,
    parse_ip_literal,
)

BLOCKED = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "fe80::1",
    "fc00::1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    "[::1]",
    # Beyond the brief's list: more spellings and tunnels of private space.
    "0x7f.1",
    "0x7F.0.0.1",
    "127.0.0.1.",
    "017700000001",
    "0",
    "::",
    "[::ffff:10.0.0.1]",
    "::ffff:0a00:0001",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:c0a8:0101::1",  # 6to4 of 192.168.1.1
    "::127.0.0.1",  # IPv4-compatible
    "fe80::1%eth0",
    "[fe80::1%25eth0]",
    "fd12:3456::1",
    "ff02::1",
    "224.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "2001:db8::1",
    "2001::1",  # Teredo
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "[2606:4700:4700::1111]",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "134744072",  # 8.8.8.8 as one number
]


@pytest.mark.parametrize("host", BLOCKED)
def test_blocked_addresses(host: str) -> None:
    ip = parse_ip_literal(host)
    assert ip is not None, host
    assert not is_public_ip(ip)


@pytest.mark.parametrize("host", PUBLIC)
def test_public_addresses(host: str) -> None:
    ip = parse_ip_literal(host)
    assert ip is not None, host
    assert is_public_ip(ip)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("0xA.0.0.1", "10.0.0.1"),
        ("4294967295", "255.255.255.255"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_parse_ip_literal_forms(host: str, expected: str) -> None:
    assert parse_ip_literal(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "1.2.3.4.5",
        "08.0.0.1",  # 8 is not an octal digit
        "0x",
        "4294967296",
        "256.0.0.1",
        "1.16777216",
        "1..1",
        "",
        "[::1",
        "1e3",
        "deadbeef",
        "७.0.0.1",  # non-ASCII digits are not numeric to libc
    ],
)
def test_parse_ip_literal_rejects_names(host: str) -> None:
    assert parse_ip_literal(host) is None


def test_parse_matches_inet_aton() -> None:
    # Every form libc accepts must be recognised as the same address.
    for host in ["127.1", "0x7f.1", "0177.1", "2130706433", "10.1.2", "0.0.0.0", "1.2.3.04"]:
        ip = parse_ip_literal(host)
        assert ip is not None
        assert ip.packed == socket.inet_aton(host)


def test_host_policy_exact_port() -> None:
    policy = HostPolicy(("127.0.0.1:8081",))
    assert policy.is_allowed_exception("127.0.0.1", 8081)
    assert not policy.is_allowed_exception("127.0.0.1", 8082)
    assert not policy.is_allowed_exception("127.0.0.2", 8081)
    assert not policy.is_allowed_exception("localhost", 8081)  # names are not addresses
    # Another spelling of the same address is the same host.
    assert policy.is_allowed_exception("2130706433", 8081)


def test_host_policy_forms() -> None:
    policy = HostPolicy(("[::1]:8080", "Intranet.Example", "10.0.0.5", "fd00::7"))
    assert policy.is_allowed_exception("::1", 8080)
    assert policy.is_allowed_exception("[::1]", 8080)
    assert not policy.is_allowed_exception("::1", 8081)
    assert policy.is_allowed_exception("intranet.example", 1)
    assert policy.is_allowed_exception("INTRANET.example.", 443)
    assert not policy.is_allowed_exception("sub.intranet.example", 443)
    assert policy.is_allowed_exception("10.0.0.5", 9999)
    assert not policy.is_allowed_exception("10.0.0.6", 9999)
    assert policy.is_allowed_exception("fd00::7", 80)
    assert not HostPolicy(()).is_allowed_exception("127.0.0.1", 80)


@pytest.mark.parametrize(
    "entry", ["", "host:port", "host:0", "host:70000", "[::1", "[::1]x", "a/b"]
)
def test_host_policy_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(ConfigError):
        HostPolicy((entry,))


def test_check_url_literals() -> None:
    policy = HostPolicy(("127.0.0.1:8081",))
    check_url("http://127.0.0.1:8081/x", policy)
    check_url("https://8.8.8.8/", policy)
    check_url("http://example.com/", policy)  # names are the resolver's job
    check_url("http://2130706433:8081/", policy)  # same address, another spelling
    for url in [
        "http://127.0.0.1:8082/",
        "http://127.0.0.1/",
        "http://2130706433:8082/",
        "http://[::1]:8081/",
        "http://[::ffff:127.0.0.1]:8081/",
        "http://169.254.169.254/latest/meta-data/",
        "https://0x7f000001/",
    ]:
        with pytest.raises(BlockedAddress) as info:
            check_url(url, policy)
        assert "FLEET_ALLOW_HOSTS" in str(info.value)
        assert isinstance(info.value, PermanentError)


@pytest.mark.parametrize(
    "url",
    [
        "http://127\u30020\u30020\u30021/",  # IDNA maps ideographic full stops to "."
        "http://\uff11\uff12\uff17.0.0.1/",  # full-width digits
        "http://127.0.0.1../",
        "HTTP://[::1]/",
    ],
)
def test_check_url_sees_host_as_aiohttp_does(url: str) -> None:
    with pytest.raises(BlockedAddress):
        check_url(url, HostPolicy(()))


def test_blocked_message_names_address() -> None:
    with pytest.raises(BlockedAddress) as info:
        check_url("http://0177.0.0.1:9000/", HostPolicy(()))
    message = str(info.value)
    assert "127.0.0.1" in message
    assert "loopback" in message
    assert "FLEET_ALLOW_HOSTS=0177.0.0.1:9000" in message


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/", "file:///etc/passwd", "gopher://x/", "http://"])
def test_check_url_scheme_and_host(url: str) -> None:
    with pytest.raises(InvalidUrl):
        check_url(url, HostPolicy(()))


class StubResolver(AbstractResolver):
    """Answers from a table; records what it was asked. No DNS traffic at all."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append((host, port))
        if host not in self.table:
            raise OSError(f"stub: no such host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=addr,
                port=port,
                family=socket.AF_INET6 if ":" in addr else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for addr in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def test_resolver_public_passes() -> None:
    stub = StubResolver({"public.test": ["8.8.8.8", "2606:4700:4700::1111"]})
    resolver = GuardedResolver(HostPolicy(()), stub)
    result = await resolver.resolve("public.test", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in result] == ["8.8.8.8", "2606:4700:4700::1111"]
    assert [r["family"] for r in result] == [socket.AF_INET, socket.AF_INET6]
    assert all(r["port"] == 443 for r in result)


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["8.8.8.8", "10.0.0.1"],  # one bad address spoils the lot
        ["1.1.1.1", "::ffff:169.254.169.254"],
        ["fd00::1"],
        ["not-an-ip"],
    ],
)
async def test_resolver_refuses_any_private(addresses: list[str]) -> None:
    stub = StubResolver({"evil.test": addresses})
    resolver = GuardedResolver(HostPolicy(("evil.test:81",)), stub)
    with pytest.raises(BlockedAddress):
        await resolver.resolve("evil.test", 80, socket.AF_UNSPEC)


async def test_resolver_exemption_is_per_host_and_port() -> None:
    stub = StubResolver({"intranet.test": ["10.1.2.3"], "other.test": ["10.1.2.3"]})
    resolver = GuardedResolver(HostPolicy(("intranet.test:8080",)), stub)
    result = await resolver.resolve("intranet.test", 8080, socket.AF_UNSPEC)
    assert [r["host"] for r in result] == ["10.1.2.3"]
    with pytest.raises(BlockedAddress):
        await resolver.resolve("intranet.test", 8081, socket.AF_UNSPEC)
    with pytest.raises(BlockedAddress):
        await resolver.resolve("other.test", 8080, socket.AF_UNSPEC)


async def test_resolver_numeric_forms_never_reach_inner() -> None:
    # aiohttp only skips the resolver for canonical literals; odd forms land here and must
    # be judged by what they mean, not handed to getaddrinfo.
    stub = StubResolver({})
    resolver = GuardedResolver(HostPolicy(()), stub)
    for host in ["0x7f000001", "0x7f.1", "0177.0.0.1."]:
        with pytest.raises(BlockedAddress):
            await resolver.resolve(host, 80, socket.AF_UNSPEC)
    result = await resolver.resolve("0x08080808", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in result] == ["8.8.8.8"]
    assert stub.calls == []


async def test_resolver_returns_canonical_numeric_hosts() -> None:
    # What aiohttp dials must be exactly the checked address, in a form no resolver
    # would look up again.
    stub = StubResolver({"v6.test": ["2606:4700:4700:0:0:0:0:1111"]})
    resolver = GuardedResolver(HostPolicy(()), stub)
    result = await resolver.resolve("v6.test", 80, socket.AF_UNSPEC)
    assert result[0]["host"] == "2606:4700:4700::1111"
    assert result[0]["hostname"] == "v6.test"


async def test_resolver_propagates_lookup_failure() -> None:
    resolver = GuardedResolver(HostPolicy(()), StubResolver({}))
    with pytest.raises(OSError, match="no such host"):
        await resolver.resolve("missing.test", 80, socket.AF_UNSPEC)


def test_check_url_remembers_passed_hosts_for_the_ttl_only() -> None:
    policy = HostPolicy(("127.0.0.1:8080",), verdict_ttl_s=0.05)
    check_url("http://127.0.0.1:8080/a", policy)
    assert policy.passed_recently("127.0.0.1", 8080, time.monotonic())
    # A refusal is not remembered: each refused URL raises, naming itself.
    for path in ("/x", "/y"):
        with pytest.raises(BlockedAddress, match=f"127.0.0.1:9090{path}"):
            check_url(f"http://127.0.0.1:9090{path}", policy)
    assert not policy.passed_recently("127.0.0.1", 9090, time.monotonic())
    assert not policy.passed_recently("127.0.0.1", 8080, time.monotonic() + 0.06)


def test_check_url_cache_is_per_port() -> None:
    policy = HostPolicy(("127.0.0.1:8080",))
    check_url("http://127.0.0.1:8080/", policy)
    with pytest.raises(BlockedAddress):
        check_url("http://127.0.0.1:8081/", policy)
