"""The HTTP API under ``/api``: search, pages, status, dead letters, publishing, crawls.

Each route parses and checks its input, calls ``FleetService`` (the same functions as the
CLI) and encodes the answer with msgspec. The pydantic models below only document the
answers in the OpenAPI document (``/api/openapi.json``); they are not used to build them.

Crawls (``/api/crawls*``) mirror `fleet crawl start|list|status|cancel` and answer what
their ``--json`` prints.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from fleet.crawl import CrawlOptions
from fleet.serve import query
from fleet.serve.problems import Problem, problem_responses
from fleet.serve.query import IntParam, Param, StrParam
from fleet.serve.service import FleetService
from fleet.sinks.base import DOCUMENT_ID, SearchFilters

# POST /api/urls limits: a bigger list goes in several requests (or `fleet publish`).
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
MAX_URLS: Final = 100_000
MAX_SEARCH_LIMIT: Final = 100
MAX_SEARCH_OFFSET: Final = 10_000
MAX_DLQ_LIMIT: Final = 10_000

_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response encoded with msgspec (faster than FastAPI's own encoder)."""
    return Response(_encoder.encode(body), status_code=status, media_type="application/json")


async def get_service(request: Request) -> FleetService:
    """The app's one FleetService (a FastAPI dependency)."""
    # async: FastAPI runs a plain-def dependency on a worker thread, for every request.
    service: FleetService = request.app.state.service
    return service


Service = Annotated[FleetService, Depends(get_service)]


# -- documentation models


class HitModel(BaseModel):
    """One search hit."""

    id: str = Field(description="Page id, for /api/pages/{id}")
    url: str
    title: str
    snippet: str = Field(description="Text around the matched words ('…' where cut)")
    score: float | None = Field(
        None, description="Relevance, higher is better (SQLite: -bm25; Meilisearch: 0-1)"
    )


class SearchModel(BaseModel):
    """A page of search hits."""

    hits: list[HitModel]
    total: int | None = Field(None, description="All matches (estimated by Meilisearch)")


class PageModel(BaseModel):
    """A stored page: text, headings, links, metadata."""

    id: str
    url: str
    canonical_url: str
    host: str
    title: str
    description: str
    headings: list[str]
    text: str
    lang: str
    links: list[str]
    via: str = Field(description="http or browser (rendered)")
    fetched_at: float = Field(description="Unix time")
    content_hash: str


class PublishModel(BaseModel):
    """What `fleet publish --json` prints."""

    published: int
    duplicates: int
    invalid: int
    errors: list[dict[str, Any]] | None = Field(
        None, description="Line number and reason of each invalid line (only if any)"
    )


class ReplayModel(BaseModel):
    """How many dead letters were replayed."""

    replayed: int


class DeadLetterModel(BaseModel):
    """One dead letter with its reason and attempts."""

    seq: int
    url: str
    id: str
    stage: str = Field(description="worker or indexer")
    reason: str
    error: str
    attempts: int
    failed_at: float


class ReplayRequest(BaseModel):
    """Which dead letters to replay."""

    reason: str | None = Field(
        None, max_length=200, description="Only dead letters with this reason, e.g. http_503"
    )


router = APIRouter(prefix="/api")


SEARCH_PARAMS: Final[tuple[Param, ...]] = (
    StrParam("q", 1000, required=True, description="Words to look for"),
    IntParam("limit", 10, 1, MAX_SEARCH_LIMIT),
    IntParam("offset", 0, 0, MAX_SEARCH_OFFSET),
    StrParam("host", 253, description="Only pages of this host"),
    StrParam("lang", 35, description="Only pages in this language (en)"),
)


@router.get(
    "/search",
    summary="Search the indexed pages",
    response_model=None,
    openapi_extra={"parameters": query.openapi(SEARCH_PARAMS)},
    responses={200: {"model": SearchModel}, **problem_responses(401, 422, 503)},
)
async def search(request: Request) -> Response:
    """Best hits first, with snippets; ``total`` counts all matches."""
    # The hot route: parameters checked by fleet.serve.query, not by FastAPI (see there).
    args = query.parse(SEARCH_PARAMS, request.query_params)
    try:
        filters = SearchFilters.of(host=args["host"], lang=args["lang"])
    except ValueError as exc:
        raise Problem(422, str(exc)) from None
    service: FleetService = request.app.state.service
    page = await service.search(
        args["q"], limit=args["limit"], offset=args["offset"], filters=filters
    )
    return json_response(
        {
            "hits": [
                {"id": h.id, "url": h.url, "title": h.title, "snippet": h.snippet, "score": h.score}
                for h in page.hits
            ],
            "total": page.total,
        }
    )


