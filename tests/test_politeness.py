"""Politeness without NATS: rules, limiter maths, adaptive delay, robots.txt verdicts, parking.

The fleet-wide behaviour (several worker processes, a real site) is in test_polite_fleet.py.
"""

from __future__ import annotations

import pytest

from fleet.errors import TooManyRedirects, TransientError
from fleet.messages import HostState
from fleet.parking import Parked, Parking
from fleet.scrape.fetch import FetchResult
from fleet.scrape.politeness import (
    BUSY_POLL_S,
    Lease,
    Limits,
    Outcome,
    Wait,
    acquire,
    limits_for,
    release,
    renew,
)
from fleet.scrape.robots import (
    ROBOTS_MAX_BYTES,
    RobotsRules,
    entry_from_error,
    entry_from_response,
    retry_after_failures,
    robots_url,
)
from fleet.settings import Settings, SettingsError, parse_host_rules

ORIGIN = "http://example.org:80"
UA = Settings().user_agent


def _limits(concurrency: int = 2, delay_s: float = 1.0, cap: float = 30.0) -> Limits:
    return Limits(concurrency=concurrency, delay_s=delay_s, delay_max_s=cap, robots=True)


# --- settings and rules ---------------------------------------------------------------


def test_polite_defaults_and_env_names() -> None:
    s = Settings.from_env({})
    assert (s.robots, s.host_concurrency, s.host_delay_s) == ("obey", 2, 1.0)
    assert s.robots_ttl_s == 24 * 3600
    s = Settings.from_env(
        {
            "FLEET_ROBOTS": "ignore",
            "FLEET_HOST_CONCURRENCY": "0",
            "FLEET_HOST_DELAY_S": "0",
            "FLEET_HOST_RULES": "intranet.lan concurrency=8",
        }
    )
    assert (s.robots, s.host_concurrency, s.host_delay_s) == ("ignore", 0, 0.0)
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FLEET_ROBOTS": "maybe"}, "FLEET_ROBOTS must be obey or ignore"),
        ({"FLEET_HOST_CONCURRENCY": "-1"}, "FLEET_HOST_CONCURRENCY must be >= 0"),
        ({"FLEET_HOST_DELAY_S": "60"}, "raise the cap"),
        ({"FLEET_HOST_RULES": "a.lan speed=3"}, "'speed=3' is not one of concurrency="),
        ({"FLEET_HOST_RULES": "delay_s=1"}, "must start with a host pattern"),
        ({"FLEET_HOST_RULES": "a.lan robots=sometimes"}, "robots must be obey or ignore"),
    ],
)
def test_bad_polite_settings_name_the_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert fragment in str(err.value)


def test_host_rules_first_match_wins_and_patterns() -> None:
    rules = parse_host_rules(
        "127.0.0.1:8080 concurrency=0 delay_s=0; *.intranet.lan concurrency=8 robots=ignore;"
        " docs.example.org delay_s=0.25; [::1]:9000 delay_s=2; * delay_s=3"
    )
    s = Settings()
    assert limits_for("http://127.0.0.1:8080", s, rules) == Limits(0, 0.0, 30.0, True)
    assert limits_for("http://127.0.0.1:8081", s, rules).delay_s == 3.0  # other port: "*"
    wiki = limits_for("https://wiki.intranet.lan:443", s, rules)
    assert (wiki.concurrency, wiki.delay_s, wiki.robots) == (8, 1.0, False)
    assert limits_for("https://intranet.lan:443", s, rules).delay_s == 3.0  # not a subdomain
    assert limits_for("https://docs.example.org:443", s, rules).delay_s == 0.25
    assert limits_for("http://[::1]:9000", s, rules).delay_s == 2.0
    assert not limits_for("http://127.0.0.1:8080", s, rules).active


