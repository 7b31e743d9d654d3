"""Workers as the tasks of a Docker Swarm service (`deploy/swarm/stack.yml`): the supervisor
sets the service's replica count, and Swarm starts tasks on any node or stops them.

Only service and task calls are made (``GET /services/{id}``, ``POST /services/{id}/update``,
``GET /tasks``), on a manager, through a socket proxy in the stack.

Scale-down is Swarm's own: it sends the tasks it removes the service's stop signal (SIGTERM),
waits the service's ``stop_grace_period``, then kills. Workers drain on SIGTERM, so the
grace must exceed their ``FLEET_DRAIN_TIMEOUT_S`` (checked: a warning names the fix).
A task being stopped has a desired state other than ``running`` and is not counted.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from collections.abc import Mapping
from typing import Any, Final, Protocol

from fleet.scaling.base import BackendError, Replica, WorkerStats
from fleet.scaling.docker import engine_client
from fleet.settings import Settings

log = logging.getLogger(__name__)

# Task states (swarmkit's TaskState) up to and including running: the task is or will be
# a worker. Later ones (complete, shutdown, failed, rejected, remove, orphaned) are final.
LIVE_STATES: Final = frozenset(
    {
        "new",
        "allocated",
        "pending",
        "assigned",
        "accepted",
        "preparing",
        "ready",
        "starting",
        "running",
    }
)

# Swarm's stop grace when a service sets none (`docker service create` default).
DEFAULT_STOP_GRACE_S: Final = 10.0

_NS: Final = 1_000_000_000


class SwarmApi(Protocol):
    """The calls of docker-py's low-level `APIClient` the swarm backend uses: service and
    task calls only (plus ping), what the stack's socket proxy allows."""

    def ping(self) -> bool:
        """``GET /_ping``: True when the engine answers; raises when it cannot be reached."""

    def inspect_service(self, service: str, insert_defaults: bool | None = None) -> dict[str, Any]:
        """``GET /services/{id}``: ``ID``, ``Version.Index`` and ``Spec`` of a service."""

    def update_service(
        self,
        service: str,
        version: int,
        *,
        task_template: dict[str, Any] | None = None,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        mode: dict[str, Any] | None = None,
        update_config: dict[str, Any] | None = None,
        endpoint_spec: dict[str, Any] | None = None,
        rollback_config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``POST /services/{id}/update?version=N`` with the spec made of the parts given
        (``fetch_current_spec`` left off: nothing is filled in from the current spec)."""

    def tasks(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """``GET /tasks`` with ``filters`` (``service``, ``desired-state``...)."""


def _unix(timestamp: str | None) -> float:
    """Unix time of an Engine timestamp (RFC 3339 with nanoseconds), 0.0 when absent."""
    if not timestamp:
        return 0.0
    # Python parses at most microseconds: cut the fraction to six digits.
    text = re.sub(r"(\.\d{6})\d+", r"\1", timestamp).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _env_value(env: list[str] | None, name: str) -> str | None:
    for item in env or ():
        key, _, value = item.partition("=")
        if key == name:
            return value
    return None


class SwarmBackend:
    """The tasks of one replicated Swarm service (``FLEET_SUPERVISOR_SERVICE``, such as
    ``fleet_worker`` for the `worker` service of the stack `fleet`).

    Scaling writes the service's spec back with only ``Mode.Replicated.Replicas`` changed,
    as `docker service scale` does: the spec is read without defaults filled in, since a
    spec written back with them differs from the tasks' and makes Swarm replace every task.
    """

    name = "swarm"

    @classmethod
    def from_settings(cls, api: SwarmApi, settings: Settings) -> SwarmBackend:
        """The service ``settings.supervisor_service``."""
        return cls(api, service=settings.supervisor_service)

    def __init__(self, api: SwarmApi, *, service: str) -> None:
        self._api = api
        self.service = service
        self._warned_grace: tuple[float, float] | None = None

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # docker-py is blocking: run it in a thread so /health and /metrics stay responsive.
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise BackendError(f"swarm: {what} failed: {type(exc).__name__}: {exc}") from exc

    async def _inspect(self) -> dict[str, Any]:
        service: dict[str, Any] = await self._call(
            f"inspect service {self.service}", self._api.inspect_service, self.service
        )
        mode = service.get("Spec", {}).get("Mode", {})
        if "Replicated" not in mode:
            kind = next(iter(mode), "unknown")
            raise BackendError(
                f"swarm: service {self.service} is in {kind.lower()} mode; the workers' service "
                "must be replicated (deploy.mode: replicated)"
            )
        self._check_grace(service["Spec"])
        return service

    def _check_grace(self, spec: Mapping[str, Any]) -> None:
        """Warn (once per value) when the stop grace cannot cover the workers' drain."""
        container = spec.get("TaskTemplate", {}).get("ContainerSpec", {})
        grace_ns = container.get("StopGracePeriod")
        grace = DEFAULT_STOP_GRACE_S if grace_ns is None else grace_ns / _NS
        raw = _env_value(container.get("Env"), "FLEET_DRAIN_TIMEOUT_S")
        try:
            drain = float(raw) if raw else Settings().drain_timeout_s
        except ValueError:
            return  # the workers themselves refuse to start with it, and say why
        if grace > drain or self._warned_grace == (grace, drain):
            return
        self._warned_grace = (grace, drain)
        log.warning(
            "service %s: stop_grace_period %gs does not exceed its workers' drain "
            "(FLEET_DRAIN_TIMEOUT_S=%g): a worker stopped by scale-down is killed mid-drain "
            "and its URLs wait for AckWait; set stop_grace_period to at least %gs",
            self.service,
            grace,
            drain,
            drain + 10,
        )

    async def ping(self) -> None:
        """Raise `BackendError` when the manager (or its socket proxy) does not answer, or
        the service is missing or not replicated."""
        await self._call("ping", self._api.ping)
        await self._inspect()

    async def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._call(
            f"list tasks of {self.service}", self._api.tasks, filters={"service": service_id}
        )
        return rows

    def _replica(self, task: Mapping[str, Any], state: str | None = None) -> Replica:
        return Replica(
            str(task["ID"]),
            f"{self.service}.{task.get('Slot', '?')}",
            _unix(task.get("CreatedAt")),
            state or str(task.get("Status", {}).get("State", "unknown")),
        )

    async def _classified(self) -> tuple[dict[str, Any], list[Replica], list[Replica]]:
        service = await self._inspect()
        live, stopping = [], []
        for task in sorted(
            await self._tasks(service["ID"]),
            key=lambda t: (_unix(t.get("CreatedAt")), t.get("Slot", 0)),
        ):
            state = task.get("Status", {}).get("State")
            if state not in LIVE_STATES:
                continue
            if task.get("DesiredState") == "running":
                live.append(self._replica(task))
            else:  # being shut down by Swarm: draining, no longer a replica
                stopping.append(self._replica(task, "stopping"))
        return service, live, stopping

    async def replicas(self) -> list[Replica]:
        """Tasks meant to run (desired state ``running``) that have not ended, oldest first.

        Tasks Swarm is stopping (scale-down, a rolling update) are left out. Raises
        `BackendError` when the service cannot be read.
        """
        return (await self._classified())[1]

    async def stopping(self) -> list[Replica]:
        """Tasks Swarm is stopping and whose worker has not exited yet (draining)."""
        return (await self._classified())[2]

    async def desired(self) -> int:
        """The service's replica count as set (``Spec.Mode.Replicated.Replicas``)."""
        service = await self._inspect()
        return int(service["Spec"]["Mode"]["Replicated"].get("Replicas", 1))

    async def scale_to(self, n: int) -> None:
        """Set the service's replicas to ``n``; Swarm starts tasks or stops the ones it picks
        (not running yet first, then from the nodes with the most). Raises `BackendError`
        when the spec cannot be written, such as when another client updated it since it was
        read (``update out of sequence``): the next interval tries again."""
        service = await self._inspect()
        spec = service["Spec"]
        if spec["Mode"]["Replicated"].get("Replicas") == n:
            return
        await self._call(
            f"scale {self.service} to {n}",
            self._api.update_service,
            service["ID"],
            service["Version"]["Index"],
            task_template=spec.get("TaskTemplate"),
            name=spec.get("Name"),
            labels=spec.get("Labels"),
            mode={"Replicated": {"Replicas": n}},
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )
        log.info("service %s scaled to %d replicas", self.service, n)

    async def get_worker_stats(self) -> list[WorkerStats]:
        """Every task meant to run, and those draining (state ``stopping``), with the
        service's memory limit. CPU and memory are not measured: the services API has no
        stats, and a task may run on another node (use `docker stats` there, or cAdvisor)."""
        service, live, stopping = await self._classified()
        resources = service["Spec"].get("TaskTemplate", {}).get("Resources") or {}
        limit = (resources.get("Limits") or {}).get("MemoryBytes")
        return [WorkerStats(r.id, r.name, r.state, None, None, limit) for r in live + stopping]

    async def close(self) -> None:
        """Nothing to wait for: Swarm finishes the stops it started without the supervisor."""
        return None


def connect_manager(*, timeout_s: float = 30.0) -> SwarmApi:
    """The Engine API of a Swarm manager (honours DOCKER_HOST: the stack's socket proxy).

    Raises ``BackendError`` naming the fix when it does not answer within ``timeout_s``.
    """
    api: SwarmApi = engine_client(timeout_s=timeout_s)
    return api