@router.get(
    "/pages/{page_id}",
    summary="One stored page: text, headings, links, metadata",
    response_model=None,
    responses={200: {"model": PageModel}, **problem_responses(401, 404, 422, 503)},
)
async def get_page(
    service: Service,
    page_id: Annotated[
        str, Path(pattern=DOCUMENT_ID.pattern, description="The id from a search hit")
    ],
) -> Response:
    """The stored page with this id (404 problem if there is none)."""
    page = await service.page(page_id)
    if page is None:
        raise Problem(404, f"no page with id {page_id!r}; ids come from /api/search hits")
    return json_response(page.as_dict())


@router.get(
    "/status",
    summary="Streams, consumers and dead letters (= fleet status --json)",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}, **problem_responses(401, 503)},
)
async def status(service: Service) -> Response:
    """What `fleet status --json` prints."""
    return json_response(await service.status())


@router.get(
    "/dlq",
    summary="Dead letters with stage, reason and attempts (= fleet dlq list --json)",
    response_model=None,
    responses={200: {"model": list[DeadLetterModel]}, **problem_responses(401, 422, 503)},
)
async def dlq(
    service: Service, limit: Annotated[int, Query(ge=1, le=MAX_DLQ_LIMIT)] = 1000
) -> Response:
    """Dead letters, oldest first."""
    return json_response(await service.dead_letters(limit))