def test_robots_delay_raises_never_lowers_and_is_capped() -> None:
    limits = _limits(delay_s=1.0, cap=5.0)
    assert limits.with_robots_delay(0.5).delay_s == 1.0
    assert limits.with_robots_delay(2.0).delay_s == 2.0
    assert limits.with_robots_delay(120.0).delay_s == 5.0
    assert limits.with_robots_delay(None) is limits


# --- the limiter maths ------------------------------------------------------------------


def test_delay_spaces_the_starts() -> None:
    limits = _limits(concurrency=0, delay_s=0.5)
    state, lease = acquire(None, ORIGIN, limits, now=100.0, lease_id="a", lease_ttl_s=10)
    assert isinstance(lease, Lease) and state is not None
    assert state.next_at == 100.5 and not state.leases  # no concurrency limit: no lease kept
    _, wait = acquire(state, ORIGIN, limits, now=100.2, lease_id="b", lease_ttl_s=10)
    assert wait == Wait(100.5, "delay")
    again, lease = acquire(state, ORIGIN, limits, now=100.5, lease_id="b", lease_ttl_s=10)
    assert isinstance(lease, Lease) and again is not None and again.next_at == 101.0


def test_concurrency_leases_and_their_expiry() -> None:
    limits = _limits(concurrency=2, delay_s=0.0)
    state: HostState | None = None
    for lease_id in ("a", "b"):
        state, lease = acquire(state, ORIGIN, limits, now=10.0, lease_id=lease_id, lease_ttl_s=5)
        assert isinstance(lease, Lease)
    assert state is not None and set(state.leases) == {"a", "b"}
    _, wait = acquire(state, ORIGIN, limits, now=11.0, lease_id="c", lease_ttl_s=5)
    assert wait == Wait(11.0 + BUSY_POLL_S, "busy")
    # Released: a slot again.
    freed = release(state, Lease(ORIGIN, "a", 10.0), Outcome(200), limits, now=11.0)
    assert freed is not None and set(freed.leases) == {"b"}
    # Never released (the worker was killed): the lease runs out at 15.
    _, still = acquire(freed, ORIGIN, limits, now=12.0, lease_id="c", lease_ttl_s=5)
    assert isinstance(still, Lease)
    assert acquire(state, ORIGIN, limits, now=14.9, lease_id="d", lease_ttl_s=5)[1] == Wait(
        14.9 + BUSY_POLL_S, "busy"
    )
    after, lease = acquire(state, ORIGIN, limits, now=15.1, lease_id="d", lease_ttl_s=5)
    assert isinstance(lease, Lease) and after is not None and set(after.leases) == {"d"}


def test_retry_after_pauses_and_429s_double_the_delay_up_to_the_cap() -> None:
    limits = _limits(concurrency=0, delay_s=1.0, cap=5.0)
    state = HostState(origin=ORIGIN)
    lease = Lease(ORIGIN, "x", 50.0)
    paused = release(state, lease, Outcome(429, retry_after_s=20.0), limits, now=50.0)
    assert paused is not None
    assert paused.paused_until == 70.0 and paused.delay_s == 2.0 and paused.throttled == 1
    assert acquire(paused, ORIGIN, limits, now=60.0, lease_id="y", lease_ttl_s=5)[1] == Wait(
        70.0, "paused"
    )
    delays = []
    current = paused
    for _ in range(4):  # a run of 429s: 4, 5 (the cap), 5, 5
        nxt = release(current, lease, Outcome(429), limits, now=80.0)
        assert nxt is not None
        current = nxt
        delays.append(current.delay_s)
    assert delays == [4.0, 5.0, 5.0, 5.0]
    # Successes take a tenth of the base delay off each time (additive decrease)...
    after = release(current, lease, Outcome(200), limits, now=90.0)
    assert after is not None and after.delay_s == pytest.approx(4.9) and after.throttled == 0
    # ...until the configured delay is back (then the adapted delay is cleared).
    for _ in range(45):
        nxt = release(after, lease, Outcome(200), limits, now=90.0)
        after = nxt if nxt is not None else after
    assert after.delay_s == 0.0


