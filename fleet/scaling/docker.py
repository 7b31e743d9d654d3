"""Workers as Docker containers: copies of the compose `worker` service (or of a configured
image), created and removed through the Engine API (a socket proxy in compose).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from fleet.scaling.base import BackendError, Replica, Stopper, WorkerStats
from fleet.settings import Settings

log = logging.getLogger(__name__)


COMPOSE_PROJECT: Final = "com.docker.compose.project"


COMPOSE_SERVICE: Final = "com.docker.compose.service"


COMPOSE_NUMBER: Final = "com.docker.compose.container-number"


COMPOSE_ONEOFF: Final = "com.docker.compose.oneoff"


# Set on every container the supervisor creates (compose or not), for `docker ps --filter`.
MANAGED_LABEL: Final = "io.fleet.supervisor"


# Standalone (no compose): the selector label and the replica number.
WORKER_LABEL: Final = "io.fleet.worker"


NUMBER_LABEL: Final = "io.fleet.worker-number"


# Engine API version from which a container can be created on several networks at once
# (older engines need POST /networks/{id}/connect, which the socket proxy does not allow).
_MULTI_NETWORK_API: Final = (1, 44)


class DockerApi(Protocol):
    """The calls of docker-py's low-level `APIClient` the backend uses. All of them are
    container calls (plus ping and version), the only ones the socket proxy allows."""

    @property
    def api_version(self) -> str:
        """The Engine API version negotiated, such as ``"1.44"``."""

    def ping(self) -> bool:
        """``GET /_ping``: True when the engine answers; raises when it cannot be reached."""

    def containers(
        self,
        all: bool = False,
        filters: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /containers/json`` with ``filters``: a row per container (``all``: stopped too)."""

    def inspect_container(self, container: str) -> dict[str, Any]:
        """``GET /containers/{id}/json``: its attributes (Config, HostConfig, NetworkSettings)."""

    def create_container_from_config(
        self, config: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        """``POST /containers/create`` with ``config`` as the body; returns ``{"Id": ...}``."""

    def start(self, container: str) -> None:
        """Start a created container."""

    def stop(self, container: str, timeout: int | None = None) -> None:
        """Send the stop signal, SIGKILL after ``timeout`` seconds; returns once it has stopped."""

    def remove_container(self, container: str, v: bool = False, force: bool = False) -> None:
        """Remove the container (``force``: even if running; ``v``: with its anonymous volumes)."""

    def stats(
        self,
        container: str,
        decode: bool | None = None,
        stream: bool = True,
        one_shot: bool | None = None,
    ) -> Any:
        """Resource usage; with ``stream=False``, one sample as a dict (takes about a second)."""


@dataclasses.dataclass(frozen=True)
class WorkerTemplate:
    """How to create one more worker container: the `/containers/create` body (Config with
    HostConfig and NetworkingConfig), plus how to name and number it."""

    config: dict[str, Any]
    name_prefix: str  # the container is named f"{name_prefix}-{number}"
    number_label: str
    aliases: tuple[str, ...] = ()  # network aliases shared by every replica (the service)

    @classmethod
    def from_container(cls, attrs: Mapping[str, Any], *, multi_network: bool) -> WorkerTemplate:
        """Copy a running worker (a compose service's container): image, command, env,
        user, labels (compose's, so `docker compose ps` lists the copies), healthcheck,
        limits, read-only root, tmpfs, capabilities, restart and log policy, networks."""
        cfg = attrs["Config"]
        labels = dict(cfg.get("Labels") or {})
        config: dict[str, Any] = {
            key: cfg[key]
            for key in (
                "Image",
                "Cmd",
                "Entrypoint",
                "Env",
                "User",
                "WorkingDir",
                "Healthcheck",
                "StopSignal",
                "StopTimeout",
                "ExposedPorts",
                "Volumes",
            )
            if cfg.get(key) is not None
        }
        host = {
            k: v
            for k, v in (attrs.get("HostConfig") or {}).items()
            # Published host ports would collide; the id file names one container.
            if k not in ("PortBindings", "ContainerIDFile")
        }
        config["HostConfig"] = host
        config["Labels"] = labels
        project, service = labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)
        aliases: tuple[str, ...] = ()
        if project and service:
            prefix, number_label, aliases = f"{project}-{service}", COMPOSE_NUMBER, (service,)
            labels[COMPOSE_ONEOFF] = "False"
        else:
            old = str(attrs.get("Name", "worker")).lstrip("/")
            prefix, number_label = old.rsplit("-", 1)[0], NUMBER_LABEL
        networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        mode = host.get("NetworkMode")
        names = [n for n in networks if n == mode] + [n for n in networks if n != mode]
        if not multi_network:
            # The rest would need POST /networks/{id}/connect: not allowed by the proxy.
            names = names[:1]
        endpoints = {}
        for net in names:
            kept = [a for a in (networks[net].get("Aliases") or []) if a in aliases]
            endpoints[net] = {"Aliases": kept}
        config["NetworkingConfig"] = {"EndpointsConfig": endpoints}
        return cls(config=config, name_prefix=prefix, number_label=number_label, aliases=aliases)

    @classmethod
    def standalone(
        cls,
        *,
        image: str,
        env: Mapping[str, str],
        labels: Mapping[str, str],
        network: str | None,
        name_prefix: str,
        stop_grace_s: float,
    ) -> WorkerTemplate:
        """A worker without a compose service to copy: the image's own entrypoint with
        `worker`, hardened like the compose services (read-only, no capabilities)."""
        host: dict[str, Any] = {
            "RestartPolicy": {"Name": "unless-stopped"},
            "ReadonlyRootfs": True,
            "Tmpfs": {"/tmp": ""},  # noqa: S108 - a container's private tmpfs
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        }
        config: dict[str, Any] = {
            "Image": image,
            "Cmd": ["worker"],
            "Env": [f"{k}={v}" for k, v in sorted(env.items())],
            "Labels": dict(labels),
            "StopTimeout": int(stop_grace_s),
            "HostConfig": host,
        }
        if network:
            host["NetworkMode"] = network
            config["NetworkingConfig"] = {"EndpointsConfig": {network: {}}}
        return cls(config=config, name_prefix=name_prefix, number_label=NUMBER_LABEL)

    def render(self, number: int) -> tuple[str, dict[str, Any]]:
        """The name and create body of replica `number`."""
        name = f"{self.name_prefix}-{number}"
        config = {**self.config, "Labels": {**self.config.get("Labels", {})}}
        config["Labels"][self.number_label] = str(number)
        config["Labels"][MANAGED_LABEL] = "true"
        net = config.get("NetworkingConfig")
        if net and self.aliases:
            # Compose gives each container its own name as an alias too.
            config["NetworkingConfig"] = {
                "EndpointsConfig": {
                    k: {**v, "Aliases": [name, *v.get("Aliases", [])]}
                    for k, v in net["EndpointsConfig"].items()
                }
            }
        return name, config


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def compose_selector(project: str, service: str) -> dict[str, str]:
    """The labels compose puts on the containers of ``service`` in ``project``."""
    return {COMPOSE_PROJECT: project, COMPOSE_SERVICE: service}


