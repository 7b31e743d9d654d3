"""`fleet check ROLE`: is this role able to do its job right now? (container healthchecks)

Every role needs NATS with JetStream and the three streams; a worker also needs its durable
consumer (and, rendering on, a browser that launches and renders), an indexer its consumer
and a reachable sink. The answer is one line naming what
was checked or what is missing, and an exit code (0 healthy, 1 not). The supervisor and
`fleet serve` (role ``api``) are asked over HTTP: their own ``/health`` already covers
their dependencies.

Credentials never appear in the answer: the NATS and sink URLs are shown without their
user:password (``redact_url``), and the Meilisearch key is never put in a message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
from collections.abc import Mapping
from typing import Final

import aiohttp
from nats.js.errors import NotFoundError

from fleet.errors import FleetError, TransientError
from fleet.nats.session import connect
from fleet.nats.streams import INDEXER_CONSUMER, WORKERS_CONSUMER
from fleet.settings import Settings
from fleet.sinks import open_sink
from fleet.urls import redact_servers, redact_url

ROLES: Final = ("nats", "publisher", "worker", "indexer", "supervisor", "api")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The answer of ``check``: the role, healthy or not, and what was checked or is missing."""

    role: str
    ok: bool
    detail: str

    def line(self) -> str:
        """The one line `fleet check` prints: ``ok: worker: ...`` or ``unhealthy: worker: ...``."""
        return f"{'ok' if self.ok else 'unhealthy'}: {self.role}: {self.detail}"


class Unhealthy(TransientError):
    """One reason the role cannot work, phrased for an operator.

    Transient: the role may be healthy at the next check (healthchecks are repeated). It
    never leaves this module: ``check`` turns it into an unhealthy ``CheckResult``.
    """

    reason = "unhealthy"


def _redacted(text: str, settings: Settings) -> str:
    """``text`` with the configured NATS and sink URLs shown without their credentials.

    Messages from other modules (the sink's errors, its repr) may name a URL as configured;
    the answer of a healthcheck ends up in `docker inspect`, so it must not carry a password.
    """
    for url in {*settings.nats_servers, settings.sink, settings.sink.rstrip("/")}:
        if (shown := redact_url(url)) != url:
            text = text.replace(url, shown)
    return text


async def _check(role: str, settings: Settings) -> list[str]:
    checked: list[str] = []
    shown = redact_servers(settings.nats_servers)
    try:
        nc = await connect(settings, name=f"fleet-check-{role}", reconnect=False)
    except FleetError as exc:
        raise Unhealthy(str(exc)) from None
    try:
        js = nc.jetstream()
        try:
            await js.account_info()
        except Exception as exc:
            raise Unhealthy(
                f"NATS at {shown} has no JetStream ({type(exc).__name__}); "
                "start nats-server with -js"
            ) from None
        checked.append(f"nats {shown} (JetStream)")
        if role == "nats":
            return checked
        streams = (settings.urls_stream, settings.results_stream, settings.dlq_stream)
        for stream in streams:
            try:
                await js.stream_info(stream)
            except NotFoundError:
                raise Unhealthy(
                    f"stream {stream} is missing (a worker, the indexer or `fleet publish` "
                    "creates it)"
                ) from None
        checked.append("streams " + ",".join(streams))
        consumers = {
            "worker": [(settings.urls_stream, WORKERS_CONSUMER)],
            "indexer": [(settings.results_stream, INDEXER_CONSUMER)],
        }.get(role, [])
        for stream, durable in consumers:
            try:
                await js.consumer_info(stream, durable)
            except NotFoundError:
                raise Unhealthy(f"consumer {durable} on {stream} is missing") from None
            checked.append(f"consumer {durable}")
    finally:
        await nc.close()
    if role == "indexer":
        checked.append(await _check_sink(settings))
    return checked


