"""Rendering decisions: the heuristic, per-domain learning, the Scraper's render path, and
the whole pipeline (real nats-server, worker and indexer processes, real Chromium)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats
import pytest

from fleet.errors import RenderDeferred, TransientError
from fleet.messages import (
    Page,
    RenderDecision,
    RenderSample,
    UrlTask,
    render_decision_decoder,
    render_decision_encoder,
)
from fleet.nats.kv import (
    KvDecisionStore,
    learned_domains,
    render_bucket,
    render_samples_bucket,
)
from fleet.scrape import extract
from fleet.scrape import extract as extraction
from fleet.scrape.fetch import FetchResult
from fleet.scrape.render.assess import Assessment, assess, domain_of, rendering_helped
from fleet.scrape.render.policy import DEFER_S, MemoryDecisionStore, RenderPolicy
from fleet.scrape.render.pool import Rendered
from fleet.scrape.scraper import Scraper
from fleet.settings import Settings
from fleet.telemetry import Metrics, Telemetry
from tests.conftest import Roles, need_browser
from tests.pipeline_helpers import (
    cli,
    cli_json,
    result_pages,
    wait_indexed,
    write_urls,
)
from tests.site import SPA_SHELL, LoopbackSite, borderline_html, js_page_html, page_html

# --------------------------------------------------------------------------------------
# The heuristic: a pure function over the HTTP body and its extracted text

LONG_TEXT = "word " * 600
BUNDLE = "<script>" + "var x = 1;" * 300 + "</script>"


@pytest.mark.parametrize(
    ("body", "text", "verdict", "reason"),
    [
        # Empty SPA mount points, with the usual ids and attributes.
        (
            '<body><div id="root"></div><script src="/app.js"></script></body>',
            "",
            "render",
            "spa_root",
        ),
        (
            "<body><div id='app'>  </div><script src=/a.js></script></body>",
            "",
            "render",
            "spa_root",
        ),
        ('<body><div id="__next"></div></body>', "", "render", "spa_root"),
        ("<body><div data-reactroot></div></body>", "", "render", "spa_root"),
        (
            '<div id="root"><noscript>You need to enable JavaScript</noscript></div>',
            "",
            "render",
            "spa_root",
        ),
        # A filled root is not an SPA shell.
        (f'<div id="root"><p>{LONG_TEXT}</p></div>', LONG_TEXT, "http", "static"),
        # <noscript> asking for JavaScript, little text.
        (
            "<body><noscript>Please enable JavaScript to run this app.</noscript></body>",
            "",
            "render",
            "noscript",
        ),
        (
            "<body><noscript>This site requires JavaScript</noscript></body>",
            "",
            "render",
            "noscript",
        ),
        # <noscript> with a harmless tracking pixel is no signal.
        ("<body><noscript><img src=/p.gif></noscript><p>hi</p></body>", "hi", "http", "static"),
        # Little text, a lot of script.
        # Little text, a lot of script: the domain's samples decide (a short page of a
        # documentation site loads as many scripts as a loading shell).
        (f"<body><p>Loading</p>{BUNDLE}</body>", "Loading", "sample", "script_heavy"),
        (
            "<body><p>hi</p>" + '<script src="/a.js"></script>' * 2 + "</body>",
            "hi",
            "sample",
            "script_heavy",
        ),
        # JSON data islands are not code.
        (
            '<body><p>hi</p><script type="application/ld+json">' + "{}" * 2000 + "</script></body>",
            "hi there " * 30,
            "http",
            "static",
        ),
        # More script than text, but not overwhelmingly: a sample tells.
        (
            "<body><p>" + "t" * 300 + "</p><script>" + "s" * 500 + "</script></body>",
            "t" * 300,
            "sample",
            "borderline",
        ),
        # Plenty of text: the HTTP result stands, whatever the scripts.
        (f"<body><p>{LONG_TEXT}</p>{BUNDLE}</body>", LONG_TEXT, "http", "static"),
        (
            "<body><p>just a small static page</p></body>",
            "just a small static page",
            "http",
            "static",
        ),
        ("", "", "http", "static"),
    ],
)
def test_assess(body: str, text: str, verdict: str, reason: str) -> None:
    got = assess(body.encode(), text.strip())
    assert (got.verdict, got.reason) == (verdict, reason)


def test_assess_on_the_test_site_pages() -> None:
    def judge(html: str) -> Assessment:
        body = html.encode()
        ex = extract.extract(
            body, final_url="http://a/", content_type="text/html", charset="utf-8", max_links=10
        )
        return assess(body, ex.text)

    assert judge(js_page_html(1)).reason == "script_heavy"
    assert judge(SPA_SHELL.format(root="root", script="/a.js", title="SPA")).reason == "spa_root"
    assert judge(borderline_html(1)).verdict == "sample"
    assert judge(page_html(1)).verdict == "http"


def test_rendering_helped_and_domain_of() -> None:
    assert rendering_helped(200, 3000)
    assert not rendering_helped(1000, 1200)
    assert not rendering_helped(0, 50)
    assert domain_of("http://Example.com/a") == "example.com"
    assert domain_of("http://127.0.0.1:8080/x") == "127.0.0.1:8080"


# --------------------------------------------------------------------------------------
# Learning per domain


async def test_policy_learns_from_samples_and_shares_through_the_store() -> None:
    store = MemoryDecisionStore(slots=3)
    policy = RenderPolicy(store, samples=3)
    border = Assessment("sample", "borderline", 300, 500)
    url = "http://shop.example/p/1"
    plans = [await policy.plan(url, border) for _ in range(3)]
    assert [(p.render, p.reason, p.sample) for p in plans] == [(True, "sample", True)] * 3
    assert sorted(p.slot for p in plans) == [0, 1, 2]
    for plan in plans:
        await policy.record(url, plan, 300, 4000)
    decision = store.decisions["shop.example"]
    assert decision.needs_render and decision.samples == 3
    # A second worker with the same store renders without sampling, even static-looking pages.
    other = RenderPolicy(store)
    plan = await other.plan("http://shop.example/p/2", Assessment("http", "static", 5000, 0))
    assert (plan.render, plan.reason, plan.sample) == (True, "domain_learned", False)


async def test_policy_learns_that_a_domain_does_not_need_rendering() -> None:
    store = MemoryDecisionStore(slots=2)
    policy = RenderPolicy(store, samples=2)
    border = Assessment("sample", "borderline", 900, 1000)
    for _ in range(2):
        plan = await policy.plan("http://blog.example/a", border)
        await policy.record("http://blog.example/a", plan, 900, 950)
    assert not store.decisions["blog.example"].needs_render
    plan = await policy.plan("http://blog.example/b", border)
    assert (plan.render, plan.reason) == (False, "domain_static")
    # A page that shows its own strong signal is still rendered.
    plan = await policy.plan("http://blog.example/c", Assessment("render", "spa_root", 0, 2000))
    assert (plan.render, plan.reason) == (True, "spa_root")


async def test_borderline_pages_wait_for_the_samples_then_follow_the_decision() -> None:
    # Two workers, one store: two slots, so two samples in flight; every other borderline
    # page waits (the hold) and follows the decision once the samples made it.
    store = MemoryDecisionStore(slots=2)
    a, b = (RenderPolicy(store, samples=2, hold_s=10, poll_s=0.01) for _ in range(2))
    border = Assessment("sample", "borderline", 300, 500)
    url = "http://app.example/p"
    s1, s2 = await a.plan(url, border), await b.plan(url, border)
    assert s1.sample and s2.sample
    held = [asyncio.create_task(w.plan(url, border)) for w in (a, b, a, b)]
    await asyncio.sleep(0.1)
    assert not any(t.done() for t in held)  # no third sample: they wait
    # A page whose markup says JavaScript builds it does not wait.
    plan = await a.plan(url, Assessment("render", "noscript", 10, 3000))
    assert (plan.render, plan.reason) == (True, "noscript")
    await a.record(url, s1, 300, 5000)
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in held)
    await b.record(url, s2, 300, 5000)
    plans = await asyncio.gather(*held)
    assert {(p.render, p.reason) for p in plans} == {(True, "domain_learned")}
    assert a.held + b.held == 4
    assert store.decisions["app.example"].samples == 2


async def test_a_full_hold_defers_first_deliveries_and_holds_redeliveries() -> None:
    store = MemoryDecisionStore(slots=1)
    policy = RenderPolicy(store, samples=1, hold_s=10, max_held=1, poll_s=0.01)
    border = Assessment("sample", "borderline", 300, 500)
    url = "http://busy.example/p"
    sample = await policy.plan(url, border, may_defer=True)
    held = asyncio.create_task(policy.plan(url, border, may_defer=True))
    await asyncio.sleep(0.05)
    with pytest.raises(RenderDeferred) as deferred:  # the hold is full: back later
        await policy.plan(url, border, may_defer=True)
    assert deferred.value.retry_after_s == DEFER_S
    assert deferred.value.reason == "render_learning"
    redelivered = asyncio.create_task(policy.plan(url, border))  # a redelivery waits
    await policy.record(url, sample, 300, 320)
    for plan in await asyncio.gather(held, redelivered):
        assert (plan.render, plan.reason) == (False, "domain_static")


async def test_a_failed_sample_gives_its_slot_to_a_waiting_page() -> None:
    store = MemoryDecisionStore(slots=1)
    policy = RenderPolicy(store, samples=1, hold_s=10, poll_s=0.01)
    border = Assessment("sample", "borderline", 300, 500)
    url = "http://flaky.example/p"
    first = await policy.plan(url, border)
    waiting = asyncio.create_task(policy.plan(url, border))
    await asyncio.sleep(0.05)
    await policy.abandon(url, first)  # its render failed
    second = await waiting
    assert (second.sample, second.slot) == (True, 0)


async def test_a_hold_that_ends_undecided_renders_the_page() -> None:
    store = MemoryDecisionStore(slots=1)
    policy = RenderPolicy(store, samples=1, hold_s=0.2, poll_s=0.01)
    border = Assessment("sample", "borderline", 300, 500)
    await policy.plan("http://slow.example/1", border)  # a sample that never reports
    plan = await policy.plan("http://slow.example/2", border)
    assert (plan.render, plan.reason, plan.sample) == (True, "learn_hold_expired", False)


# --------------------------------------------------------------------------------------
# The Scraper's render path, with fakes (no browser)


class FakeFetcher:
    def __init__(self, body: str, content_type: str = "text/html") -> None:
        self.body = body.encode()
        self.content_type = content_type

    async def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> FetchResult:
        return FetchResult(url, url, 200, self.content_type, "utf-8", self.body, 1.0, 0)


class FakeRenderer:
    def __init__(self, html: str, fail: bool = False) -> None:
        self.html = html
        self.fail = fail
        self.calls = 0

    async def render(self, url: str, document: FetchResult) -> Rendered:
        self.calls += 1
        if self.fail:
            raise TransientError("browser gone", reason="browser_crashed")
        return Rendered(self.html, url, 1.0)


RENDERED = "<html><body><main><p>" + "rendered words " * 100 + "</p></main></body></html>"
SHELL = SPA_SHELL.format(root="root", script="/a.js", title="SPA")


async def scrape(
    fetcher: FakeFetcher,
    renderer: FakeRenderer | None,
    *,
    render: str = "auto",
    attempt: int = 1,
    policy: RenderPolicy | None = None,
) -> Page:
    settings = Settings(render=render, max_deliver=3)
    if policy is None and render == "auto":
        policy = RenderPolicy(MemoryDecisionStore())
    scraper = Scraper(fetcher, settings, renderer=renderer, policy=policy)
    task = UrlTask(url="http://spa.example/x", id="1", published_at=0)
    return await scraper.scrape(task, attempt)


@pytest.mark.parametrize(
    ("body", "render", "content_type", "via", "reason", "calls"),
    [
        (SHELL, "auto", "text/html", "browser", "spa_root", 1),
        (page_html(1), "auto", "text/html", "http", "static", 0),
        (page_html(1), "always", "text/html", "browser", "render_always", 1),
        (SHELL, "never", "text/html", "http", "render_never", 0),
        ("plain text", "always", "text/plain", "http", "not_html", 0),
    ],
)
async def test_scraper_chooses_the_path(
    body: str, render: str, content_type: str, via: str, reason: str, calls: int
) -> None:
    renderer = FakeRenderer(RENDERED)
    page = await scrape(FakeFetcher(body, content_type), renderer, render=render)
    assert (page.via, page.via_reason, renderer.calls) == (via, reason, calls)
    if via == "browser":
        assert "rendered words" in page.text


@pytest.mark.parametrize(("render", "extractions"), [("always", 1), ("auto", 2)])
async def test_always_mode_extracts_only_the_rendered_page(
    render: str, extractions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`always` never falls back to the HTTP result, so the fetched copy is not extracted."""
    bodies: list[bytes] = []
    real = extraction.extract

    def counting(body: bytes, **kwargs: Any) -> extraction.Extracted:
        bodies.append(body)
        return real(body, **kwargs)

    monkeypatch.setattr(extraction, "extract", counting)
    page = await scrape(FakeFetcher(SHELL), FakeRenderer(RENDERED), render=render)
    assert page.via == "browser" and "rendered words" in page.text
    assert len(bodies) == extractions
    assert bodies[-1] == RENDERED.encode()


