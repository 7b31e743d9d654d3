"""The test site as a standalone server (the compose stack's "site" container).

Serves the pages of ``tests.site`` (``/page/{n}``, with ``--delay`` seconds per page so that
work spreads over several workers) and counts requests per client address, so a test can
tell which worker container fetched how many pages: ``GET /_hits`` answers
``{"total": N, "by_client": {"172.18.0.5": N, ...}}``; ``DELETE /_hits`` resets the counts.

Run it: ``python -m tests.fakes.site --host 0.0.0.0 --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections

from aiohttp import web

from tests.site import page_html


def make_app(delay_s: float = 0.0) -> web.Application:
    hits: collections.Counter[str] = collections.Counter()

    async def page(request: web.Request) -> web.Response:
        hits[request.remote or "?"] += 1
        if delay_s:
            await asyncio.sleep(delay_s)
        n = int(request.match_info["n"])
        return web.Response(text=page_html(n), content_type="text/html", charset="utf-8")

    async def get_hits(_: web.Request) -> web.Response:
        return web.json_response({"total": sum(hits.values()), "by_client": dict(hits)})

    async def reset_hits(_: web.Request) -> web.Response:
        hits.clear()
        return web.json_response({"total": 0, "by_client": {}})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/page/{n}", page)
    app.router.add_get("/_hits", get_hits)
    app.router.add_delete("/_hits", reset_hits)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fleet's test site as a server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per page")
    args = parser.parse_args(argv)
    web.run_app(make_app(args.delay), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