@router.post(
    "/dlq/replay",
    summary="Re-publish dead letters to their stage (= fleet dlq replay --json)",
    response_model=None,
    responses={200: {"model": ReplayModel}, **problem_responses(401, 403, 422, 503)},
)
async def dlq_replay(
    service: Service,
    body: ReplayRequest | None = None,
    reason: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """All dead letters, or those with ``reason`` (query or JSON body)."""
    return json_response(await service.replay(reason or (body.reason if body else None)))


_URLS_BODY: Final = {
    "requestBody": {
        "required": True,
        "description": "A JSON list of URLs, or text with one URL per line (# comments)",
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_URLS}
            },
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/urls",
    summary="Publish URLs (= fleet publish --json)",
    response_model=None,
    openapi_extra=_URLS_BODY,
    responses={200: {"model": PublishModel}, **problem_responses(400, 401, 403, 413, 415, 422)},
)
async def publish_urls(request: Request, service: Service) -> Response:
    """Invalid lines are counted and listed in ``errors``; 422 when no line was valid."""
    lines = parse_url_body(await read_body(request), request.headers.get("content-type"))
    result = await service.publish(lines)
    if result["published"] == 0 and result["duplicates"] == 0:
        raise Problem(
            422,
            f"none of the {result['invalid']} URL(s) is valid: "
            + "; ".join(f"line {e['line']}: {e['reason']}" for e in result["errors"][:5]),
            errors=result["errors"],
        )
    return json_response(result)


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES (without reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> Problem:
    return Problem(
        413,
        f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB; send the URLs in "
        "several requests or use `fleet publish FILE`",
    )


def parse_url_body(body: bytes, content_type: str | None) -> list[str]:
    """A JSON list of URL strings, or text lines; 4xx problems say what is wrong."""
    media = (content_type or "text/plain").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(400, "the body is not UTF-8 text") from None
    if media == "application/json" or media.endswith("+json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Problem(400, f"the body is not valid JSON ({exc}); send a list of URLs") from None
        if not isinstance(data, list):
            raise Problem(
                422,
                f'the JSON body must be a list of URL strings (["https://…"]), not a '
                f"{type(data).__name__}",
            )
        bad = next((i for i, item in enumerate(data) if not isinstance(item, str)), None)
        if bad is not None:
            raise Problem(
                422,
                f"item {bad} of the JSON list is a {type(data[bad]).__name__}, not a URL string",
            )
        lines: list[str] = data
    elif media.startswith("text/") or media == "application/x-www-form-urlencoded":
        # curl --data-binary @urls.txt sends the file as form-urlencoded: take it as lines.
        lines = text.splitlines()
    else:
        raise Problem(
            415,
            f"Content-Type {media} is not accepted: send application/json (a list of URLs) or "
            "text/plain (one URL per line)",
        )
    if len(lines) > MAX_URLS:
        raise Problem(413, f"{len(lines)} lines is more than {MAX_URLS} per request; split them")
    if not any(line.strip() and not line.strip().startswith("#") for line in lines):
        raise Problem(422, "the body holds no URL (give one per line, or a JSON list)")
    return lines


@router.get(
    "/dashboard",
    summary="What the dashboard shows (refreshed every second by the server)",
    response_model=None,
    responses={200: {"content": {"application/json": {}}}, **problem_responses(401)},
)
async def dashboard(service: Service) -> Response:
    """The dashboard's live snapshot (refreshed once a second by the server)."""
    return json_response(service.dashboard())


# -- crawls: `fleet crawl start|list|status|cancel`

MAX_CRAWL_SEEDS: Final = 1000
MAX_CRAWL_RULES: Final = 100
CRAWL_KEY: Final = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,199}$"


class CrawlRequest(BaseModel):
    """The options of `fleet crawl start` (the same names, the same defaults)."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=MAX_CRAWL_SEEDS,
        description="Seed URLs (may be left out for a recrawl or a known name)",
    )
    scope: Literal["host", "domain", "prefix", "any"] | None = Field(
        None,
        description="Follow links on the seed's host, registrable domain, URL prefix "
        "(default) or anywhere; a recrawl: the earlier crawl's",
    )
    include: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list,
        max_length=MAX_CRAWL_RULES,
        description="Follow only links matching one of these regexes",
    )
    exclude: list[Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=list,
        max_length=MAX_CRAWL_RULES,
        description="Never follow links matching one of these regexes",
    )
    max_depth: int | None = Field(None, ge=0, description="Clicks from a seed (none: no limit)")
    max_pages: int | None = Field(None, ge=1, description="Hard cap on pages queued")
    sitemaps: bool = Field(False, description="Also queue the pages of robots.txt/sitemap.xml")
    name: str = Field("", max_length=200, description="A name; starting it again is a recrawl")
    recrawl: str | None = Field(
        None, max_length=200, description="Revisit this crawl's pages (id or name)"
    )

    def options(self) -> CrawlOptions:
        """These options as the crawl functions take them."""
        return CrawlOptions(
            seeds=tuple(self.seeds),
            scope=self.scope,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            max_depth=self.max_depth,
            max_pages=self.max_pages,
            sitemaps=self.sitemaps,
            name=self.name,
            recrawl=self.recrawl,
        )


class CrawlStartedModel(BaseModel):
    """What `fleet crawl start --json` prints."""

    crawl: str = Field(description="The crawl's id, for /api/crawls/{crawl_id}")
    name: str
    seeds: list[str] = Field(description="The seeds, normalized")
    scope: str
    recrawl_of: str | None = Field(None, description="The crawl this one revisits")


class CrawlStatusModel(BaseModel):
    """What `fleet crawl status --json` prints: the crawl's state and counters."""

    crawl: str
    name: str
    state: Literal["running", "done", "cancelled"]
    settled: bool = Field(description="Every queued URL has its outcome")
    seeds: list[str]
    scope: str
    max_depth: int | None
    max_pages: int | None
    discovered: int = Field(description="Distinct in-scope URLs found")
    queued: int = Field(description="URLs queued and not yet done")
    fetched: int
    unchanged: int = Field(description="Recrawl: 304 or the same content")
    redirected: int
    indexed: int
    dead_lettered: int
    skipped: dict[str, int] = Field(description="URLs not fetched, by reason")
    sitemaps_read: int
    layer: int = Field(description="Depth released so far (depth-limited crawls)")
    created_at: float = Field(description="Unix time")
    recrawl_of: str | None


class CrawlCancelledModel(BaseModel):
    """What `fleet crawl cancel --json` prints."""

    crawl: str
    state: Literal["cancelled"]


CrawlKey = Annotated[
    str, Path(pattern=CRAWL_KEY, description="A crawl id, or a name (its newest crawl)")
]


@router.post(
    "/crawls",
    summary="Start a crawl (= fleet crawl start --json)",
    status_code=201,
    response_model=None,
    responses={201: {"model": CrawlStartedModel}, **problem_responses(401, 403, 404, 422, 503)},
)
async def start_crawl(service: Service, body: CrawlRequest) -> Response:
    """Queue the seeds and follow links within the scope; ``Location`` is its status.
    A ``recrawl`` that names no crawl is 404; a bad seed, scope rule or limit 422."""
    if not body.seeds and not (body.recrawl or body.name):
        raise Problem(422, 'give at least one seed URL ("seeds": ["https://…"]) or "recrawl"')
    started = await service.start_crawl(body.options())
    response = json_response(started, 201)
    response.headers["Location"] = f"/api/crawls/{started['crawl']}"
    return response


@router.get(
    "/crawls",
    summary="Every crawl with its state and counters (= fleet crawl list --json)",
    response_model=None,
    responses={200: {"model": list[CrawlStatusModel]}, **problem_responses(401, 503)},
)
async def list_crawls(service: Service) -> Response:
    """Every crawl, oldest first."""
    return json_response(await service.crawls())


@router.get(
    "/crawls/{crawl_id}",
    summary="A crawl's state and counters (= fleet crawl status --json)",
    response_model=None,
    responses={200: {"model": CrawlStatusModel}, **problem_responses(401, 404, 422, 503)},
)
async def crawl_status(service: Service, crawl_id: CrawlKey) -> Response:
    """The crawl with this id, or the newest with this name (404 problem if none)."""
    return json_response(await service.crawl_status(crawl_id))


@router.delete(
    "/crawls/{crawl_id}",
    summary="Cancel a crawl (= fleet crawl cancel --json)",
    response_model=None,
    responses={200: {"model": CrawlCancelledModel}, **problem_responses(401, 403, 404, 422, 503)},
)
async def cancel_crawl(service: Service, crawl_id: CrawlKey) -> Response:
    """URLs in flight finish; queued ones are skipped (reason ``cancelled``). Idempotent."""
    return json_response(await service.cancel_crawl(crawl_id))
