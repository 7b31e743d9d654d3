"""Static HTTP server for the benchmark site, run as its own process.

    python -m bench.server --root DIR [--host 127.0.0.1] [--port 0] [--max-seconds 3600]

Loads every file under DIR into memory, listens, prints one JSON line
``{"port": N, "files": M}`` on stdout once it accepts connections, and serves until SIGTERM,
SIGINT, end of stdin (the parent went away) or --max-seconds, whichever comes first.

Kept cheap on CPU because it shares the machine with what is measured: bodies are served from
memory, no access log, no compression, uvloop when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from aiohttp import web

HTML_HEADERS = {"Content-Type": "text/html; charset=utf-8"}


def load_site(root: Path) -> dict[str, bytes]:
    """Map URL path -> body; "a/index.html" is also served as "a/"."""
    files: dict[str, bytes] = {}
    for file in root.rglob("*"):
        if not file.is_file():
            continue
        rel = "/" + file.relative_to(root).as_posix()
        body = file.read_bytes()
        files[rel] = body
        if rel.endswith("/index.html"):
            files[rel[: -len("index.html")]] = body
    return files


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Stop when stdin reaches end of file: the parent closed it or went away."""
    with contextlib.suppress(OSError):
        # Raw reads on the descriptor: a daemon thread blocked in sys.stdin's buffered
        # reader holds its lock and makes interpreter shutdown abort.
        while os.read(sys.stdin.fileno(), 65536):
            pass
    with contextlib.suppress(RuntimeError):  # the loop may already be closed
        loop.call_soon_threadsafe(stop.set)


async def serve(root: Path, host: str, port: int, max_seconds: float) -> None:
    pages = load_site(root)
    not_found = b"<!DOCTYPE html><title>404</title><h1>Not found</h1>"

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = pages.get(request.path)
        if body is None:
            return web.Response(status=404, body=not_found, headers=HTML_HEADERS)
        return web.Response(body=body, headers=HTML_HEADERS)

    server = web.Server(handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    site = web.SockSite(runner, sock)
    await site.start()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()

    bound_port = sock.getsockname()[1]
    print(json.dumps({"port": bound_port, "files": len(pages)}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    coro = serve(args.root, args.host, args.port, args.max_seconds)
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


if __name__ == "__main__":
    main()
