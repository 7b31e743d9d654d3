"""The MCP server (official ``mcp`` SDK): fleet's search and control for LLM agents.

The same tools over Streamable HTTP (``/mcp`` of `fleet serve`, behind the API keys) and
over stdio (`fleet mcp`, for desktop clients that start the server themselves). Results are
kept small for a context window: snippets, page text cut at ``PAGE_TEXT_CHARS`` with a
marker that says how to read on, lists capped with a count of what was left out.

``start_crawl`` and ``crawl_status`` call the crawl functions of ``FleetService`` (those of
`fleet crawl start|status`); their results are the counters a model needs to follow a crawl.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any, Final, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import Field
from starlette.applications import Starlette

from fleet import __version__
from fleet.crawl import CrawlNotFound, CrawlOptions
from fleet.errors import FleetError, InvalidUrl
from fleet.serve.service import FleetService, Forbidden, require_admin
from fleet.sinks.base import DOCUMENT_ID

PAGE_TEXT_CHARS: Final = 6000
PAGE_LIST_ITEMS: Final = 30
MAX_SEARCH_RESULTS: Final = 20
MAX_PUBLISH_URLS: Final = 1000
# A crawl started by an agent is capped (the CLI's is not): a model asks for what it needs.
MAX_CRAWL_PAGES: Final = 10_000

INSTRUCTIONS: Final = (
    "fleet is a web scraper fleet with a full-text index of the pages it has fetched. "
    "Use `search` to find indexed pages, then `get_page` with a hit's id to read one. "
    "Use `publish_urls` to have new pages fetched and indexed (they become searchable "
    "after the workers and the indexer have processed them, usually within seconds; "
    "`fleet_status` shows the queue draining). Use `start_crawl` to fetch a whole site or "
    "section by following its links, and `crawl_status` to see when it is done."
)


def _truncate(text: str, offset: int, limit: int, ref: str) -> tuple[str, bool]:
    piece = text[offset : offset + limit]
    rest = len(text) - (offset + len(piece))
    if rest <= 0:
        return piece, False
    marker = (
        f"\n[… truncated: {rest} more characters. Call get_page(id={ref!r}, "
        f"offset={offset + len(piece)}) to read on.]"
    )
    return piece + marker, True


def _capped(items: list[str]) -> dict[str, Any]:
    shown = items[:PAGE_LIST_ITEMS]
    return {"items": shown, "more": len(items) - len(shown)}


def build_mcp(service: FleetService) -> MCPServer[Any]:
    """The MCP server with fleet's tools, bound to ``service``."""
    server: MCPServer[Any] = MCPServer(
        "fleet", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING"
    )
    _add_search(server, service)
    _add_get_page(server, service)
    _add_publish_urls(server, service)
    _add_start_crawl(server, service)
    _add_crawl_status(server, service)
    _add_fleet_status(server, service)
    return server


