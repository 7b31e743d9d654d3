"""What a scaling backend is: the ``Backend`` protocol, the replicas and stats it reports.

The supervisor (``fleet.supervisor``) decides how many workers; a backend only lists,
starts and gracefully stops them, and reports their CPU and memory.

Scale-down is always graceful: a removed worker gets SIGTERM, stops pulling, finishes or
naks its in-flight URLs (`FLEET_DRAIN_TIMEOUT_S`) and exits; it is killed only after
`FLEET_SUPERVISOR_STOP_GRACE_S`. Stopping runs in the background (``Stopper``), so a long
drain never holds up the next decision, and a stopping worker no longer counts as a replica.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from fleet.errors import TransientError


class BackendError(TransientError):
    """The backend cannot list, start or stop workers right now (retried next interval)."""

    reason = "backend_unavailable"


@dataclasses.dataclass(frozen=True)
class Replica:
    """One worker as a backend lists it; ``state`` is in the backend's words (``running``...)."""

    id: str
    name: str
    created: float  # Unix time, for "newest first"
    state: str


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """CPU and memory of one worker, for ``/workers``; None where the backend could not measure."""

    id: str
    name: str
    state: str
    cpu_percent: float | None
    memory_bytes: int | None
    memory_limit_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


class Backend(Protocol):
    """What the supervisor needs from wherever the workers run."""

    @property
    def name(self) -> str:
        """Short name of the backend (``docker``, ``local``), used as a key in ``/health``."""

    async def ping(self) -> None:
        """Raise `BackendError` when the backend cannot be reached."""

    async def replicas(self) -> list[Replica]:
        """Workers running or starting, oldest first; stopping ones are not counted."""

    async def scale_to(self, n: int) -> None:
        """Start workers, or stop the newest ones gracefully, until `n` are running."""

    async def get_worker_stats(self) -> list[WorkerStats]:
        """CPU and memory of each replica; one that cannot be measured gets None values.

        Raises `BackendError` when the workers cannot be listed.
        """

    async def close(self) -> None:
        """Wait for the workers being stopped (the local backend also stops the rest)."""


class Stopper:
    """Background graceful stops, so a draining worker never blocks the control loop."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, key: str, stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``stop()`` in the background; ``key`` stays in ``tasks`` until it has finished.

        Backends look ``tasks`` up to leave a worker being stopped out of their replicas.
        """
        task = asyncio.create_task(stop(), name=f"stop-{key}")
        self.tasks[key] = task
        task.add_done_callback(lambda _: self.tasks.pop(key, None))

    async def wait(self) -> None:
        """Wait for every stop under way; their exceptions are dropped (each stop logs its own)."""
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
