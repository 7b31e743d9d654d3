"""Workers as `fleet worker` subprocesses on this machine (`fleet run --autoscale`,
`fleet supervisor --backend local`).
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from fleet.scaling.base import Replica, Stopper, WorkerStats
from fleet.spawn import RoleProcess, spawn_role

log = logging.getLogger(__name__)


class LocalBackend:
    """`python -m fleet worker` subprocesses on this machine (`fleet run --autoscale`,
    `fleet supervisor --backend local`). Their environment is given whole by the caller."""

    name = "local"

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        stop_grace_s: float,
        args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self._env = dict(env)
        self._args = tuple(args)
        self._python = python
        self._grace_s = stop_grace_s
        self._running: list[RoleProcess] = []
        self._stopper = Stopper()
        self.crashed: list[str] = []  # workers that exited on their own with a non-zero code
        self._cpu: dict[int, Any] = {}  # psutil.Process per pid: cpu_percent needs history

    async def ping(self) -> None:
        """Always reachable: the workers are this process's children."""
        return None

    def _reap(self) -> None:
        alive = []
        for proc in self._running:
            code = proc.poll()
            if code is None:
                alive.append(proc)
            elif code != 0:
                self.crashed.append(proc.describe())
                log.warning("worker pid %d exited with code %d", proc.pid, code)
        self._running = alive

    async def replicas(self) -> list[Replica]:
        """The worker processes still running, oldest first (stopping ones are not listed).

        Workers found exited with a non-zero code are logged and added to ``crashed``.
        """
        self._reap()
        return [
            Replica(str(p.pid), f"worker-{p.pid}", p.started_at, "running") for p in self._running
        ]

    async def scale_to(self, n: int) -> None:
        """Spawn workers, or stop the newest in the background (SIGTERM, then SIGKILL), to ``n``."""
        self._reap()
        while len(self._running) < n:
            self._spawn()
        while len(self._running) > n:
            proc = self._running.pop()  # newest first
            self._stopper.start(str(proc.pid), functools.partial(self._stop, proc))

    def _spawn(self) -> None:
        proc = spawn_role("worker", self._args, env=self._env, python=self._python)
        self._running.append(proc)
        log.info("started worker pid %d", proc.pid)

    async def _stop(self, proc: RoleProcess) -> None:
        log.info("stopping worker pid %d (SIGTERM, grace %.0fs)", proc.pid, self._grace_s)
        code = await proc.stop_async(self._grace_s)
        self._cpu.pop(proc.pid, None)
        if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
            log.warning("worker pid %d exited with code %s while stopping", proc.pid, code)

    async def get_worker_stats(self) -> list[WorkerStats]:
        """CPU (since the previous call; 0.0 the first time) and RSS of each worker.

        A worker gone since it was listed shows as ``exited`` with no numbers.
        """
        out = []
        for proc in self._running:
            try:
                ps = self._cpu.setdefault(proc.pid, psutil.Process(proc.pid))
                with ps.oneshot():
                    cpu = float(ps.cpu_percent(interval=None))
                    rss = int(ps.memory_info().rss)
                out.append(WorkerStats(str(proc.pid), f"worker-{proc.pid}", "running", cpu, rss))
            except psutil.Error:
                out.append(WorkerStats(str(proc.pid), f"worker-{proc.pid}", "exited", None, None))
        return out

    async def close(self) -> None:
        """Stop every worker gracefully (the supervisor is going away with them)."""
        await self.scale_to(0)
        await self._stopper.wait()
