"""`GET /health`: each dependency's state and latency, and one overall status.

``nats`` (connected, a PING round trip), ``jetstream`` (account info), ``sink`` (a document
count through the read-only sink) and ``supervisor`` (its own ``/health``, only when
FLEET_SUPERVISOR_URL is set; ``absent`` otherwise). The status is ``down`` (HTTP 503) when
NATS or JetStream is down, since the control API and the dashboard need them; ``degraded``
(HTTP 200) when only the sink or the supervisor is; ``ok`` otherwise. Details name the
problem, never a credential (URLs go through ``redact_url``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from fleet.errors import FleetError
from fleet.serve.service import FleetService
from fleet.urls import redact_url

CHECK_TIMEOUT_S: Final = 2.0

CheckResult = dict[str, Any]


async def _timed(probe: Callable[[], Awaitable[str]]) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            detail = await probe()
    except TimeoutError:
        state, detail = "down", f"no answer within {CHECK_TIMEOUT_S:g}s"
    except FleetError as exc:
        state, detail = "down", str(exc)
    except Exception as exc:
        state, detail = "down", f"{type(exc).__name__}: {exc}"
    else:
        state = "ok"
    return {
        "state": state,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "detail": detail,
    }


async def health(service: FleetService) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of `GET /health`; never raises."""
    settings = service.settings
    shown = redact_url(settings.nats_server)

    async def nats() -> str:
        await service.nats.jetstream()  # connects if needed
        nc = service.nats.client
        if nc is None or not nc.is_connected:
            raise FleetError(f"not connected to {shown} (reconnecting)")
        await nc.flush(timeout=int(CHECK_TIMEOUT_S))
        return f"connected to {shown}"

    async def jetstream() -> str:
        js = await service.nats.jetstream()
        info = await js.account_info()
        return f"{info.streams} streams, {info.consumers} consumers"

    async def sink() -> str:
        store = await service.sink()
        count = await store.count()
        return f"{store!r}: {count} documents"

    async def supervisor() -> str:
        info = await service.supervisor()
        assert info is not None
        if info["error"]:
            raise FleetError(f"{info['url']}: {info['error']}")
        if not info["ok"]:
            raise FleetError(f"{info['url']}/health reports {info['health'].get('status')}")
        return f"{info['url']}: {len(info.get('workers') or [])} workers"

    probes: dict[str, Callable[[], Awaitable[str]]] = {
        "nats": nats,
        "jetstream": jetstream,
        "sink": sink,
    }
    if settings.supervisor_url:
        probes["supervisor"] = supervisor
    results = await asyncio.gather(*(_timed(p) for p in probes.values()))
    checks: dict[str, CheckResult] = dict(zip(probes, results, strict=True))
    if "supervisor" not in checks:
        checks["supervisor"] = {
            "state": "absent",
            "latency_ms": None,
            "detail": "FLEET_SUPERVISOR_URL is not set",
        }
    if checks["nats"]["state"] != "ok" or checks["jetstream"]["state"] != "ok":
        status = "down"
    elif any(c["state"] == "down" for c in checks.values()):
        status = "degraded"
    else:
        status = "ok"
    return (503 if status == "down" else 200), {"status": status, "checks": checks}