async def _check_browser(settings: Settings, environ: Mapping[str, str]) -> str:
    """A rendering worker's browser: launched, a data: URL rendered, closed (``probe_browser``).

    With ``render=auto`` and no Playwright installed the worker runs without rendering (it
    says so at start): healthy, and the answer says so. Playwright installed but no
    working browser is unhealthy in both modes: pages that need rendering would not get it.
    """
    from fleet.scrape.fetch import Fetcher  # noqa: PLC0415 - only a rendering worker's check
    from fleet.scrape.proxy import GuardedProxy  # noqa: PLC0415
    from fleet.scrape.render.pool import probe_browser  # noqa: PLC0415

    if settings.render == "auto" and importlib.util.find_spec("playwright") is None:
        return "browser: none (render=auto without Playwright: pages get the HTTP result)"
    try:
        async with Fetcher(settings) as fetcher, GuardedProxy(settings, fetcher) as proxy:
            return await probe_browser(settings, proxy, environ=environ)
    except FleetError as exc:
        raise Unhealthy(f"browser: {exc}") from None
    except TimeoutError:
        raise Unhealthy("browser: no page rendered in time (Chromium too slow to start?)") from None


async def _check_sink(settings: Settings) -> str:
    try:
        store = open_sink(settings)
        try:
            await store.open(readonly=True)
            count = await store.count()
        finally:
            await store.close()
    except FleetError as exc:
        raise Unhealthy(f"sink: {exc}") from None
    return f"sink {store!r} ({count} documents)"


async def _check_api(settings: Settings) -> list[str]:
    url = f"http://127.0.0.1:{settings.api_port}/health"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError) as exc:
        raise Unhealthy(f"no answer from {url} ({type(exc).__name__}: {exc})") from None
    checks = body.get("checks", {}) if isinstance(body, dict) else {}
    shown = ", ".join(f"{name} {c.get('state')}" for name, c in checks.items())
    if resp.status != 200:
        raise Unhealthy(f"{url} answered {resp.status} ({body.get('status')}): {shown}")
    return [f"{url}: {body.get('status')}: {shown}"]


async def _check_supervisor(settings: Settings) -> list[str]:
    url = f"http://127.0.0.1:{settings.supervisor_port}/health"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, ValueError) as exc:
        raise Unhealthy(f"no answer from {url} ({type(exc).__name__}: {exc})") from None
    deps = body.get("dependencies", {}) if isinstance(body, dict) else {}
    shown = ", ".join(
        f"{name} {'ok' if d.get('ok') else d.get('error') or 'down'}" for name, d in deps.items()
    )
    if resp.status != 200:
        raise Unhealthy(f"{url} answered {resp.status}: {shown or body}")
    # Degraded (an alert raised) is still healthy: restarting the supervisor fixes nothing.
    alerts = (body.get("alerts") or []) if isinstance(body, dict) else []
    said = "; ".join(f"{a.get('reason')}: {a.get('message')}" for a in alerts)
    return [f"{url}: {shown}" + (f"; degraded: {said}" if said else "")]


async def check(
    role: str,
    settings: Settings,
    *,
    timeout_s: float = 5.0,
    environ: Mapping[str, str] | None = None,
) -> CheckResult:
    """Never raises for an unhealthy system: the result says what is wrong.

    ``environ`` is the environment a worker's browser would get (the CLI passes its
    process's); without it a rendering worker's browser is not checked."""
    if role not in ROLES:
        return CheckResult(role, False, f"unknown role (choose from {', '.join(ROLES)})")
    try:
        async with asyncio.timeout(timeout_s):
            if role == "supervisor":
                checked = await _check_supervisor(settings)
            elif role == "api":
                checked = await _check_api(settings)
            else:
                checked = await _check(role, settings)
        if role == "worker" and settings.render != "never" and environ is not None:
            # Its own budget: a browser launch is slower than a NATS round trip.
            async with asyncio.timeout(timeout_s):
                checked.append(await _check_browser(settings, environ))
    except Unhealthy as exc:
        return CheckResult(role, False, _redacted(str(exc), settings))
    except TimeoutError:
        return CheckResult(role, False, f"no answer within {timeout_s:g}s")
    return CheckResult(role, True, _redacted("; ".join(checked), settings))
