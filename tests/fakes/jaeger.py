"""A stand-in for Jaeger all-in-one where its image cannot be pulled (CI): OTLP/HTTP in, a UI out.

Ports as in Jaeger: 4318 accepts ``POST /v1/traces`` (OTLP/HTTP, protobuf or JSON) and
answers like a collector; 16686 serves ``GET /`` (a small HTML page) and the query API's
``GET /api/services`` (service names seen in the spans); 14269 is the admin port whose
``GET /`` is the health endpoint. It keeps counts only, no trace storage.

Run it: ``python -m tests.fakes.jaeger [--host 0.0.0.0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_ExportTraceServiceRequest: Any
try:  # the proto package comes with fleet's OTLP exporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest as _ExportTraceServiceRequest,
    )
except ImportError:  # pragma: no cover - then only requests are counted
    _ExportTraceServiceRequest = None


@dataclass
class FakeJaeger:
    requests: int = 0
    spans: int = 0
    services: set[str] = field(default_factory=set)

    def record(self, body: bytes, content_type: str) -> None:
        self.requests += 1
        if "json" in content_type:
            self._record_json(json.loads(body or b"{}"))
            return
        if _ExportTraceServiceRequest is None:  # pragma: no cover
            return
        request: Any = _ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    self.services.add(attr.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                self.spans += len(scope_spans.spans)

    def _record_json(self, doc: dict[str, Any]) -> None:
        for resource_spans in doc.get("resourceSpans", []):
            for attr in resource_spans.get("resource", {}).get("attributes", []):
                if attr.get("key") == "service.name":
                    self.services.add(str(attr.get("value", {}).get("stringValue", "")))
            for scope_spans in resource_spans.get("scopeSpans", []):
                self.spans += len(scope_spans.get("spans", []))

    # -- apps

    def collector_app(self) -> web.Application:
        async def traces(request: web.Request) -> web.Response:
            body = await request.read()
            try:
                self.record(body, request.content_type)
            except Exception as exc:
                return web.json_response({"code": 3, "message": str(exc)}, status=400)
            if request.content_type == "application/json":
                return web.json_response({"partialSuccess": {}})
            # An empty ExportTraceServiceResponse is zero bytes of protobuf.
            return web.Response(body=b"", content_type="application/x-protobuf")

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/traces", traces)
        return app

    def ui_app(self) -> web.Application:
        async def index(_: web.Request) -> web.Response:
            return web.Response(
                text=(
                    "<!doctype html><title>Jaeger UI (fake)</title>"
                    f"<p>{self.spans} spans from {len(self.services)} services"
                ),
                content_type="text/html",
            )

        async def services(_: web.Request) -> web.Response:
            names = sorted(self.services)
            return web.json_response(
                {"data": names, "total": len(names), "limit": 0, "offset": 0, "errors": None}
            )

        async def stats(_: web.Request) -> web.Response:
            return web.json_response(
                {"requests": self.requests, "spans": self.spans, "services": sorted(self.services)}
            )

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/api/services", services)
        app.router.add_get("/_fake/stats", stats)
        return app

    def admin_app(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "Server available"})

        app = web.Application()
        app.router.add_get("/", health)
        return app


async def serve(host: str, otlp_port: int, ui_port: int, admin_port: int) -> None:
    fake = FakeJaeger()
    runners = []
    for app, port in (
        (fake.collector_app(), otlp_port),
        (fake.ui_app(), ui_port),
        (fake.admin_app(), admin_port),
    ):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    print(f"fake jaeger: OTLP {otlp_port}, UI {ui_port}, admin {admin_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Jaeger (OTLP/HTTP sink) for fleet's tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--otlp-port", type=int, default=4318)
    parser.add_argument("--ui-port", type=int, default=16686)
    parser.add_argument("--admin-port", type=int, default=14269)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.otlp_port, args.ui_port, args.admin_port))


if __name__ == "__main__":
    main()
