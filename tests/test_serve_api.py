"""`fleet serve`'s HTTP API against a real nats-server and both sinks (SQLite, and the real
Meilisearch client against the API-faithful fake), through real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from fleet.settings import Settings
from tests.conftest import Roles, fleet_cli, wait_for
from tests.fakes.meili import FakeMeili
from tests.pipeline_helpers import (
    cli,
    cli_json,
    crawl_view,
    get_status,
    index_pages,
    put_dead_letter,
    running_serve,
    sample_page,
    write_urls,
)
from tests.site import CrawlSite

MEILI_KEY = "fake-meili-key"
API_KEY = "admin-key-0123456789"
READ_KEY = "read-key-0123456789"

PAGES = [
    sample_page("sailing", title="Sailing basics", text="How to trim a sail in a fresh breeze."),
    sample_page(
        "knots", title="Knots", text="The bowline is the sailing knot everyone learns first."
    ),
    sample_page(
        "voile", title="La voile", text="Régler une voile: sailing en français.", lang="fr"
    ),
    sample_page(
        "boats", title="Boats", text="Sailing boats and their rigging.", host="boats.example"
    ),
]


@pytest.fixture
def meili() -> Iterator[FakeMeili]:
    fake = FakeMeili(master_key=MEILI_KEY)
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture(params=["sqlite", "meili"])
async def sink_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The settings, with a sink of each kind that holds PAGES."""
    if request.param == "meili":
        fake: FakeMeili = request.getfixturevalue("meili")
        settings = settings.replace(sink=fake.url, meili_api_key=MEILI_KEY, meili_index="pages")
    await index_pages(settings, PAGES)
    return settings


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.content_type


