"""A stand-in for tecnativa/docker-socket-proxy where its image cannot be pulled (CI).

Forwards Docker Engine API calls from TCP to the Docker socket, allowing only what the
stack's docker-proxy service allows (CONTAINERS=1, POST=1, EVENTS=1, PING=1, VERSION=1):
reading containers and events, creating, starting, stopping, restarting and killing
containers. Everything else (images, volumes, networks, exec, build, swarm, info...)
answers 403, like the real proxy.

With ``--allow swarm`` it allows what the Swarm stack's proxy allows instead
(deploy/swarm/stack.yml: SERVICES=1, TASKS=1, POST=1, PING=1, VERSION=1): reading, creating,
updating and removing services, and reading tasks; containers and everything else answer 403.

Run it: ``python -m tests.fakes.docker_proxy --host 0.0.0.0 --port 2375 [--allow swarm]``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web

_VERSION: Final = r"(?:/v[0-9.]+)?"
ALLOWED: Final = (
    ("GET", re.compile(rf"^{_VERSION}/(?:_ping|version|events)$")),
    ("HEAD", re.compile(rf"^{_VERSION}/_ping$")),
    ("GET", re.compile(rf"^{_VERSION}/containers/[^/]+(?:/(?:json|logs|stats|top))?$")),
    ("POST", re.compile(rf"^{_VERSION}/containers/create$")),
    (
        "POST",
        re.compile(rf"^{_VERSION}/containers/[^/]+/(?:start|stop|restart|kill|wait)$"),
    ),
    ("DELETE", re.compile(rf"^{_VERSION}/containers/[^/]+$")),
)
SWARM_ALLOWED: Final = (
    ("GET", re.compile(rf"^{_VERSION}/(?:_ping|version)$")),
    ("HEAD", re.compile(rf"^{_VERSION}/_ping$")),
    ("GET", re.compile(rf"^{_VERSION}/(?:services|tasks)(?:/.*)?$")),
    ("POST", re.compile(rf"^{_VERSION}/services/.+$")),
    ("DELETE", re.compile(rf"^{_VERSION}/services/[^/]+$")),
)
PROFILES: Final = {"containers": ALLOWED, "swarm": SWARM_ALLOWED}
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)
_HOP_HEADERS: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)


def allowed(method: str, path: str, profile: str = "containers") -> bool:
    return any(method == m and pattern.match(path) for m, pattern in PROFILES[profile])


def make_app(socket_path: str, profile: str = "containers") -> web.Application:
    async def proxy(request: web.Request) -> web.StreamResponse:
        if not allowed(request.method, request.path, profile):
            return web.json_response(
                {"message": f"{request.method} {request.path} is not allowed by the proxy"},
                status=403,
            )
        session = request.app[SESSION]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with session.request(
            request.method,
            f"http://docker{request.path_qs}",
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_HEADERS:
                    response.headers[key] = value
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path))
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Docker socket proxy (container calls only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2375)
    parser.add_argument("--socket", default="/var/run/docker.sock")
    parser.add_argument("--allow", choices=sorted(PROFILES), default="containers")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.socket, args.allow), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