def test_no_delay_means_no_adaptation_but_retry_after_still_pauses() -> None:
    limits = _limits(concurrency=2, delay_s=0.0)
    st = release(None, Lease(ORIGIN, "x", 1.0), Outcome(503, retry_after_s=3.0), limits, now=1.0)
    assert st is not None and st.delay_s == 0.0 and st.paused_until == 4.0


def test_release_writes_nothing_when_nothing_changes() -> None:
    limits = _limits(concurrency=0, delay_s=1.0)
    state = HostState(origin=ORIGIN, next_at=11.0)
    assert release(state, Lease(ORIGIN, "x", 10.0), Outcome(200), limits, now=10.5) is None


def test_a_delay_learnt_during_the_request_counts_from_its_start() -> None:
    # The robots.txt fetch started at 10 and brought Crawl-delay 2: no page before 12.
    st = release(None, Lease(ORIGIN, "robots", 10.0), Outcome(200), _limits(0, 2.0), now=10.1)
    assert st is not None and st.next_at == 12.0


# --- robots.txt ---------------------------------------------------------------------------


def _fetched(status: int, body: bytes = b"") -> FetchResult:
    return FetchResult(
        url="http://example.org/robots.txt",
        final_url="http://example.org/robots.txt",
        status=status,
        content_type="text/plain",
        charset=None,
        body=body,
        elapsed_ms=1.0,
        redirects=0,
    )


def _rules(body: str) -> RobotsRules:
    entry = entry_from_response(ORIGIN, _fetched(200, body.encode()), now=0, ttl_s=100, retry_s=10)
    return RobotsRules(entry, UA)


def test_robots_url_of_an_origin() -> None:
    assert robots_url("http://example.org:80") == "http://example.org/robots.txt"
    assert robots_url("https://[::1]:8443") == "https://[::1]:8443/robots.txt"


def test_disallow_allow_override_and_our_token() -> None:
    rules = _rules(
        "User-agent: fleet\nDisallow: /private\nAllow: /private/ok\n\nUser-agent: *\nDisallow: /\n"
    )
    assert rules.allowed("http://example.org/page")
    assert not rules.allowed("http://example.org/private/x")
    assert rules.allowed("http://example.org/private/ok/1")
    # Another crawler's group does not apply to fleet.
    other = _rules("User-agent: otherbot\nDisallow: /\n")
    assert other.allowed("http://example.org/anything")


def test_crawl_delay_request_rate_and_sitemaps() -> None:
    rules = _rules(
        "User-agent: *\nCrawl-delay: 0.5\nRequest-rate: 1/4\nSitemap: http://example.org/s.xml\n"
    )
    assert rules.delay_s == 4.0  # the stricter of the two
    assert rules.entry.sitemaps == ["http://example.org/s.xml"]
    assert _rules("User-agent: *\nDisallow:\n").delay_s is None


def test_status_classes_follow_rfc_9309() -> None:
    gone = entry_from_response(ORIGIN, _fetched(404), now=0, ttl_s=100, retry_s=10)
    assert gone.status == "unavailable" and gone.expires_at == 100
    assert RobotsRules(gone, UA).allowed("http://example.org/x")
    for status in (500, 503, 429):
        down = entry_from_response(ORIGIN, _fetched(status), now=0, ttl_s=100, retry_s=10)
        assert down.status == "unreachable" and down.expires_at == 10 and down.failures == 1
        assert not RobotsRules(down, UA).allowed("http://example.org/x")
        assert RobotsRules(down, UA).unreachable


def test_errors_unreachable_or_unavailable() -> None:
    timeout = TransientError("timed out", reason="timeout")
    down = entry_from_error(ORIGIN, timeout, now=0, ttl_s=100, retry_s=10, failures=2)
    assert down.status == "unreachable" and down.failures == 3 and down.expires_at == 40
    loop = entry_from_error(ORIGIN, TooManyRedirects("loop"), now=0, ttl_s=100, retry_s=10)
    assert loop.status == "unavailable"


