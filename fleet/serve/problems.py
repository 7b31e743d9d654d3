"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the server answers has ``type``, ``title``, ``status`` and a ``detail`` that
says what to fix; validation errors add ``errors`` (one entry per bad parameter). Bad
input is 400/413/415/422, never 500; a 500 says only "see the server log".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fleet.crawl import CrawlNotFound
from fleet.errors import FleetError, InvalidUrl
from fleet.serve.service import BadCrawl, Forbidden, Unavailable

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"

_encoder = msgspec.json.Encoder()


class Problem(Exception):
    """Raise in a route to answer a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.headers = headers
        self.extra = extra


def problem_body(
    status: int, detail: str, *, title: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The problem document for ``status``; ``title`` defaults to the status's phrase."""
    return {
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """``problem_body`` as an ``application/problem+json`` response."""
    body = _encoder.encode(problem_body(status, detail, title=title, **extra))
    return Response(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


# The OpenAPI description of an error response, for the routes' `responses=`.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=``: each of ``statuses`` answered as a problem document."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def _where(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("query", "path", "header", "body"):
        kind = {"query": "query parameter", "path": "path parameter"}.get(parts[0], parts[0])
        return f"{kind} {'.'.join(parts[1:])}".strip()
    return ".".join(parts)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem document."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> Response:
        return problem_response(
            exc.status, exc.detail, title=exc.title, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"where": _where(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['where']}: {e['message']}" for e in errors) or "invalid request"
        return problem_response(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":
            detail = f"no such route: {request.method} {request.url.path} (see /api/openapi.json)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        else:
            detail = str(exc.detail)
        return problem_response(
            exc.status_code, detail, headers=dict(exc.headers) if exc.headers else None
        )

    _install_fleet_errors(app)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "internal error; the server log has the details")


def _install_fleet_errors(app: FastAPI) -> None:
    """fleet's own errors: the most specific class's handler answers."""

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> Response:
        return problem_response(403, str(exc))

    @app.exception_handler(InvalidUrl)
    async def _invalid_url(_: Request, exc: InvalidUrl) -> Response:
        return problem_response(422, str(exc))

    @app.exception_handler(CrawlNotFound)
    async def _no_crawl(_: Request, exc: CrawlNotFound) -> Response:
        return problem_response(404, str(exc).replace("`fleet crawl list`", "GET /api/crawls"))

    @app.exception_handler(BadCrawl)
    async def _bad_crawl(_: Request, exc: BadCrawl) -> Response:
        return problem_response(422, str(exc))

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> Response:
        return problem_response(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(FleetError)
    async def _fleet(_: Request, exc: FleetError) -> Response:
        # ConfigError (a sink that is not there yet, a wrong Meilisearch key) and a publish
        # JetStream did not acknowledge: the server is fine, a dependency is not.
        return problem_response(503, str(exc), headers={"Retry-After": "5"})
