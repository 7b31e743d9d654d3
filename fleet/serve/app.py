"""`fleet serve`: one ASGI application (FastAPI on Starlette, served by uvicorn).

* ``/health``: dependencies and their latency (``fleet.serve.health``), never behind a key;
* ``/api/*``: the HTTP API (``fleet.serve.api``), OpenAPI at ``/api/openapi.json``;
* ``/mcp``: the MCP Streamable HTTP transport (``fleet.serve.mcp``);
* ``/``: the dashboard, plain HTML/CSS/JS from the package (``fleet/serve/static``).

Why Starlette and uvicorn rather than aiohttp.web: the MCP SDK's Streamable HTTP transport
is an ASGI app (Starlette), and aiohttp cannot host ASGI apps without a third-party bridge.
FastAPI adds typed parameter checks (422s with what is wrong) and the OpenAPI document,
both generated from the routes rather than written by hand.

Keys: with FLEET_API_KEY set, every ``/api/*`` and ``/mcp`` request needs
``Authorization: Bearer KEY`` (the read-only FLEET_API_READ_KEY opens GETs and the MCP read
tools). Without a key the server only binds loopback and only answers requests whose Host is
a loopback name (DNS rebinding), and refuses cross-origin writes (CSRF).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from importlib import resources
from typing import Final
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet import __version__
from fleet.errors import ConfigError
from fleet.serve import api, problems
from fleet.serve.health import health
from fleet.serve.mcp import build_mcp, http_app
from fleet.serve.service import FleetService, key_role
from fleet.settings import Settings
from fleet.spawn import RoleProcess, spawn_role
from fleet.telemetry import Telemetry

log = logging.getLogger(__name__)

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); cached, as every
    request without a key is checked."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a key (ConfigError names the fix)."""
    if not settings.api_key and not is_loopback(settings.api_host):
        raise ConfigError(
            f"refusing to serve on {settings.api_host} without a key: anyone who can reach it "
            "could publish URLs and replay dead letters. Set FLEET_API_KEY (and optionally "
            "FLEET_API_READ_KEY for read-only clients), or bind --host 127.0.0.1"
        )


def _host_of(value: str) -> str:
    """The host part of a Host header or an Origin (no port, no scheme)."""
    if "://" in value:
        return (urlsplit(value).hostname or "").lower()
    if value.startswith("["):
        return value[1 : value.find("]")].lower() if "]" in value else value.lower()
    return value.rsplit(":", 1)[0].lower() if value.count(":") == 1 else value.lower()


class Guard:
    """ASGI middleware in front of everything: keys, loopback names, telemetry.

    Pure ASGI (not BaseHTTPMiddleware) so streaming answers are passed through untouched.
    """

    def __init__(self, app: ASGIApp, settings: Settings, telemetry: Telemetry) -> None:
        self.app = app
        self.settings = settings
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI request, timing it and counting it by route, method and status."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        with self.telemetry.serving(method, path) as hook:

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    hook.response(int(message["status"]))
                await send(message)

            refusal = self._refusal(scope, method, path)
            if refusal is not None:
                hook.routed("refused")
                await refusal(scope, receive, send_traced)
                return
            try:
                await self.app(scope, receive, send_traced)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None)
                hook.routed(template if isinstance(template, str) else _static_route(path))

    def _refusal(self, scope: Scope, method: str, path: str) -> Response | None:
        headers = _guard_headers(scope["headers"])
        if not self.settings.api_key:
            # No key: only a loopback bind. Refuse other Host names (DNS rebinding) and
            # writes from another origin (a page on the web posting to localhost).
            host = _host_of(headers.get("host", ""))
            if host and not is_loopback(host):
                return problems.problem_response(
                    403,
                    f"this server has no FLEET_API_KEY and answers only loopback names, "
                    f"not {host!r}; use http://127.0.0.1 or set a key",
                )
            origin = headers.get("origin")
            if method not in READ_METHODS and origin and not is_loopback(_host_of(origin)):
                return problems.problem_response(
                    403, f"cross-origin write from {origin!r} refused (no FLEET_API_KEY set)"
                )
            return None
        protected = path.startswith("/api/") or path == "/mcp" or path.startswith("/mcp/")
        if not protected:
            return None
        role = key_role(self.settings, headers.get("authorization"))
        if role is None:
            return problems.problem_response(
                401,
                "this needs Authorization: Bearer <key> with FLEET_API_KEY (or "
                "FLEET_API_READ_KEY for reads)",
                headers={"WWW-Authenticate": 'Bearer realm="fleet"'},
            )
        if role == "read" and method not in READ_METHODS and not path.startswith("/mcp"):
            return problems.problem_response(
                403, f"the read-only key cannot {method} {path}; use FLEET_API_KEY"
            )
        return None


_GUARD_HEADERS: Final = frozenset({b"host", b"origin", b"authorization"})