async def post(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with http.post(url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.content_type


def assert_problem(status: int, body: Any, content_type: str, expected: int) -> None:
    assert status == expected, body
    assert content_type == "application/problem+json"
    assert body["status"] == expected
    assert body["title"] and body["type"]
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10


# --------------------------------------------------------------------------------------
# search and pages, on both sinks


async def test_search_pages_and_filters(
    sink_settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_serve(sink_settings) as base:
        status, body, ctype = await get_json(http, f"{base}/api/search?q=sailing")
        assert status == 200 and ctype == "application/json"
        assert body["total"] == 4
        assert len(body["hits"]) == 4
        hit = body["hits"][0]
        assert set(hit) >= {"url", "title", "snippet", "score", "id"}
        assert hit["title"] == "Sailing basics"  # title matches rank first on both sinks
        assert "sail" in hit["snippet"].lower()
        assert isinstance(hit["score"], float)

        _, first, _ = await get_json(http, f"{base}/api/search?q=sailing&limit=2")
        _, second, _ = await get_json(http, f"{base}/api/search?q=sailing&limit=2&offset=2")
        assert len(first["hits"]) == 2 and len(second["hits"]) == 2
        assert first["total"] == second["total"] == 4
        urls = [h["url"] for h in first["hits"] + second["hits"]]
        assert sorted(urls) == sorted(h["url"] for h in body["hits"])

        _, french, _ = await get_json(http, f"{base}/api/search?q=sailing&lang=FR")
        assert [h["url"] for h in french["hits"]] == ["https://example.com/voile"]
        _, boats, _ = await get_json(http, f"{base}/api/search?q=sailing&host=boats.example")
        assert [h["url"] for h in boats["hits"]] == ["https://boats.example/boats"]
        _, both, _ = await get_json(http, f"{base}/api/search?q=sailing&host=example.com&lang=en")
        assert {h["title"] for h in both["hits"]} == {"Sailing basics", "Knots"}
        _, none, _ = await get_json(http, f"{base}/api/search?q=giraffe")
        assert none == {"hits": [], "total": 0}

        status, page, _ = await get_json(http, f"{base}/api/pages/{PAGES[1].id}")
        assert status == 200
        assert page["url"] == PAGES[1].url
        assert page["text"] == PAGES[1].text
        assert page["headings"] == ["Knots", "Second heading"]
        assert page["links"] == PAGES[1].links
        assert page["lang"] == "en" and page["host"] == "example.com"
        assert page["fetched_at"] == PAGES[1].fetched_at

        assert_problem(*await get_json(http, f"{base}/api/pages/{'0' * 32}"), 404)
        assert_problem(*await get_json(http, f"{base}/api/pages/not%20an%20id"), 422)


async def test_search_bad_input_is_422_problem(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    await index_pages(settings, PAGES)
    async with running_serve(settings) as base:
        for query in (
            "",  # no q at all
            "?q=",
            "?q=sailing&limit=0",
            "?q=sailing&limit=101",
            "?q=sailing&limit=ten",
            "?q=sailing&offset=-1",
            "?q=sailing&host=a%20b",
            "?q=sailing&lang=e%22n",
        ):
            status, body, ctype = await get_json(http, f"{base}/api/search{query}")
            assert_problem(status, body, ctype, 422)
        _, body, _ = await get_json(http, f"{base}/api/search?limit=500")
        assert "q" in body["detail"] and "limit" in body["detail"]
        assert {e["where"] for e in body["errors"]} == {
            "query parameter q",
            "query parameter limit",
        }
        # Only punctuation: nothing to search for, not an error.
        status, body, _ = await get_json(http, f"{base}/api/search?q=%22%2A%28")
        assert status == 200 and body["hits"] == []


async def test_search_without_an_index_is_503_and_health_degraded(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_serve(settings) as base:
        status, body, ctype = await get_json(http, f"{base}/api/search?q=x")
        assert_problem(status, body, ctype, 503)
        assert "run the indexer first" in body["detail"]
        status, health, _ = await get_json(http, f"{base}/health")
        assert status == 200
        assert health["status"] == "degraded"
        assert health["checks"]["sink"]["state"] == "down"
        # The indexer creates the index later: the server picks it up without a restart.
        await index_pages(settings, PAGES)
        status, body, _ = await get_json(http, f"{base}/api/search?q=knot")
        assert status == 200 and body["total"] == 1


# --------------------------------------------------------------------------------------
# health


async def test_health_reports_each_dependency_with_latency(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    await index_pages(settings, PAGES)
    async with running_serve(settings) as base:
        status, body, _ = await get_json(http, f"{base}/health")
    assert status == 200
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"nats", "jetstream", "sink", "supervisor"}
    for name in ("nats", "jetstream", "sink"):
        check = body["checks"][name]
        assert check["state"] == "ok", check
        assert isinstance(check["latency_ms"], float) and check["latency_ms"] >= 0
    assert "4 documents" in body["checks"]["sink"]["detail"]
    assert body["checks"]["supervisor"]["state"] == "absent"


async def test_health_is_down_503_without_nats(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening
    port = closed.getsockname()[1]
    try:
        offline = settings.replace(
            nats_url=f"nats://user:secret@127.0.0.1:{port}", nats_connect_timeout_s=0.5
        )
        await index_pages(offline, PAGES)
        async with running_serve(offline) as base:
            status, body, _ = await get_json(http, f"{base}/health")
            assert status == 503
            assert body["status"] == "down"
            assert body["checks"]["nats"]["state"] == "down"
            assert body["checks"]["sink"]["state"] == "ok"  # search still works
            assert "secret" not in json.dumps(body)
            status, problem, ctype = await get_json(http, f"{base}/api/status")
            assert_problem(status, problem, ctype, 503)
            assert "cannot reach NATS" in problem["detail"]
            assert "secret" not in problem["detail"]
            status, _, _ = await get_json(http, f"{base}/api/search?q=knots")
            assert status == 200
    finally:
        closed.close()


async def test_health_reports_the_supervisor(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    from aiohttp import web  # noqa: PLC0415

    async def sup_health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "last_decision": {"current": 2, "desired": 3}})

    async def sup_workers(_: web.Request) -> web.Response:
        return web.json_response([{"name": "w1", "state": "running"}])

    app = web.Application()
    app.router.add_get("/health", sup_health)
    app.router.add_get("/workers", sup_workers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await index_pages(settings, PAGES)
        configured = settings.replace(supervisor_url=f"http://127.0.0.1:{port}")
        async with running_serve(configured) as base:
            _, body, _ = await get_json(http, f"{base}/health")
            assert body["checks"]["supervisor"]["state"] == "ok"
            assert "1 workers" in body["checks"]["supervisor"]["detail"]
            await runner.cleanup()  # the supervisor goes away: degraded, not down
            status, body, _ = await get_json(http, f"{base}/health")
            assert status == 200 and body["status"] == "degraded"
            assert body["checks"]["supervisor"]["state"] == "down"
    finally:
        await runner.cleanup()


async def test_fleet_check_api(settings: Settings) -> None:
    from fleet.check import check  # noqa: PLC0415

    await index_pages(settings, PAGES)
    async with running_serve(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        result = await check("api", settings.replace(api_port=port))
        assert result.ok, result.detail
        assert "nats ok" in result.detail and "sink ok" in result.detail
    result = await check("api", settings.replace(api_port=port), timeout_s=5)
    assert not result.ok
    assert f"127.0.0.1:{port}/health" in result.detail


# --------------------------------------------------------------------------------------
# status, publishing, dead letters


async def test_status_publish_dlq_and_replay(
    settings: Settings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with running_serve(settings) as base:
        status, body, _ = await get_json(http, f"{base}/api/status")
        assert status == 200
        assert body.keys() == (await get_status(settings)).keys()
        assert body["consumers"]["workers"]["pending"] == 0

        urls = [f"https://example.com/a/{n}" for n in range(5)]
        status, published, _ = await post(http, f"{base}/api/urls", json=urls)
        assert status == 200
        assert published == {"published": 5, "duplicates": 0, "invalid": 0}
        # Text lines with a comment, a duplicate and an invalid line.
        text = "# more\nhttps://example.com/a/0\nhttps://example.com/b\nftp://nope\n\n"
        status, mixed, _ = await post(
            http, f"{base}/api/urls", data=text, headers={"Content-Type": "text/plain"}
        )
        assert status == 200
        assert {k: mixed[k] for k in ("published", "duplicates", "invalid")} == {
            "published": 1,
            "duplicates": 1,
            "invalid": 1,
        }
        assert mixed["errors"] == [{"line": 4, "reason": mixed["errors"][0]["reason"]}]
        assert "ftp" in mixed["errors"][0]["reason"]
        # The CLI prints the same keys for the same kind of input.
        file = write_urls(tmp_path / "urls.txt", ["https://example.com/c", "https://example.com/b"])
        printed = cli_json(settings, "publish", str(file))
        assert printed == {"published": 1, "duplicates": 1, "invalid": 0}
        assert set(printed) == set(published)

        _, body, _ = await get_json(http, f"{base}/api/status")
        assert body["consumers"]["workers"]["pending"] == 7

        await put_dead_letter(settings, "https://example.com/gone", "http_404")
        await put_dead_letter(settings, "https://example.com/busy", "http_503")
        status, letters, _ = await get_json(http, f"{base}/api/dlq")
        assert status == 200
        assert [(d["url"], d["reason"], d["stage"]) for d in letters] == [
            ("https://example.com/gone", "http_404", "worker"),
            ("https://example.com/busy", "http_503", "worker"),
        ]
        assert letters == cli_json(settings, "dlq", "list")
        status, replayed, _ = await post(
            http, f"{base}/api/dlq/replay", json={"reason": "http_503"}
        )
        assert (status, replayed) == (200, {"replayed": 1})
        status, replayed, _ = await post(http, f"{base}/api/dlq/replay")
        assert (status, replayed) == (200, {"replayed": 1})
        _, letters, _ = await get_json(http, f"{base}/api/dlq")
        assert letters == []
        _, body, _ = await get_json(http, f"{base}/api/status")
        assert body["consumers"]["workers"]["pending"] == 9  # the two replayed URLs

        # The dashboard's view comes from the same data.
        async def sampled() -> bool:
            _, view = (await get_json(http, f"{base}/api/dashboard"))[:2]
            status = view["status"] or {}
            return bool(status.get("consumers", {}).get("workers", {}).get("pending") == 9)

        await wait_for(sampled, timeout=10)


@pytest.mark.parametrize(
    ("body", "content_type", "expected", "words"),
    [
        (b"not json", "application/json", 400, "not valid JSON"),
        (b'{"urls": ["https://example.com/"]}', "application/json", 422, "list of URL"),
        (b'["https://example.com/", 3]', "application/json", 422, "item 1"),
        (b"[]", "application/json", 422, "no URL"),
        (b"# only a comment\n\n", "text/plain", 422, "no URL"),
        (b"ftp://a\nnot a url\n", "text/plain", 422, "none of the 2"),
        (b"\xff\xfe", "text/plain", 400, "UTF-8"),
        (b"<urls/>", "application/xml", 415, "text/plain"),
    ],
)
async def test_publish_bad_bodies(
    settings: Settings,
    http: aiohttp.ClientSession,
    body: bytes,
    content_type: str,
    expected: int,
    words: str,
) -> None:
    async with running_serve(settings) as base:
        status, problem, ctype = await post(
            http, f"{base}/api/urls", data=body, headers={"Content-Type": content_type}
        )
    assert_problem(status, problem, ctype, expected)
    assert words in problem["detail"]


async def test_publish_body_too_large_is_413(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    big = b"https://example.com/" + b"x" * (9 * 1024 * 1024)
    async with running_serve(settings) as base:
        assert_problem(
            *await post(http, f"{base}/api/urls", data=big, headers={"Content-Type": "text/plain"}),
            413,
        )
        status, _, _ = await get_json(http, f"{base}/health")  # still serving
        assert status == 200


async def test_unknown_routes_and_methods_are_problems(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_serve(settings) as base:
        assert_problem(*await get_json(http, f"{base}/api/nothing"), 404)
        assert_problem(*await post(http, f"{base}/api/status"), 405)


async def test_openapi_document_is_valid(settings: Settings, http: aiohttp.ClientSession) -> None:
    async with running_serve(settings) as base:
        status, doc, _ = await get_json(http, f"{base}/api/openapi.json")
    assert status == 200
    validate(doc)
    paths = doc["paths"]
    for path in (
        "/api/search",
        "/api/pages/{page_id}",
        "/api/status",
        "/api/dlq",
        "/api/dlq/replay",
        "/api/urls",
        "/api/crawls",
        "/api/crawls/{crawl_id}",
        "/health",
    ):
        assert path in paths, path
    search = paths["/api/search"]["get"]
    assert {p["name"] for p in search["parameters"]} == {"q", "limit", "offset", "host", "lang"}
    params = {p["name"]: p for p in search["parameters"]}
    assert params["q"]["required"] is True and params["q"]["schema"]["minLength"] == 1
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 10,
    }
    assert "application/problem+json" in search["responses"]["422"]["content"]
    assert set(paths["/api/urls"]["post"]["requestBody"]["content"]) == {
        "application/json",
        "text/plain",
    }
    assert set(paths["/api/crawls"]) == {"get", "post"}
    assert set(paths["/api/crawls/{crawl_id}"]) == {"get", "delete"}
    for operation in (*paths["/api/crawls"].values(), *paths["/api/crawls/{crawl_id}"].values()):
        assert "fleet crawl" in operation["summary"]


async def test_requests_are_traced_and_counted(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind  # noqa: PLC0415
    from prometheus_client import generate_latest  # noqa: PLC0415

    from fleet.telemetry import Metrics, Telemetry  # noqa: PLC0415

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry("serve", tracer_provider=provider, metrics=Metrics())
    await index_pages(settings, PAGES)
    async with running_serve(settings, telemetry) as base:
        assert (await get_json(http, f"{base}/api/search?q=knots"))[0] == 200
        assert (await get_json(http, f"{base}/api/pages/{'0' * 32}"))[0] == 404
        assert (await post(http, f"{base}/api/urls", json=["https://example.com/t"]))[0] == 200
    spans = exporter.get_finished_spans()
    servers = {s.name: s for s in spans if s.kind == SpanKind.SERVER}
    search = servers["GET /api/search"]
    assert search.attributes is not None
    assert search.attributes["http.route"] == "/api/search"
    assert search.attributes["http.response.status_code"] == 200
    assert "GET /api/pages/{page_id}" in servers
    # A URL published through the API starts its trace there, like `fleet publish`.
    assert any(s.name == "publish fleet.urls" for s in spans)
    assert telemetry.metrics is not None
    exposed = generate_latest(telemetry.metrics.registry).decode()
    assert 'route="/api/pages/{page_id}",status="404"' in exposed
    assert "fleet_http_request_duration_seconds_bucket" in exposed


# --------------------------------------------------------------------------------------
# crawls: the same as `fleet crawl start|list|status|cancel --json`


async def delete(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, str]:
    async with http.delete(url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None), resp.content_type


async def test_crawls_start_progress_list_and_cancel(
    crawl_settings: Settings, crawl_site: CrawlSite, http: aiohttp.ClientSession
) -> None:
    site = crawl_site
    site.delay_s = 0.05  # the crawl takes long enough to be watched
    root = site.url("/docs/index.html")
    roles = Roles(crawl_settings)
    try:
        async with running_serve(crawl_settings) as base:
            async with http.post(
                f"{base}/api/crawls", json={"seeds": [root], "name": "docs"}
            ) as resp:
                assert resp.status == 201
                started = await resp.json()
                location = resp.headers["Location"]
            crawl = started["crawl"]
            assert location == f"/api/crawls/{crawl}"
            assert started == {
                "crawl": crawl,
                "name": "docs",
                "seeds": [root],
                "scope": "prefix",
                "recrawl_of": None,
            }
            # The CLI prints the same object for the same kind of start.
            other = cli_json(crawl_settings, "crawl", "start", site.url("/docs/p5.html"))
            assert set(other) == set(started)

            # No worker yet: the seed waits.
            status, view, _ = await get_json(http, f"{base}{location}")
            assert status == 200
            assert view == await crawl_view(crawl_settings, crawl)
            assert (view["state"], view["queued"], view["fetched"]) == ("running", 1, 0)
            by_name = (await get_json(http, f"{base}/api/crawls/docs"))[1]
            assert by_name["crawl"] == crawl

            roles.start("indexer")
            roles.start("worker")
            seen: list[int] = []

            async def progressed() -> bool:
                _, now, _ = await get_json(http, f"{base}/api/crawls/{crawl}")
                seen.append(now["fetched"])
                return bool(now["state"] == "done" and now["indexed"] == now["fetched"])

            await wait_for(progressed, timeout=120, interval=0.2)
            assert seen[-1] == len(site.pages_of(site.reachable()))
            assert len(set(seen)) > 2, seen  # watched while it ran, not only at the end

            # Cancel the other crawl: its state says so, at once and for good.
            status, cancelled, _ = await delete(http, f"{base}/api/crawls/{other['crawl']}")
            assert (status, cancelled) == (200, {"crawl": other["crawl"], "state": "cancelled"})
            assert cancelled == cli_json(crawl_settings, "crawl", "cancel", other["crawl"])
            assert (await delete(http, f"{base}/api/crawls/{other['crawl']}"))[0] == 200
            _, view, _ = await get_json(http, f"{base}/api/crawls/{other['crawl']}")
            assert view["state"] == "cancelled"

            status, listed, _ = await get_json(http, f"{base}/api/crawls")
            assert status == 200
            assert [v["crawl"] for v in listed] == [crawl, other["crawl"]]
            assert listed[0] == await crawl_view(crawl_settings, crawl)
            printed = cli_json(crawl_settings, "crawl", "list")
            assert [v["crawl"] for v in printed] == [v["crawl"] for v in listed]
            assert printed[0] == listed[0]  # the finished crawl's counters are final
            assert set(printed[1]) == set(listed[1])
    finally:
        roles.stop_all()


async def test_crawl_bad_input_and_unknown_ids(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    seed = "https://example.com/docs/"
    async with running_serve(settings) as base:
        for body, words in (
            ({}, "seed"),
            ({"seeds": []}, "seed"),
            ({"seeds": ["ftp://example.com/"]}, "ftp"),
            ({"seeds": [seed], "scope": "planet"}, "scope"),
            ({"seeds": [seed], "max_pages": 0}, "max_pages"),
            ({"seeds": [seed], "max_depth": -1}, "max_depth"),
            ({"seeds": [seed], "exclude": ["(unclosed"]}, "regular expression"),
            ({"seeds": seed}, "seeds"),
            ({"seed": [seed]}, "seed"),  # a misspelt option is not ignored
        ):
            status, problem, ctype = await post(http, f"{base}/api/crawls", json=body)
            assert_problem(status, problem, ctype, 422)
            assert words in problem["detail"], (body, problem["detail"])
        status, problem, ctype = await post(
            http, f"{base}/api/crawls", data="{", headers={"Content-Type": "application/json"}
        )
        assert_problem(status, problem, ctype, 422)

        for call in (get_json, delete):
            status, problem, ctype = await call(http, f"{base}/api/crawls/cnosuch")
            assert_problem(status, problem, ctype, 404)
            assert "GET /api/crawls" in problem["detail"]
        assert_problem(*await get_json(http, f"{base}/api/crawls/a%3Fb%21"), 422)
        status, problem, ctype = await post(http, f"{base}/api/crawls", json={"recrawl": "cnosuch"})
        assert_problem(status, problem, ctype, 404)
        assert (await get_json(http, f"{base}/api/crawls"))[1] == []
        assert (await get_status(settings))["consumers"]["workers"]["pending"] == 0


async def test_crawl_writes_need_the_full_key(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    keyed = settings.replace(api_key=API_KEY, api_read_key=READ_KEY)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    reader = {"Authorization": f"Bearer {READ_KEY}"}
    body = {"seeds": ["https://example.com/docs/"], "max_pages": 5}
    async with running_serve(keyed) as base:
        assert_problem(*await get_json(http, f"{base}/api/crawls"), 401)
        assert_problem(*await post(http, f"{base}/api/crawls", json=body), 401)
        assert_problem(*await delete(http, f"{base}/api/crawls/cabc"), 401)
        status, problem, ctype = await post(http, f"{base}/api/crawls", json=body, headers=reader)
        assert_problem(status, problem, ctype, 403)
        assert "read-only" in problem["detail"]
        status, started, _ = await post(http, f"{base}/api/crawls", json=body, headers=admin)
        assert status == 201
        crawl = started["crawl"]
        for headers in (admin, reader):
            status, listed, _ = await get_json(http, f"{base}/api/crawls", headers=headers)
            assert status == 200 and [v["crawl"] for v in listed] == [crawl]
            status, view, _ = await get_json(http, f"{base}/api/crawls/{crawl}", headers=headers)
            assert status == 200 and view["max_pages"] == 5
        assert_problem(*await delete(http, f"{base}/api/crawls/{crawl}", headers=reader), 403)
        status, cancelled, _ = await delete(http, f"{base}/api/crawls/{crawl}", headers=admin)
        assert (status, cancelled["state"]) == (200, "cancelled")


# --------------------------------------------------------------------------------------
# keys


async def test_keys_guard_api_and_mcp(settings: Settings, http: aiohttp.ClientSession) -> None:
    await index_pages(settings, PAGES)
    keyed = settings.replace(api_key=API_KEY, api_read_key=READ_KEY)
    assert API_KEY not in repr(keyed) and READ_KEY not in repr(keyed)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    reader = {"Authorization": f"Bearer {READ_KEY}"}
    async with running_serve(keyed) as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            status, body, ctype = await get_json(
                http, f"{base}/api/search?q=knots", headers=headers
            )
            assert_problem(status, body, ctype, 401)
        async with http.get(f"{base}/api/status") as resp:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_problem(*await post(http, f"{base}/api/urls", json=["https://example.com/"]), 401)
        assert_problem(*await post(http, f"{base}/mcp", json={}), 401)
        assert_problem(*await get_json(http, f"{base}/api/openapi.json"), 401)

        for headers in (admin, reader):
            status, body, _ = await get_json(http, f"{base}/api/search?q=knots", headers=headers)
            assert status == 200 and body["total"] == 1
            assert (await get_json(http, f"{base}/api/status", headers=headers))[0] == 200
        status, body, ctype = await post(
            http, f"{base}/api/urls", json=["https://example.com/"], headers=reader
        )
        assert_problem(status, body, ctype, 403)
        assert "read-only" in body["detail"]
        status, body, _ = await post(
            http, f"{base}/api/urls", json=["https://example.com/"], headers=admin
        )
        assert status == 200 and body["published"] == 1
        # Health and the dashboard page stay open (the page asks for the key itself).
        assert (await get_json(http, f"{base}/health"))[0] == 200
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200 and "fleet" in await resp.text()


async def test_without_a_key_only_loopback_names_and_same_origin_writes(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_serve(settings) as base:
        port = base.rsplit(":", 1)[1]
        status, body, ctype = await get_json(
            http, f"{base}/api/status", headers={"Host": f"attacker.example:{port}"}
        )
        assert_problem(status, body, ctype, 403)
        assert "loopback" in body["detail"]
        assert (await get_json(http, f"{base}/health", headers={"Host": f"localhost:{port}"}))[
            0
        ] == 200
        status, body, ctype = await post(
            http,
            f"{base}/api/urls",
            data="https://example.com/",
            headers={"Content-Type": "text/plain", "Origin": "https://attacker.example"},
        )
        assert_problem(status, body, ctype, 403)
        status, _, _ = await post(
            http,
            f"{base}/api/urls",
            data="https://example.com/",
            headers={"Content-Type": "text/plain", "Origin": base},
        )
        assert status == 200


# --------------------------------------------------------------------------------------
# slow clients


async def test_a_slow_client_does_not_stall_others(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    await index_pages(settings, PAGES)
    async with running_serve(settings) as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        # Clients that ask for big answers and do not read them, one that sends half a
        # request and pauses, and some that connect and say nothing.
        stuck: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"GET /api/openapi.json HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() * 50
            )
            stuck.append((reader, writer))
        request = f"GET /api/search?q=knots HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        half_reader, half = await asyncio.open_connection(host, int(port))
        half.write(request[:20])
        silent = [await asyncio.open_connection(host, int(port)) for _ in range(20)]
        try:
            # Everyone else is served meanwhile (each request within the session timeout).
            for _ in range(50):
                status, body, _ = await get_json(http, f"{base}/api/search?q=knots")
                assert status == 200 and body["total"] == 1
            # The slow clients were held, not dropped: each gets its answer when it goes on.
            half.write(request[20:])
            assert (await half_reader.readline()).startswith(b"HTTP/1.1 200")
            assert (await stuck[0][0].readline()).startswith(b"HTTP/1.1 200")
        finally:
            for _, writer in [*stuck, (half_reader, half), *silent]:
                writer.close()


# --------------------------------------------------------------------------------------
# the role: fleet serve as a process


def test_serve_refuses_a_public_address_without_a_key(settings: Settings) -> None:
    out = cli(settings, "serve", "--host", "0.0.0.0", timeout=60)
    assert out.returncode == 2
    assert "FLEET_API_KEY" in out.stderr and "0.0.0.0" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_process_json_logs_metrics_and_sigterm_drain(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    env = {
        **os.environ,
        **settings.to_env(),
        "FLEET_LOG_FORMAT": "json",
        "FLEET_API_PORT": "0",
        "FLEET_METRICS_PORT": str(metrics_port),
    }
    proc = subprocess.Popen([*fleet_cli(), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        base = None
        deadline = time.monotonic() + 60
        while base is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            entry = json.loads(line)  # every line is one JSON object
            lines.append(entry)
            if entry["message"].startswith("serving on "):
                base = entry["message"].split()[2]
        assert base is not None, lines
        assert lines[-1]["role"] == "serve"
        with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
            assert json.load(resp)["status"] in ("ok", "degraded")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert 'fleet_http_requests_total{method="GET",route="/health",status="200"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
        assert any("stopping" in entry["message"] for entry in rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_workers_share_the_port_and_stop_together(settings: Settings) -> None:
    import psutil  # noqa: PLC0415

    env = {**os.environ, **settings.to_env(), "FLEET_LOG_FORMAT": "json", "FLEET_API_PORT": "0"}
    proc = subprocess.Popen(
        [*fleet_cli(), "serve", "--workers", "2"], env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    # Read the log to its end in a thread: a pipe nobody reads would block the servers.
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(stderr.readline, "")), daemon=True)
    reader.start()
    try:
        urls: list[str] = []
        deadline = time.monotonic() + 90
        while len(urls) < 2 and time.monotonic() < deadline and proc.poll() is None:
            lines = list(log)
            urls = [
                m.split()[2]
                for m in (json.loads(line)["message"] for line in lines)
                if m.startswith("serving on ")
            ]
            time.sleep(0.1)
        assert len(urls) == 2 and urls[0] == urls[1], (urls, log)  # both processes, one port
        [worker] = psutil.Process(proc.pid).children()
        assert "--join-port" in worker.cmdline()
        for _ in range(20):  # a new connection each time: either process answers
            with urllib.request.urlopen(f"{urls[0]}/health", timeout=10) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"fleet serve --workers 2 did not stop: {log[-20:]}") from None
        assert code == 0, log[-20:]
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
