"""`fleet check ROLE`: is this role able to do its job right now? (container healthchecks)

Every role needs NATS with JetStream and the three streams; a worker also needs its durable
consumer, an indexer its consumer and a reachable sink. The answer is one line naming what
was checked or what is missing, and an exit code (0 healthy, 1 not). The supervisor and
`fleet serve` (role ``api``) are asked over HTTP: their own ``/health`` already covers
their dependencies.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Final

import aiohttp
from nats.js.errors import NotFoundError

from fleet.errors import FleetError
from fleet.nats.session import connect
from fleet.nats.streams import INDEXER_CONSUMER, WORKERS_CONSUMER
from fleet.settings import Settings
from fleet.sinks import open_sink

ROLES: Final = ("nats", "publisher", "worker", "indexer", "supervisor", "api")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    role: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'unhealthy'}: {self.role}: {self.detail}"


class Unhealthy(Exception):
    """One reason the role cannot work, phrased for an operator."""


async def _check(role: str, settings: Settings) -> list[str]:
    checked: list[str] = []
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
                f"NATS at {settings.nats_server} has no JetStream ({type(exc).__name__}); "
                "start nats-server with -js"
            ) from None
        checked.append(f"nats {settings.nats_server} (JetStream)")
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
    return [f"{url}: {shown}"]


async def check(role: str, settings: Settings, *, timeout_s: float = 5.0) -> CheckResult:
    """Never raises for an unhealthy system: the result says what is wrong."""
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
    except Unhealthy as exc:
        return CheckResult(role, False, str(exc))
    except TimeoutError:
        return CheckResult(role, False, f"no answer within {timeout_s:g}s")
    return CheckResult(role, True, "; ".join(checked))