def _add_search(server: MCPServer[Any], service: FleetService) -> None:
    @server.tool(
        name="search",
        title="Search indexed pages",
        description=(
            "Full-text search over the pages fleet has fetched and indexed. Returns the best "
            "matches first, each with id, url, title and a short snippet around the matched "
            "words, plus `total` (all matches). All words must match; there is no phrase or "
            "boolean syntax, so pass plain keywords. Read a hit in full with "
            "get_page(id=...)."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def search(
        query: Annotated[str, Field(min_length=1, max_length=500, description="Keywords")],
        limit: Annotated[
            int, Field(ge=1, le=MAX_SEARCH_RESULTS, description="How many hits (default 5)")
        ] = 5,
    ) -> dict[str, Any]:
        try:
            page = await service.search(query, limit=limit)
        except FleetError as exc:
            raise ToolError(f"search is unavailable: {exc}") from None
        return {
            "total": page.total,
            "hits": [
                {"id": h.id, "url": h.url, "title": h.title, "snippet": h.snippet}
                for h in page.hits
            ],
        }


def _add_get_page(server: MCPServer[Any], service: FleetService) -> None:
    @server.tool(
        name="get_page",
        title="Read one indexed page",
        description=(
            "Read a page fleet has indexed: its text, title, description, headings, links "
            "and metadata (language, when and how it was fetched). Give the `id` from a "
            "search hit, or the page's `url`. The text is cut at "
            f"{PAGE_TEXT_CHARS} characters; the end of the text then says which `offset` "
            "reads on. Headings and links are capped at "
            f"{PAGE_LIST_ITEMS} (with the count of the rest)."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def get_page(
        id: Annotated[str | None, Field(description="Page id from a search hit")] = None,
        url: Annotated[str | None, Field(description="The page's URL (if no id)")] = None,
        offset: Annotated[int, Field(ge=0, description="Where in the text to start")] = 0,
    ) -> dict[str, Any]:
        if (id is None) == (url is None):
            raise ToolError("give exactly one of id (from a search hit) or url")
        try:
            if id is not None:
                if not DOCUMENT_ID.match(id):
                    raise ToolError(f"{id!r} is not a page id (ids come from search hits)")
                page = await service.page(id)
            else:
                assert url is not None
                page = await service.page_by_url(url)
        except InvalidUrl as exc:
            raise ToolError(f"{url!r} is not a usable URL: {exc}") from None
        except FleetError as exc:
            raise ToolError(f"pages are unavailable: {exc}") from None
        if page is None:
            where = f"id {id!r}" if id is not None else f"url {url!r}"
            raise ToolError(
                f"no indexed page with {where}; search for it, or publish_urls it first"
            )
        text, truncated = _truncate(page.text, offset, PAGE_TEXT_CHARS, page.id)
        return {
            "id": page.id,
            "url": page.url,
            "canonical_url": page.canonical_url,
            "title": page.title,
            "description": page.description,
            "lang": page.lang,
            "fetched_at": page.fetched_at,
            "via": page.via,
            "text_chars": len(page.text),
            "text_truncated": truncated,
            "text": text,
            "headings": _capped(page.headings),
            "links": _capped(page.links),
        }


def _add_publish_urls(server: MCPServer[Any], service: FleetService) -> None:
    @server.tool(
        name="publish_urls",
        title="Queue URLs for fetching",
        description=(
            "Queue web pages for fleet to fetch, extract and index (http/https only; at most "
            f"{MAX_PUBLISH_URLS} per call). A URL already queued within the dedup window is "
            "counted as a duplicate and not fetched twice. Returns counts of published, "
            "duplicate and invalid URLs, with the reason for each invalid one. Pages become "
            "searchable once processed; check progress with fleet_status."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True
        ),
    )
    async def publish_urls(
        urls: Annotated[
            list[str],
            Field(min_length=1, max_length=MAX_PUBLISH_URLS, description="Absolute URLs"),
        ],
        ctx: Context,
    ) -> dict[str, Any]:
        try:
            require_admin(service.settings, _headers(ctx))
            return await service.publish(urls, source="mcp")
        except Forbidden as exc:
            raise ToolError(str(exc)) from None
        except FleetError as exc:
            raise ToolError(f"cannot publish now: {exc}") from None


def _add_start_crawl(server: MCPServer[Any], service: FleetService) -> None:
    @server.tool(
        name="start_crawl",
        title="Crawl a site from a URL",
        description=(
            "Start a crawl: fleet fetches `url`, follows its links within `scope`, and "
            "indexes every page it reaches, up to `max_pages` pages (at most "
            f"{MAX_CRAWL_PAGES}). scope 'prefix' (default) follows links under the seed's "
            "path (https://docs.example.com/guide/ stays in /guide/), 'host' the whole "
            "host, 'domain' the registrable domain with its subdomains. robots.txt and "
            "per-host politeness apply. Returns the crawl's id at once; the crawl runs in "
            "the background: poll crawl_status(id) until its state is 'done', then search "
            "its pages."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=True,
        ),
    )
    async def start_crawl(
        url: Annotated[str, Field(min_length=1, max_length=4096, description="The seed URL")],
        ctx: Context,
        scope: Annotated[
            Literal["prefix", "host", "domain"], Field(description="Which links to follow")
        ] = "prefix",
        max_pages: Annotated[
            int, Field(ge=1, le=MAX_CRAWL_PAGES, description="Most pages to fetch (default 100)")
        ] = 100,
    ) -> dict[str, Any]:
        try:
            require_admin(service.settings, _headers(ctx))
            started = await service.start_crawl(
                CrawlOptions(seeds=(url,), scope=scope, max_pages=max_pages)
            )
        except Forbidden as exc:
            raise ToolError(str(exc)) from None
        except FleetError as exc:
            raise ToolError(f"cannot start the crawl: {exc}") from None
        return {
            "id": started["crawl"],
            "seeds": started["seeds"],
            "scope": started["scope"],
            "max_pages": max_pages,
            "next": f"call crawl_status(id={started['crawl']!r}) to follow it",
        }


def _add_crawl_status(server: MCPServer[Any], service: FleetService) -> None:
    @server.tool(
        name="crawl_status",
        title="Progress of a crawl",
        description=(
            "The progress of a crawl started with start_crawl: state ('running', 'done' or "
            "'cancelled'), pages discovered, still queued, fetched, indexed, dead-lettered "
            "(failed) and skipped by reason (scope, robots, max_pages...). A crawl is "
            "finished when state is 'done' (queued is then 0); its indexed pages are then "
            "searchable."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def crawl_status(
        id: Annotated[
            str, Field(min_length=1, max_length=200, description="The id start_crawl returned")
        ],
    ) -> dict[str, Any]:
        try:
            view = await service.crawl_status(id)
        except CrawlNotFound:
            raise ToolError(f"no crawl {id!r}; use the id start_crawl returned") from None
        except FleetError as exc:
            raise ToolError(f"crawl status is unavailable: {exc}") from None
        keys = ("state", "discovered", "queued", "fetched", "unchanged", "indexed")
        return {
            "id": view["crawl"],
            **{k: view[k] for k in keys},
            "dead_lettered": view["dead_lettered"],
            "skipped": view["skipped"],
            "seeds": view["seeds"][:5],
            "scope": view["scope"],
            "max_pages": view["max_pages"],
        }


def _add_fleet_status(server: MCPServer[Any], service: FleetService) -> None:
    @server.tool(
        name="fleet_status",
        title="Fleet queue status",
        description=(
            "The state of the fleet's queues: for the workers and the indexer, how many "
            "messages are pending, being processed (ack_pending) and were redelivered; "
            "message counts of the URL, result and dead-letter streams; dead letters by "
            "stage. A queue is done when pending and ack_pending are 0."
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def fleet_status() -> dict[str, Any]:
        try:
            info = await service.status()
        except FleetError as exc:
            raise ToolError(f"status is unavailable: {exc}") from None
        return {
            "consumers": info["consumers"],
            "streams": {k: v.get("messages") for k, v in info["streams"].items()},
            "dead_letters": info["dead_letters"],
            "dead_letters_by_stage": info["dead_letters_by_stage"],
            "render_domains": len(info["render_domains"]),
        }


def _headers(ctx: Context) -> dict[str, str] | None:
    """The HTTP request's headers (lowercase names), or None on stdio."""
    try:
        headers = ctx.headers
    except ValueError:  # no request context
        return None
    if headers is None:
        return None
    return {k.lower(): v for k, v in headers.items()}


def http_app(server: MCPServer[Any], *, host: str) -> Starlette:
    """The Streamable HTTP transport as a Starlette app with a ``/mcp`` route.

    Stateless with JSON answers: every POST is complete in itself (no session to keep, no
    open stream per client), which is all these tools need. On a loopback bind the SDK's
    DNS-rebinding protection (Host and Origin checks) is on.
    """
    security = None
    if host not in ("127.0.0.1", "localhost", "::1"):
        # Reached through other names (compose service, proxy): keys protect it instead.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        transport_security=security,
        host=host,
    )


async def serve_stdio(service: FleetService, stop: asyncio.Event) -> None:
    """`fleet mcp`: the tools on stdin/stdout until EOF or ``stop`` (logs go to stderr)."""
    await service.start(sample=False)
    try:
        server = build_mcp(service)
        session = asyncio.create_task(server.run_stdio_async(), name="fleet-mcp-stdio")
        stopped = asyncio.create_task(stop.wait(), name="fleet-mcp-stop")
        done, _ = await asyncio.wait({session, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (session, stopped):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if session in done:
            session.result()  # an error of the transport is not swallowed
    finally:
        await service.close()