async def test_scraper_without_a_browser_keeps_the_http_result() -> None:
    page = await scrape(FakeFetcher(SHELL), None)
    assert (page.via, page.via_reason) == ("http", "render_unavailable")


async def test_scraper_records_samples_and_uses_the_learned_decision() -> None:
    store = MemoryDecisionStore()
    policy = RenderPolicy(store, hold_s=0.1)
    renderer = FakeRenderer(RENDERED)
    for _ in range(3):
        page = await scrape(FakeFetcher(borderline_html(1)), renderer, policy=policy)
        assert (page.via, page.via_reason) == ("browser", "sample")
    assert store.decisions["spa.example"].needs_render
    page = await scrape(FakeFetcher(page_html(1)), renderer, policy=RenderPolicy(store))
    assert (page.via, page.via_reason) == ("browser", "domain_learned")


async def test_render_failure_is_retried_then_falls_back_to_http_on_the_last_attempt() -> None:
    renderer = FakeRenderer(RENDERED, fail=True)
    with pytest.raises(TransientError):
        await scrape(FakeFetcher(SHELL), renderer, attempt=1)
    page = await scrape(FakeFetcher(SHELL), renderer, attempt=3)
    assert (page.via, page.via_reason) == ("http", "render_failed")
    with pytest.raises(TransientError):  # always: no HTTP fallback, the DLQ tells
        await scrape(FakeFetcher(SHELL), renderer, render="always", attempt=3)


