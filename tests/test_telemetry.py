"""Observability: traces across three processes (OTLP/HTTP), Prometheus metrics, JSON logs.

The integration test runs `fleet publish`, `fleet worker` and `fleet indexer` as separate
processes exporting to an OTLP/HTTP receiver in this test (protobuf decoded with
opentelemetry-proto), scrapes their /metrics endpoints and parses their JSON logs.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import nats
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import generate_latest

from fleet.errors import TransientError
from fleet.messages import UrlTask
from fleet.nats.streams import ensure_topology
from fleet.publisher import Publisher
from fleet.settings import Settings, SettingsError
from fleet.telemetry import NOOP, JsonFormatter, Metrics, Telemetry, tracing_configured
from fleet.urls import url_id
from tests.conftest import wait_for
from tests.pipeline_helpers import cli, drained, get_status, indexed_urls, write_urls
from tests.site import LoopbackSite

# --------------------------------------------------------------------------------------
# An OTLP/HTTP trace receiver


@dataclass(frozen=True)
class RSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attrs: dict[str, Any]
    status: int
    events: list[str]
    links: list[tuple[str, str]]


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        out[kv.key] = _value(kv.value)
    return out


@dataclass
class OtlpReceiver:
    spans: list[RSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        got: list[RSpan] = []
        for rs in request.resource_spans:
            service = str(_attrs(rs.resource.attributes).get("service.name"))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        RSpan(
                            service=service,
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attrs=_attrs(s.attributes),
                            status=s.status.code,
                            events=[e.name for e in s.events],
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        )
                    )
        with self.lock:
            self.spans.extend(got)

    def snapshot(self) -> list[RSpan]:
        with self.lock:
            return list(self.spans)


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                receiver.add(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format → {'name{labels}': value} (labels as exposed)."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# --------------------------------------------------------------------------------------
# Unit tests: the off path and the hooks


class FakeJs:
    def __init__(self) -> None:
        self.headers: list[dict[str, str] | None] = []

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[Any]:
        self.headers.append(headers)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(type("Ack", (), {"duplicate": False})())
        return fut

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        raise AssertionError("not used")


def test_tracing_configured_only_with_an_otlp_endpoint() -> None:
    assert not tracing_configured({})
    assert not tracing_configured({"OTEL_SERVICE_NAME": "x"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://otel:4318/v1/t"})
    assert not tracing_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_TRACES_EXPORTER": "none"}
    )


async def test_tracing_off_adds_no_headers_and_uses_the_noop_hooks() -> None:
    off = Telemetry.disabled("worker")
    assert not off.tracing and off.metrics is None
    assert off.publish_headers("fleet.urls") is None

    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    msg = FakeMsg("fleet.urls", {"traceparent": traceparent}, FakeMeta(2, None))
    headers = {"Nats-Msg-Id": "x"}
    # Every hook is the one shared do-nothing object: no spans, no context, no dict work.
    assert off.processing(msg, stage="worker", attempt=2) is NOOP
    assert off.batch([msg], stage="indexer") is NOOP
    assert off.fetching("http://a/") is NOOP
    assert off.stage("extract") is NOOP
    assert off.publishing("fleet.results", headers, message_id="x") is NOOP
    with off.publishing("fleet.results", headers, message_id="x"):
        pass
    assert headers == {"Nats-Msg-Id": "x"}

    # The publisher then sends only the dedup id.
    js = FakeJs()
    settings = Settings()
    publisher = Publisher(js, settings, headers_for=off.publish_headers(settings.urls_subject))
    await publisher.publish_urls([(1, "http://example.com/a")], on_invalid=lambda n, r: None)
    assert js.headers == [{"Nats-Msg-Id": url_id("http://example.com/a")}]


def _memory_telemetry(role: str = "worker") -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(role, tracer_provider=provider, metrics=Metrics()), exporter


@dataclass
class FakeMeta:
    num_delivered: int
    sequence: Any


@dataclass
class FakeMsg:
    subject: str
    headers: dict[str, str] | None
    metadata: FakeMeta


def test_worker_hooks_make_one_trace_with_children_and_propagate() -> None:
    tel, exporter = _memory_telemetry()
    headers_for = tel.publish_headers("fleet.urls")
    assert headers_for is not None
    task = UrlTask(url="http://example.com/", id="abc", published_at=0)
    url_headers = headers_for(task)
    assert set(url_headers) == {"traceparent"}

    msg = FakeMsg("fleet.urls", {**url_headers, "Nats-Msg-Id": "abc"}, FakeMeta(2, None))
    result_headers = {"Nats-Msg-Id": "r"}
    with tel.processing(msg, stage="worker", attempt=2, seq=7) as hook:
        hook.set_url(task.url)
        with tel.fetching(task.url) as fetching:
            fetching.response(200)
        with tel.stage("extract"):
            pass
        with tel.publishing("fleet.results", result_headers, message_id="r"):
            pass
        error = TransientError("HTTP 503", reason="http_503")
        hook.settled(error, action="nak", reason="http_503", dead_letter=False)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {
        "publish fleet.urls",
        "process fleet.urls",
        "GET",
        "extract",
        "publish fleet.results",
    }
    root = spans["publish fleet.urls"]
    process = spans["process fleet.urls"]
    trace_ids = {s.context.trace_id for s in spans.values() if s.context}
    assert len(trace_ids) == 1
    assert process.parent is not None and root.context is not None
    assert process.parent.span_id == root.context.span_id
    assert process.kind is SpanKind.CONSUMER
    attrs = dict(process.attributes or {})
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.destination.name"] == "fleet.urls"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.message.id"] == "abc"
    assert attrs["messaging.nats.delivered_count"] == 2
    assert attrs["fleet.outcome"] == "nak"
    assert process.status.status_code is StatusCode.ERROR
    for child in ("GET", "extract", "publish fleet.results"):
        parent = spans[child].parent
        assert parent is not None and process.context is not None
        assert parent.span_id == process.context.span_id
    fetch_attrs = dict(spans["GET"].attributes or {})
    assert fetch_attrs["http.response.status_code"] == 200
    assert fetch_attrs["url.full"] == task.url
    # The result carries the result-publish span's context on to the indexer.
    publish_ctx = spans["publish fleet.results"].context
    assert publish_ctx is not None
    assert f"{publish_ctx.span_id:016x}" in result_headers["traceparent"]

    assert tel.metrics is not None
    reg = tel.metrics.registry
    assert reg.get_sample_value("fleet_redeliveries_total", {"stage": "worker"}) == 1
    assert reg.get_sample_value("fleet_pages_fetched_total", {"outcome": "retry"}) == 1
    assert (
        reg.get_sample_value(
            "fleet_errors_total",
            {"stage": "worker", "error_class": "transient", "reason": "http_503"},
        )
        == 1
    )
    assert reg.get_sample_value("fleet_in_flight", {"stage": "worker"}) == 0
    assert reg.get_sample_value("fleet_fetch_duration_seconds_count") == 1


def test_indexer_batch_links_documents_and_each_gets_a_span_in_its_trace() -> None:
    tel, exporter = _memory_telemetry("indexer")
    producer, producer_spans = _memory_telemetry()
    msgs = []
    for n in range(3):
        headers = {"Nats-Msg-Id": f"d{n}"}
        with producer.publishing("fleet.results", headers, message_id=f"d{n}"):
            pass
        msgs.append(FakeMsg("fleet.results", headers, FakeMeta(1, None)))
    published = producer_spans.get_finished_spans()

    with tel.batch(msgs, stage="indexer") as batch:
        for n in range(3):
            with batch.document(n) as doc:
                doc.set_url(f"http://example.com/{n}")
                doc.settled(None, action="ack", reason="", dead_letter=False)

    spans = exporter.get_finished_spans()
    batch_span = next(s for s in spans if s.name == "process fleet.results")
    docs = [s for s in spans if s.name == "index fleet.results"]
    assert len(docs) == 3
    assert batch_span.context is not None
    linked = {(link.context.trace_id, link.context.span_id) for link in batch_span.links}
    assert linked == {(p.context.trace_id, p.context.span_id) for p in published if p.context}
    for doc_span, pub in zip(docs, published, strict=True):
        assert doc_span.parent is not None and pub.context is not None and doc_span.context
        assert doc_span.context.trace_id == pub.context.trace_id  # the document's own trace
        assert doc_span.parent.span_id == pub.context.span_id
        assert doc_span.context.trace_id != batch_span.context.trace_id
        assert [link.context.span_id for link in doc_span.links] == [batch_span.context.span_id]
    assert tel.metrics is not None
    assert tel.metrics.registry.get_sample_value("fleet_docs_indexed_total") == 3
    assert tel.metrics.registry.get_sample_value("fleet_indexer_batch_duration_seconds_count") == 1


def test_json_log_lines_carry_trace_and_span_ids() -> None:
    tel, exporter = _memory_telemetry()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("worker"))
    logger = logging.getLogger("test.telemetry.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("outside")
        msg = FakeMsg("fleet.urls", None, FakeMeta(1, None))
        with tel.processing(msg, stage="worker", attempt=1):
            logger.info("inside %s", "x", extra={"url": "http://example.com/"})
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    for entry in (outside, inside):
        assert {"time", "level", "role", "message", "url", "trace_id", "span_id"} <= set(entry)
        assert entry["role"] == "worker"
    assert outside["trace_id"] is None and outside["url"] is None
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    assert inside["trace_id"] == f"{span.context.trace_id:032x}"
    assert inside["span_id"] == f"{span.context.span_id:016x}"
    assert inside["url"] == "http://example.com/"
    assert inside["message"] == "inside x"
    assert inside["level"] == "info"


def test_metrics_server_serves_the_role_registry() -> None:
    tel = Telemetry("worker", metrics=Metrics())
    port = tel.serve_metrics(0, "127.0.0.1")
    try:
        assert tel.metrics is not None
        tel.metrics.docs_indexed.inc(2)
        scraped = scrape(port)
        assert scraped["fleet_docs_indexed_total"] == 2
        assert "fleet_render_duration_seconds_count" in scraped  # reserved for the browser
    finally:
        tel.shutdown()


# --------------------------------------------------------------------------------------
# Integration: three processes, one trace per URL


def _spawn(
    settings: Settings, role: str, env: dict[str, str], stderr: Path
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1", **env}
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fleet", role],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _otel_env(receiver: OtlpReceiver, service: str, delay_ms: int) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),
        "OTEL_TRACES_SAMPLER": "always_on",
        "FLEET_LOG_FORMAT": "json",
    }


async def test_traces_metrics_and_logs_across_three_processes(
    settings: Settings, site: LoopbackSite, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    pages = [site.url(f"/page/{n}") for n in range(3)]
    failing = site.url("/status/503")
    urls = [*pages, failing]
    worker_port, indexer_port = free_port(), free_port()
    # Worker and indexer export only when they stop: a long batch delay proves that a
    # SIGTERM flushes what is buffered. The publisher flushes on exit.
    worker = _spawn(
        settings,
        "worker",
        {
            **_otel_env(otlp, "fleet-worker", 60_000),
            "FLEET_METRICS_PORT": str(worker_port),
            "FLEET_LOG_LEVEL": "INFO",
        },
        tmp_path / "worker.log",
    )
    indexer = _spawn(
        settings,
        "indexer",
        {**_otel_env(otlp, "fleet-indexer", 60_000), "FLEET_METRICS_PORT": str(indexer_port)},
        tmp_path / "indexer.log",
    )
    procs = [worker, indexer]
    try:
        out = cli(
            settings,
            "publish",
            str(write_urls(tmp_path / "urls.txt", urls)),
            "--json",
            env=_otel_env(otlp, "fleet-publish", 100),
        )
        assert out.returncode == 0, out.stderr

        async def done() -> bool:
            st = await get_status(settings)
            return len(indexed_urls(settings)) == len(pages) and st["dead_letters"] == 1

        await wait_for(done, timeout=60)
        await wait_for(lambda: drained(settings), timeout=30)

        # Metrics, scraped over HTTP from each role (counted just after the ack/term).
        async def counted() -> bool:
            w, i = scrape(worker_port), scrape(indexer_port)
            return (
                w.get('fleet_pages_fetched_total{outcome="ok"}') == 3
                and w.get('fleet_pages_fetched_total{outcome="dead_letter"}') == 1
                and i.get("fleet_docs_indexed_total") == 3
            )

        await wait_for(counted, timeout=10)
        w = scrape(worker_port)
        assert w['fleet_pages_fetched_total{outcome="ok"}'] == 3
        assert w['fleet_pages_fetched_total{outcome="retry"}'] == 2
        assert w['fleet_pages_fetched_total{outcome="dead_letter"}'] == 1
        assert (
            w['fleet_errors_total{error_class="transient",reason="http_503",stage="worker"}'] == 3
        )
        assert w['fleet_redeliveries_total{stage="worker"}'] == 2
        assert w['fleet_dead_letters_total{reason="http_503",stage="worker"}'] == 1
        assert w["fleet_fetch_duration_seconds_count"] == 6
        assert w['fleet_in_flight{stage="worker"}'] == 0
        i = scrape(indexer_port)
        assert i["fleet_docs_indexed_total"] == 3
        assert i["fleet_indexer_batch_duration_seconds_count"] >= 1
        assert i['fleet_in_flight{stage="indexer"}'] == 0
    finally:
        _stop(procs)
    assert [p.returncode for p in procs] == [0, 0]

    def expected_spans() -> bool:
        spans = otlp.snapshot()
        return (
            sum(s.name == "index fleet.results" for s in spans) == 3
            and sum(s.name == "process fleet.urls" for s in spans) == 6
        )

    await wait_for(lambda: asyncio.sleep(0, expected_spans()), timeout=15)
    spans = otlp.snapshot()
    by_id = {s.span_id: s for s in spans}

    def trace_of(url: str) -> list[RSpan]:
        roots = [s for s in spans if s.name == "publish fleet.urls" and s.attrs["url.full"] == url]
        assert len(roots) == 1, roots
        in_trace = [s for s in spans if s.trace_id == roots[0].trace_id]
        # Exactly one trace per URL: every span naming this URL is in it.
        assert {s.trace_id for s in spans if s.attrs.get("url.full") == url} == {roots[0].trace_id}
        return in_trace

    for url in pages:
        t = trace_of(url)
        assert {s.service for s in t} == {"fleet-publish", "fleet-worker", "fleet-indexer"}
        (root,) = [s for s in t if s.name == "publish fleet.urls"]
        assert root.parent_id == "" and root.kind == 4  # SPAN_KIND_PRODUCER
        (process,) = [s for s in t if s.name == "process fleet.urls"]
        assert process.parent_id == root.span_id and process.service == "fleet-worker"
        assert process.attrs["messaging.system"] == "nats"
        assert process.attrs["messaging.destination.name"] == settings.urls_subject
        assert process.attrs["messaging.nats.delivered_count"] == 1
        (fetch,) = [s for s in t if s.name == "GET"]
        assert fetch.parent_id == process.span_id
        assert fetch.attrs["http.response.status_code"] == 200
        assert fetch.attrs["url.full"] == url
        (extract,) = [s for s in t if s.name == "extract"]
        assert extract.parent_id == process.span_id
        (result,) = [s for s in t if s.name == "publish fleet.results"]
        assert result.parent_id == process.span_id
        (doc,) = [s for s in t if s.name == "index fleet.results"]
        assert doc.parent_id == result.span_id and doc.service == "fleet-indexer"
        assert doc.attrs["fleet.outcome"] == "ack"
        # The indexer's batch span (its own trace) links to this document's context.
        (batch_id,) = [sid for tid, sid in doc.links if tid != doc.trace_id]
        batch = by_id[batch_id]
        assert batch.name == "process fleet.results" and batch.service == "fleet-indexer"
        assert (result.trace_id, result.span_id) in batch.links

    # The failing URL: every attempt in its trace, errors recorded, the dead letter visible.
    t = trace_of(failing)
    (root,) = [s for s in t if s.name == "publish fleet.urls"]
    attempts = sorted(
        (s for s in t if s.name == "process fleet.urls"),
        key=lambda s: int(s.attrs["messaging.nats.delivered_count"]),
    )
    assert [a.attrs["messaging.nats.delivered_count"] for a in attempts] == [1, 2, 3]
    assert all(a.parent_id == root.span_id for a in attempts)
    assert all(a.status == 2 for a in attempts)  # STATUS_CODE_ERROR
    assert all("exception" in a.events for a in attempts)
    assert [a.attrs["fleet.outcome"] for a in attempts] == ["nak", "nak", "term"]
    assert "dead_letter" in attempts[-1].events
    fetches = [s for s in t if s.name == "GET"]
    assert sorted(f.attrs["http.response.status_code"] for f in fetches) == [503] * 3
    assert not [s for s in t if s.service == "fleet-indexer"]

    # JSON logs: every line parses; the retry and dead-letter lines carry the attempt's span.
    lines = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.strip()
    ]
    assert lines and all({"time", "level", "role", "message"} <= set(x) for x in lines)
    about_failing = [x for x in lines if x["url"] == failing]
    assert len(about_failing) == 3  # two retries, one dead letter
    attempt_spans = {a.span_id for a in attempts}
    for entry in about_failing:
        assert entry["role"] == "worker"
        assert entry["trace_id"] == root.trace_id
        assert entry["span_id"] in attempt_spans
    assert re.match(r"\d{4}-\d\d-\d\dT", about_failing[0]["time"])
    for line in (tmp_path / "indexer.log").read_text().splitlines():
        json.loads(line)


def test_worker_metrics_port_in_use_is_a_clear_error(settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        out = cli(settings, "worker", "--metrics-port", str(port))
    assert out.returncode == 2
    assert f"cannot serve metrics on port {port}" in out.stderr


def test_metrics_port_setting() -> None:
    assert Settings.from_env({}).metrics_port == 0
    assert Settings.from_env({"FLEET_METRICS_PORT": "9100"}).metrics_port == 9100
    with pytest.raises(SettingsError, match="FLEET_METRICS_PORT"):
        Settings.from_env({"FLEET_METRICS_PORT": "70000"})


async def test_publisher_counts_published_duplicate_and_invalid(settings: Settings) -> None:
    telemetry = Telemetry("publish", metrics=Metrics())
    nc = await nats.connect(settings.nats_server)
    js = nc.jetstream()
    await ensure_topology(js, settings)
    lines = list(
        enumerate(["http://a.example/1", "http://a.example/1#x", "bad", "http://b.example/"], 1)
    )
    publisher = Publisher(js, settings, counted=telemetry.published)
    await publisher.publish_urls(lines, on_invalid=lambda _n, _r: None)
    await publisher.publish_urls(lines[:1], on_invalid=lambda _n, _r: None)  # dedup by JetStream
    await nc.close()
    assert telemetry.metrics is not None
    text = generate_latest(telemetry.metrics.registry).decode()
    assert 'fleet_urls_published_total{result="published"} 2.0' in text
    assert 'fleet_urls_published_total{result="duplicate"} 2.0' in text
    assert 'fleet_urls_published_total{result="invalid"} 1.0' in text
