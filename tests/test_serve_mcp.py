"""The MCP server through the SDK's own client: Streamable HTTP (`/mcp` of `fleet serve`)
and stdio (`fleet mcp` as a child process), against a real nats-server and SQLite sink."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from fleet.serve.mcp import PAGE_TEXT_CHARS
from fleet.settings import Settings
from tests.conftest import fleet_cli
from tests.pipeline_helpers import get_status, index_pages, running_serve, sample_page

TOOLS = {"search", "get_page", "publish_urls", "start_crawl", "crawl_status", "fleet_status"}
API_KEY = "mcp-admin-key-42"
READ_KEY = "mcp-read-key-42"

LONG = sample_page("long", title="A long page", text="anchorword " + "lorem ipsum dolor " * 2000)
PAGES = [
    sample_page("knots", title="Knots", text="The bowline is the sailing knot to learn first."),
    sample_page("sails", title="Sails", text="Trim the sail to the wind."),
    LONG,
]


@contextlib.asynccontextmanager
async def http_session(base: str, key: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as client,
        streamable_http_client(f"{base}/mcp", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        yield session


def result(call: Any) -> dict[str, Any]:
    assert isinstance(call, types.CallToolResult)
    assert not call.is_error, call.content
    assert isinstance(call.structured_content, dict)
    # The same answer as text, for clients without structured content.
    assert call.content and isinstance(call.content[0], types.TextContent)
    return call.structured_content


def error_text(call: Any) -> str:
    assert isinstance(call, types.CallToolResult)
    assert call.is_error
    block = call.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def exercise(session: ClientSession, settings: Settings) -> None:
    """initialize, list the tools, call each: the same for both transports."""
    init = await session.initialize()
    assert init.server_info.name == "fleet"
    assert init.instructions and "search" in init.instructions
    listed = await session.list_tools()
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 80  # written for a model
    assert tools["search"].annotations is not None
    assert tools["search"].annotations.read_only_hint is True
    assert set(tools["search"].input_schema["properties"]) == {"query", "limit"}
    assert set(tools["get_page"].input_schema["properties"]) >= {"id", "url"}

    found = result(await session.call_tool("search", {"query": "sailing knot", "limit": 3}))
    assert found["total"] == 1
    [hit] = found["hits"]
    assert hit["title"] == "Knots" and "knot" in hit["snippet"]
    assert set(hit) == {"id", "url", "title", "snippet"}

    page = result(await session.call_tool("get_page", {"id": hit["id"]}))
    assert page["url"] == PAGES[0].url and page["text"] == PAGES[0].text
    assert page["text_truncated"] is False
    assert page["links"] == {"items": PAGES[0].links, "more": 0}
    by_url = result(await session.call_tool("get_page", {"url": "HTTPS://EXAMPLE.COM/sails"}))
    assert by_url["title"] == "Sails"

    long = result(await session.call_tool("get_page", {"id": LONG.id}))
    assert long["text_truncated"] is True
    assert long["text_chars"] == len(LONG.text)
    assert len(long["text"]) < PAGE_TEXT_CHARS + 200
    assert f"offset={PAGE_TEXT_CHARS}" in long["text"]
    rest = result(
        await session.call_tool("get_page", {"id": LONG.id, "offset": len(LONG.text) - 10})
    )
    assert rest["text"] == LONG.text[-10:] and rest["text_truncated"] is False

    assert "exactly one" in error_text(await session.call_tool("get_page", {}))
    assert "no indexed page" in error_text(
        await session.call_tool("get_page", {"url": "https://example.com/missing"})
    )
    assert "not a usable URL" in error_text(
        await session.call_tool("get_page", {"url": "ftp://example.com/"})
    )

    published = result(
        await session.call_tool(
            "publish_urls",
            {"urls": ["https://example.com/new", "gopher://x", "https://example.com/new"]},
        )
    )
    assert {k: published[k] for k in ("published", "duplicates", "invalid")} == {
        "published": 1,
        "duplicates": 1,
        "invalid": 1,
    }
    status = result(await session.call_tool("fleet_status", {}))
    assert status["consumers"]["workers"]["pending"] == 1
    assert status["dead_letters"] == 0
    assert status["streams"]["urls"] == 1
    assert (await get_status(settings))["consumers"]["workers"]["pending"] == 1

    assert set(tools["start_crawl"].input_schema["properties"]) == {"url", "scope", "max_pages"}
    assert set(tools["crawl_status"].input_schema["properties"]) == {"id"}
    started = result(
        await session.call_tool(
            "start_crawl", {"url": "HTTPS://Example.com/docs/", "scope": "host", "max_pages": 20}
        )
    )
    assert started["seeds"] == ["https://example.com/docs/"]
    assert (started["scope"], started["max_pages"]) == ("host", 20)
    assert started["id"] in started["next"]
    progress = result(await session.call_tool("crawl_status", {"id": started["id"]}))
    assert progress["id"] == started["id"]
    assert (progress["state"], progress["queued"], progress["fetched"]) == ("running", 1, 0)
    assert progress["max_pages"] == 20 and progress["skipped"] == {}
    assert len(json.dumps(progress)) < 1000  # small for a context window
    assert (await get_status(settings))["consumers"]["workers"]["pending"] == 2  # its seed
    assert "no crawl" in error_text(await session.call_tool("crawl_status", {"id": "cnosuch"}))
    assert "ftp" in error_text(await session.call_tool("start_crawl", {"url": "ftp://x.example/"}))
    bad_scope = await session.call_tool("start_crawl", {"url": "https://a.example/", "scope": "x"})
    assert bad_scope.is_error


async def test_mcp_over_streamable_http(settings: Settings) -> None:
    await index_pages(settings, PAGES)
    async with running_serve(settings) as base, http_session(base) as session:
        await exercise(session, settings)


async def test_mcp_over_http_needs_the_key_and_read_key_cannot_publish(
    settings: Settings,
) -> None:
    await index_pages(settings, PAGES)
    keyed = settings.replace(api_key=API_KEY, api_read_key=READ_KEY)
    async with running_serve(keyed) as base:
        with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the 401 in task groups
            async with http_session(base, "wrong-key") as session:
                await session.initialize()
        async with http_session(base, READ_KEY) as session:
            await session.initialize()
            found = result(await session.call_tool("search", {"query": "knot"}))
            assert found["total"] == 1
            refused = error_text(
                await session.call_tool("publish_urls", {"urls": ["https://example.com/x"]})
            )
            assert "read-only" in refused
            refused = error_text(
                await session.call_tool("start_crawl", {"url": "https://example.com/docs/"})
            )
            assert "read-only" in refused
        async with http_session(base, API_KEY) as session:
            await session.initialize()
            published = result(
                await session.call_tool("publish_urls", {"urls": ["https://example.com/x"]})
            )
            assert published["published"] == 1


async def test_mcp_over_stdio(settings: Settings) -> None:
    await index_pages(settings, PAGES)
    exe, *pre = fleet_cli()
    params = StdioServerParameters(
        command=exe,
        args=[*pre, "mcp"],
        env={**os.environ, **settings.to_env(), "FLEET_LOG_LEVEL": "WARNING"},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await exercise(session, settings)