def test_unreachable_retries_double_up_to_an_hour() -> None:
    assert [retry_after_failures(60, n) for n in (1, 2, 3)] == [60, 120, 240]
    assert retry_after_failures(60, 30) == 3600


def test_oversize_robots_parsed_up_to_500_kib() -> None:
    head = "User-agent: *\nDisallow: /private\n"
    padding = "# filler\n" * (ROBOTS_MAX_BYTES // 9)
    body = (head + padding + "Disallow: /late\n").encode()
    assert len(body) > ROBOTS_MAX_BYTES
    entry = entry_from_response(ORIGIN, _fetched(200, body), now=0, ttl_s=100, retry_s=10)
    rules = RobotsRules(entry, UA)
    assert len(entry.body) <= ROBOTS_MAX_BYTES
    assert not rules.allowed("http://example.org/private")
    assert rules.allowed("http://example.org/late")  # past the cap: ignored


# --- parking --------------------------------------------------------------------------------


def _parked(n: int) -> Parked:
    return Parked(msg=None, task=None, prior_attempts=0, seq=n, why="delay")  # type: ignore[arg-type]


def test_parking_one_head_per_origin_in_order() -> None:
    parking = Parking(limit=10)
    parking.push("a", _parked(1), wake_at=5.0)
    parking.push("a", _parked(2), wake_at=99.0)  # behind the head: the head's time rules
    parking.push("b", _parked(3), wake_at=7.0)
    assert len(parking) == 3 and parking.next_wake() == 5.0
    assert parking.due(4.0, 10) == []
    due = parking.due(8.0, 10)
    assert [(o, p.seq) for o, p in due] == [("a", 1), ("b", 3)]
    assert parking.has("a") and not parking.has("b")
    assert parking.due(100.0, 10) == []  # a's head is out: its successor waits for it
    parking.resume("a", 9.0)
    assert [p.seq for _, p in parking.due(9.0, 10)] == [2]
    assert len(parking) == 0


def test_deferred_urls_are_spread_at_the_host_pace() -> None:
    parking = Parking(limit=0)
    dues = [parking.defer_slot("a", 100.0, 2.0) for _ in range(3)]
    assert dues == [100.0, 102.0, 104.0]


def test_short_leases_need_no_release_and_never_fill_the_slots_alone() -> None:
    limits = _limits(concurrency=2, delay_s=0.5)
    state: HostState | None = None
    for n, now in enumerate((10.0, 10.5, 11.0, 11.5)):
        state, lease = acquire(state, ORIGIN, limits, now=now, lease_id=f"l{n}", lease_ttl_s=30)
        assert isinstance(lease, Lease) and lease.short_until == now + 1.0  # 2 x 0.5 s
        assert state is not None
        # A request that ended within its short lease: nothing to write.
        assert release(state, lease, Outcome(200), limits, now=now + 0.1) is None


def test_a_slow_request_renews_its_short_lease_and_is_released() -> None:
    limits = _limits(concurrency=1, delay_s=0.5)
    state, lease = acquire(None, ORIGIN, limits, now=10.0, lease_id="slow", lease_ttl_s=30)
    assert isinstance(lease, Lease) and state is not None
    held = renew(state, lease, until=40.0, now=10.25)
    assert held is not None and held.leases == {"slow": 40.0}
    # Still running past its short lease: the slot stays taken.
    assert acquire(held, ORIGIN, limits, now=12.0, lease_id="next", lease_ttl_s=30)[1] == Wait(
        12.0 + BUSY_POLL_S, "busy"
    )
    done = release(held, lease, Outcome(200), limits, now=13.0, renewed=True)
    assert done is not None and done.leases == {}