def discover_compose_project(api: DockerApi, container: str) -> str | None:
    """The compose project of `container` (the supervisor's own, found by its hostname,
    which Docker sets to the container id), or None outside compose."""
    try:
        labels = api.inspect_container(container)["Config"].get("Labels") or {}
    except Exception:
        return None
    project = labels.get(COMPOSE_PROJECT)
    return str(project) if project else None


def _cpu_percent(stats: Mapping[str, Any]) -> float | None:
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    try:
        delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except (KeyError, TypeError):
        return None
    cpus = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [1])
    return round(delta / system * cpus * 100.0, 2) if system > 0 else 0.0


def _memory(stats: Mapping[str, Any]) -> tuple[int | None, int | None]:
    mem = stats.get("memory_stats") or {}
    if "usage" not in mem:
        return None, None
    detail = mem.get("stats") or {}
    # What `docker stats` shows: usage minus the reclaimable page cache.
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    return int(mem["usage"]) - int(cache), mem.get("limit")


class DockerBackend:
    """Worker containers through the Docker Engine API (directly or through a socket proxy:
    `DOCKER_HOST=tcp://docker-proxy:2375`). Uses only container calls.

    Workers are the containers carrying every `selector` label: in compose, the project's
    worker service (`compose_selector`). New ones copy the newest running worker
    (`WorkerTemplate.from_container`); `fallback` is used when there is none to copy.
    """

    name = "docker"

    @classmethod
    def from_settings(cls, api: DockerApi, settings: Settings, *, hostname: str) -> DockerBackend:
        """The workers of the compose project (`supervisor_project`, else the one of the
        supervisor's own container, found by its ``hostname``), or standalone workers."""
        service = settings.supervisor_worker_service
        project = settings.supervisor_project or discover_compose_project(api, hostname)
        selector = compose_selector(project, service) if project else {WORKER_LABEL: service}
        fallback = None
        if settings.supervisor_worker_image:
            # Workers get the supervisor's FLEET_* settings, not its secrets.
            env = settings.to_env() | {"FLEET_ROLE": "worker"}
            env.pop("FLEET_MEILI_API_KEY", None)
            fallback = WorkerTemplate.standalone(
                image=settings.supervisor_worker_image,
                env=env,
                labels=selector,
                network=settings.supervisor_worker_network,
                name_prefix=f"{project}-{service}" if project else f"fleet-{service}",
                stop_grace_s=settings.supervisor_stop_grace_s,
            )
        return cls(
            api, selector=selector, stop_grace_s=settings.supervisor_stop_grace_s, fallback=fallback
        )

    def __init__(
        self,
        api: DockerApi,
        *,
        selector: Mapping[str, str],
        stop_grace_s: float,
        fallback: WorkerTemplate | None = None,
    ) -> None:
        self._api = api
        self._selector = dict(selector)
        self._grace_s = stop_grace_s
        self._template = fallback
        self._stopper = Stopper()
        self._multi_network = _version_tuple(str(api.api_version)) >= _MULTI_NETWORK_API

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # docker-py is blocking: run it in a thread so /health and /metrics stay responsive.
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise BackendError(f"docker: {what} failed: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        """Raise `BackendError` when the engine (or its socket proxy) does not answer."""
        await self._call("ping", self._api.ping)

    async def _list(self) -> list[dict[str, Any]]:
        filters = {"label": [f"{k}={v}" for k, v in self._selector.items()]}
        rows: list[dict[str, Any]] = await self._call(
            "list containers", self._api.containers, all=True, filters=filters
        )
        return rows

    def _number(self, row: Mapping[str, Any]) -> int:
        labels = row.get("Labels") or {}
        for key in (COMPOSE_NUMBER, NUMBER_LABEL):
            with contextlib.suppress(KeyError, ValueError):
                return int(labels[key])
        return 0

    async def replicas(self) -> list[Replica]:
        """Worker containers running, created or restarting, oldest first; raises `BackendError`.

        Containers being stopped are left out, so they no longer count towards the decision.
        """
        rows = await self._list()
        live = [
            r
            for r in rows
            if r.get("State") in ("running", "created", "restarting")
            and r["Id"] not in self._stopper.tasks
        ]
        live.sort(key=lambda r: (r.get("Created", 0), self._number(r)))
        return [
            Replica(
                r["Id"],
                ((r.get("Names") or ["?"])[0]).lstrip("/"),
                float(r.get("Created", 0)),
                str(r.get("State")),
            )
            for r in live
        ]

    async def _refresh_template(self, running: Sequence[Replica]) -> WorkerTemplate:
        # The newest running worker is the template, so a `docker compose up` with a new
        # image or new settings is followed; the last one seen is kept for scaling from 0.
        for replica in reversed(running):
            if replica.state != "running":
                continue
            with contextlib.suppress(BackendError):
                attrs = await self._call(
                    "inspect container", self._api.inspect_container, replica.id
                )
                self._template = WorkerTemplate.from_container(
                    attrs, multi_network=self._multi_network
                )
                break
        if self._template is None:
            raise BackendError(
                "docker: no worker container to copy and no worker image configured "
                "(start the compose worker service, or give --worker-image)"
            )
        return self._template

    async def scale_to(self, n: int) -> None:
        """Create copies of the newest running worker until ``n`` run, or stop the newest ones.

        New containers are numbered after the highest number in use, copying the fallback template
        when no worker is running. Stops run in the background. Raises `BackendError` when there is
        nothing to copy or a call fails; a container created but not started is removed again.
        """
        running = await self.replicas()
        if len(running) < n:
            template = await self._refresh_template(running)
            taken = max((self._number(r) for r in await self._list()), default=0)
            for number in range(taken + 1, taken + 1 + n - len(running)):
                name, config = template.render(number)
                created = await self._call(
                    f"create {name}", self._api.create_container_from_config, config, name
                )
                try:
                    await self._call(f"start {name}", self._api.start, created["Id"])
                except BackendError:
                    # A created-only container would count as a replica for ever.
                    with contextlib.suppress(BackendError):
                        await self._call(
                            f"remove {name}", self._api.remove_container, created["Id"], force=True
                        )
                    raise
                log.info("started worker container %s (%s)", name, created["Id"][:12])
        for victim in reversed(running[n:]):  # newest first
            self._stopper.start(victim.id, functools.partial(self._stop, victim))

    async def _stop(self, victim: Replica) -> None:
        log.info("stopping worker container %s (SIGTERM, grace %.0fs)", victim.name, self._grace_s)
        try:
            await self._call(
                f"stop {victim.name}", self._api.stop, victim.id, timeout=int(self._grace_s)
            )
            await self._call(f"remove {victim.name}", self._api.remove_container, victim.id)
        except BackendError as exc:
            log.warning("%s", exc)

    async def _stats(self, replica: Replica) -> WorkerStats:
        if replica.state != "running":
            return WorkerStats(replica.id, replica.name, replica.state, None, None)
        try:
            raw = await self._call("stats", self._api.stats, replica.id, stream=False)
        except BackendError:
            return WorkerStats(replica.id, replica.name, replica.state, None, None)
        used, limit = _memory(raw)
        return WorkerStats(replica.id, replica.name, replica.state, _cpu_percent(raw), used, limit)

    async def get_worker_stats(self) -> list[WorkerStats]:
        """CPU and memory of every replica; None values where the engine gave none."""
        # One stats call takes about a second (two samples): ask for all at once.
        return list(await asyncio.gather(*(self._stats(r) for r in await self.replicas())))

    async def close(self) -> None:
        """Leave running workers alone (compose owns them too); finish stops under way."""
        await self._stopper.wait()


def connect_engine(*, timeout_s: float = 30.0) -> DockerApi:
    """The Docker Engine API (honours DOCKER_HOST: tcp://docker-proxy:2375 in compose).

    The engine must answer once at start-up (API version, the supervisor's own compose
    project); later outages are survived by the backend. Raises ``BackendError`` naming
    the fix when it does not answer within ``timeout_s``.
    """
    api: DockerApi = engine_client(timeout_s=timeout_s)
    return api


def engine_client(*, timeout_s: float = 30.0) -> Any:
    """docker-py's low-level ``APIClient`` from the environment (``DOCKER_HOST``...),
    retried for ``timeout_s``; raises ``BackendError`` naming the fix when it does not answer.
    """
    import time  # noqa: PLC0415 - the docker SDK and its clock only for these backends

    import docker  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return docker.from_env().api
        except docker.errors.DockerException as exc:
            if time.monotonic() > deadline:
                raise BackendError(
                    f"cannot reach Docker ({exc}); set DOCKER_HOST (a socket proxy)"
                ) from None
            time.sleep(1)