def _guard_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers the guard reads, by lowercase name."""
    return {
        k.decode("latin-1").lower(): v.decode("latin-1")
        for k, v in raw
        if k.lower() in _GUARD_HEADERS
    }


def _static_route(path: str) -> str:
    if path.startswith("/static/"):
        return "/static"
    return "unmatched"


def create_app(service: FleetService, *, sample: bool = True) -> FastAPI:
    """The whole server as one ASGI app; its lifespan starts and stops ``service``."""
    settings = service.settings
    mcp_server = build_mcp(service)
    mcp_app = http_app(mcp_server, host=settings.api_host)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start(sample=sample)
        try:
            async with mcp_server.session_manager.run():
                yield
        finally:
            await service.close()

    app = FastAPI(
        title="fleet",
        version=__version__,
        description="Search and control of a fleet scraper: search, pages, status, dead "
        "letters, publishing. Errors are RFC 9457 problem documents.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI would load its assets from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    problems.install(app)
    app.include_router(api.router)
    # The SDK's /mcp route (its ASGI endpoint), on our router: one app, one lifespan.
    app.router.routes.extend(mcp_app.routes)

    @app.get("/health", include_in_schema=True, summary="Dependencies and their latency")
    async def get_health() -> Response:
        status, body = await health(service)
        return api.json_response(body, status)

    static = resources.files("fleet.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        with resources.as_file(static / "index.html") as path:
            return FileResponse(path, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(packages=[("fleet.serve", "static")]), name="static")
    app.add_middleware(Guard, settings=settings, telemetry=service.telemetry)
    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: fleet's role runner owns SIGTERM/SIGINT and
    sets the stop event, which asks uvicorn to shut down gracefully."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(settings: Settings, *, shared: bool) -> socket.socket:
    """The bound socket; ``shared``: SO_REUSEPORT, so the other server processes bind the
    same port and the kernel spreads connections over them."""
    family = socket.AF_INET6 if ":" in settings.api_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.api_host, settings.api_port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {settings.api_host}:{settings.api_port} ({exc.strerror}); "
            "choose another --port / FLEET_API_PORT"
        ) from None
    return sock


def _start_workers(
    settings: Settings, port: int, env: Mapping[str, str] | None
) -> list[RoleProcess]:
    """FLEET_API_WORKERS - 1 more `fleet serve --join-port` processes on ``port``; their
    metrics stay off (the port of /metrics is this process's)."""
    if settings.api_workers <= 1:
        return []
    child = settings.replace(api_port=port, api_workers=1, metrics_port=0)
    child_env = {**(env or {}), **child.to_env()}
    workers = [
        spawn_role("serve", ["--join-port"], env=child_env) for _ in range(settings.api_workers - 1)
    ]
    log.info("started %d more server processes on port %d", len(workers), port)
    return workers


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    telemetry: Telemetry,
    *,
    ready: Callable[[str], Awaitable[None] | None] | None = None,
    join_port: bool = False,
    child_env: Mapping[str, str] | None = None,
) -> None:
    """Run `fleet serve` until ``stop``: then stop accepting, let requests in flight finish
    (at most FLEET_DRAIN_TIMEOUT_S), close NATS and the sink. ``ready`` gets the base URL.

    With FLEET_API_WORKERS > 1 this process starts the others (with ``child_env`` as their
    environment) on the same port and stops them with itself; ``join_port`` is set in those.
    """
    check_bind(settings)
    service = FleetService(settings, telemetry)
    app = create_app(service)
    sock = _listen(settings, shared=join_port or settings.api_workers > 1)
    port = sock.getsockname()[1]
    shown_host = f"[{settings.api_host}]" if ":" in settings.api_host else settings.api_host
    url = f"http://{shown_host}:{port}"
    config = uvicorn.Config(
        app,
        log_config=None,  # fleet's logging (text or JSON) handles uvicorn's loggers too
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        # Idle keep-alive connections are closed after this: a silent client holds nothing.
        timeout_keep_alive=5,
        server_header=False,
    )
    server = _Server(config)

    workers: list[RoleProcess] = []

    async def stopper() -> None:
        await stop.wait()
        log.info("stopping: finishing requests in flight (at most %gs)", settings.drain_timeout_s)
        server.should_exit = True
        for w in workers:  # they drain at the same time as this process
            w.terminate()

    watcher = asyncio.create_task(stopper())

    async def announce() -> None:
        # uvicorn has a `started` flag but no event to wait on.
        while not server.started and not server.should_exit:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if server.started:
            keys = (
                "keys required for /api and /mcp"
                if settings.api_key
                else "no FLEET_API_KEY: loopback only, no keys"
            )
            log.info("serving on %s (dashboard /, API /api, MCP /mcp, /health; %s)", url, keys)
            if ready is not None:
                result = ready(url)
                if result is not None:
                    await result

    announcer = asyncio.create_task(announce())
    workers.extend(_start_workers(settings, port, child_env))
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        announcer.cancel()
        sock.close()
        # SIGTERM'd by the stopper (again here if this process ended another way).
        await asyncio.gather(*(w.stop_async(settings.drain_timeout_s + 5) for w in workers))
    if not server.started:
        raise ConfigError("fleet serve did not start; see the log above")