# --------------------------------------------------------------------------------------
# The pipeline: real nats-server, worker and indexer processes, real Chromium


async def test_auto_mode_renders_only_what_needs_it(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    need_browser()
    settings = settings.replace(render="auto", render_concurrency=2)
    expect = {
        # Script-heavy: a sample of its domain (the only borderline page here).
        site.url("/js/1"): ("browser", "sample", "jsword1"),
        site.url("/spa/2"): ("browser", "spa_root", "spaword2"),
        site.url("/spa-slow/3"): ("browser", "spa_root", "slowword3"),
        site.url("/page/4"): ("http", "static", "unique4"),
        site.url("/slow/5?s=1"): ("http", "static", "unique5"),
    }
    roles = Roles(settings)
    try:
        roles.start("worker", "--concurrency", "8")
        roles.start("indexer")
        cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", list(expect))))
        await wait_indexed(settings, list(expect))
    finally:
        roles.stop_all()
    pages = await result_pages(settings)
    for url, (via, reason, word) in expect.items():
        page = pages[url]
        assert (page.via, page.via_reason) == (via, reason), url
        assert word in page.text, (url, page.text[:200])
    # The slow SPA's API answered after the load event: settling waited for it.
    assert site.hits["/api/data/3"] == 1
    # Search finds the words only JavaScript wrote.
    out = cli(settings, "search", "jsword1", "--json")
    assert [hit["url"] for hit in json.loads(out.stdout)] == [site.url("/js/1")]


async def test_learned_domain_is_shared_between_worker_processes(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    need_browser()
    settings = settings.replace(render="auto", render_concurrency=2)
    first = [site.url(f"/borderline/{n}") for n in range(3)]
    later = [site.url(f"/borderline/{n}") for n in range(10, 13)] + [site.url("/page/7")]
    roles = Roles(settings)
    try:
        a = roles.start("worker", "--concurrency", "1")  # one at a time: 3 samples, in order
        roles.start("indexer")
        cli_json(settings, "publish", str(write_urls(tmp_path / "a.txt", first)))
        await wait_indexed(settings, first)
        a.terminate()
        a.wait(20)
        st = json.loads(cli(settings, "status", "--json").stdout)
        learned = {d["domain"]: d for d in st["render_domains"]}
        assert learned[site.hostport]["needs_render"] is True
        assert learned[site.hostport]["samples"] == 3
        text = cli(settings, "status").stdout
        assert f"render domain {site.hostport}" in text

        roles.start("worker", "--concurrency", "4")
        cli_json(settings, "publish", str(write_urls(tmp_path / "b.txt", later)))
        await wait_indexed(settings, first + later)
    finally:
        roles.stop_all()
    pages = await result_pages(settings)
    assert {pages[u].via_reason for u in first} == {"sample"}
    for url in later:
        assert (pages[url].via, pages[url].via_reason) == ("browser", "domain_learned"), url
    assert "moreword11" in pages[site.url("/borderline/11")].text


async def test_two_workers_learn_each_domain_once_with_bounded_samples(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    # Two worker processes, two domains of borderline pages: one needs rendering (its
    # script writes most of the text), one does not (a docs site loading a few scripts).
    # Fleet-wide, each domain gets exactly render_samples sample renders; its other pages
    # wait for the decision and follow it: every page of the first is rendered, no other
    # page of the second is.
    need_browser()
    with LoopbackSite() as docs:
        settings = settings.replace(
            render="auto",
            render_concurrency=2,
            render_samples=2,
            render_learn_hold_s=120.0,
            allow_hosts=(*settings.allow_hosts, docs.hostport),
        )
        needs = [site.url(f"/borderline/{n}") for n in range(12)]
        static = [docs.url(f"/docs-page/{n}") for n in range(12)]
        urls = [u for pair in zip(needs, static, strict=True) for u in pair]
        roles = Roles(settings)
        try:
            roles.start("worker", "--concurrency", "6")
            roles.start("worker", "--concurrency", "6")
            roles.start("indexer")
            cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
            await wait_indexed(settings, urls)
            st = json.loads(cli(settings, "status", "--json").stdout)
        finally:
            roles.stop_all()
    pages = await result_pages(settings)
    reasons = [pages[u].via_reason for u in needs]
    assert reasons.count("sample") == 2, reasons
    assert set(reasons) == {"sample", "domain_learned"}, reasons
    for n, url in enumerate(needs):
        assert pages[url].via == "browser" and f"moreword{n} " in pages[url].text, url
    reasons = [pages[u].via_reason for u in static]
    assert reasons.count("sample") == 2, reasons
    assert set(reasons) == {"sample", "domain_static"}, reasons
    assert {pages[u].via for u in static if pages[u].via_reason == "domain_static"} == {"http"}
    learned = {d["domain"]: d for d in st["render_domains"]}
    assert learned[site.hostport]["needs_render"] is True
    assert learned[docs.hostport]["needs_render"] is False
    assert {learned[h]["samples"] for h in (site.hostport, docs.hostport)} == {2}


async def test_learned_domains_empty_without_bucket(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_server)
    try:
        assert await learned_domains(nc.jetstream(), settings) == []
    finally:
        await nc.close()


def test_render_always_without_a_browser_fails_at_start(settings: Settings) -> None:
    started = time.monotonic()
    out = cli(
        settings,
        "worker",
        "--render",
        "always",
        env={"FLEET_CHROMIUM_PATH": "/nonexistent/chromium"},
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "FLEET_RENDER=never" in lines[0] and "fleet[browser]" in lines[0]
    assert "FLEET_CHROMIUM_PATH" in lines[0]
    assert time.monotonic() - started < 30


async def test_auto_without_a_browser_warns_once_and_keeps_http(
    settings: Settings, site: LoopbackSite, tmp_path: Path
) -> None:
    settings = settings.replace(render="auto", chromium_path="/nonexistent/chromium")
    urls = [site.url("/spa/1"), site.url("/page/2")]
    roles = Roles(settings)
    log = tmp_path / "worker.log"
    try:
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleet", "worker"],
                env=roles.env,
                stdin=subprocess.DEVNULL,
                stderr=fh,
            )
            roles.procs.append(proc)
            roles.start("indexer")
            cli_json(settings, "publish", str(write_urls(tmp_path / "u.txt", urls)))
            await wait_indexed(settings, urls)
    finally:
        roles.stop_all()
    pages = await result_pages(settings)
    assert (pages[urls[0]].via, pages[urls[0]].via_reason) == ("http", "render_unavailable")
    assert (pages[urls[1]].via, pages[urls[1]].via_reason) == ("http", "static")
    warnings = [line for line in log.read_text().splitlines() if "no Chromium at" in line]
    assert len(warnings) == 1, log.read_text()


def test_render_decision_roundtrip() -> None:
    d = RenderDecision(domain="a.example", needs_render=True, samples=3, http_chars=10)
    assert render_decision_decoder.decode(render_decision_encoder.encode(d)) == d


async def test_scraper_counts_renders_in_metrics() -> None:
    metrics = Metrics()
    settings = Settings(render="auto")
    scraper = Scraper(
        FakeFetcher(SHELL),
        settings,
        telemetry=Telemetry("worker", metrics=metrics),
        renderer=FakeRenderer(RENDERED),
        policy=RenderPolicy(MemoryDecisionStore()),
    )
    await scraper.scrape(UrlTask(url="http://a.example/", id="1", published_at=0), 1)
    labels = {"via": "browser", "via_reason": "spa_root", "outcome": "ok"}
    assert metrics.registry.get_sample_value("fleet_renders_total", labels) == 1
    assert metrics.registry.get_sample_value("fleet_render_duration_seconds_count") == 1


async def test_kv_store_shares_decisions_and_forgets_deleted_ones(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_server)
    try:
        js = nc.jetstream()
        kv = await render_bucket(js, settings)
        await render_bucket(js, settings)  # idempotent: a second worker opens the same bucket
        samples = await render_samples_bucket(js, settings)
        writer, reader = KvDecisionStore(kv, samples), KvDecisionStore(kv, samples, ttl_s=0)
        decision = RenderDecision(domain="127.0.0.1:8080", needs_render=True, samples=3)
        await writer.put(decision)
        assert await reader.get("127.0.0.1:8080") == decision
        assert await learned_domains(js, settings) == [decision]
        await kv.delete("127.0.0.1_8080")
        assert await reader.get("127.0.0.1:8080") is None
        assert await learned_domains(js, settings) == []
    finally:
        await nc.close()


async def test_kv_store_bounds_samples_fleet_wide_and_decides_once(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_server)
    try:
        js = nc.jetstream()
        kv, samples = await render_bucket(js, settings), await render_samples_bucket(js, settings)
        # Three workers racing for two slots of one domain: exactly two claims succeed.
        stores = [KvDecisionStore(kv, samples, slots=2, ttl_s=0) for _ in range(3)]
        domain = "127.0.0.1:9090"
        claims = await asyncio.gather(*(s.claim_sample(domain) for s in stores for _ in range(2)))
        assert sorted(c for c in claims if c is not None) == [0, 1]
        assert claims.count(None) == 4
        # A failed sample gives its slot back; a claim older than stale_s is taken over.
        await stores[0].release_sample(domain, 1)
        assert await stores[2].claim_sample(domain) == 1
        impatient = KvDecisionStore(kv, samples, slots=2, stale_s=0.0)
        assert await impatient.claim_sample(domain) == 0
        # Results fill the slots; the decision is created once, the first one stays.
        done = [
            RenderSample(domain=domain, slot=n, claimed_at=0.0, done=True, helped=True)
            for n in range(2)
        ]
        assert await stores[0].report_sample(done[0]) == [done[0]]
        assert await stores[1].report_sample(done[1]) == done
        assert await stores[1].claim_sample(domain) is None  # every slot done
        first = RenderDecision(domain=domain, needs_render=True, samples=2)
        second = RenderDecision(domain=domain, needs_render=False, samples=2)
        assert await stores[0].decide(first) == first
        assert await stores[1].decide(second) == first
        assert await stores[2].get(domain) == first
        # The samples bucket holds no decisions: `fleet status` lists only the decision.
        assert await learned_domains(js, settings) == [first]
    finally:
        await nc.close()
