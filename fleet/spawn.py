"""`fleet <role>` as a child process: the one place fleet starts its own roles (the worker
and indexer of `fleet run`, the workers of the local scaling backend).

A child gets its environment whole from the caller (its settings travel as ``FLEET_*``
variables), no stdin, and no stdout (commands print results there, roles print nothing);
its stderr, its logs, is this process's. It is stopped like any deployment stops it:
SIGTERM, a grace period for its drain, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger(__name__)


class RoleProcess:
    """One running (or exited) ``python -m fleet <role> ...`` child."""

    def __init__(self, role: str, proc: subprocess.Popen[bytes]) -> None:
        self.role = role
        self.proc = proc
        self.started_at = time.time()  # wall clock, as the backends report replicas

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.proc.poll()

    @property
    def crashed(self) -> bool:
        """Exited on its own with a non-zero code (a role exits 0 after its drain)."""
        return self.poll() not in (None, 0)

    def describe(self) -> str:
        """``worker (pid N, exit C)``, for crash reports."""
        return f"{self.role} (pid {self.pid}, exit {self.proc.returncode})"

    def terminate(self) -> None:
        """SIGTERM (the role drains and exits), unless it has exited already."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def _kill(self, grace_s: float) -> None:
        log.warning("%s pid %d still running after %.0fs; killing", self.role, self.pid, grace_s)
        self.proc.kill()

    def stop(self, grace_s: float) -> int:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; blocks; returns the exit code."""
        stop_all([self], grace_s)
        return self.proc.wait()

    async def stop_async(self, grace_s: float) -> int:
        """`stop` without blocking the event loop (the waits run in a thread)."""
        self.terminate()
        try:
            return await asyncio.to_thread(self.proc.wait, grace_s)
        except subprocess.TimeoutExpired:
            self._kill(grace_s)
            return await asyncio.to_thread(self.proc.wait)


def spawn_role(
    role: str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str],
    python: str = sys.executable,
) -> RoleProcess:
    """Start ``python -m fleet <role> <args>`` with exactly ``env`` as its environment.

    Returns as soon as the child is forked: quick enough to call from the event loop."""
    proc = subprocess.Popen(
        [python, "-m", "fleet", role, *args],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    return RoleProcess(role, proc)


def stop_all(processes: Iterable[RoleProcess], grace_s: float) -> None:
    """Stop children together: SIGTERM to all first, so they drain at the same time, then
    SIGKILL whichever is still running ``grace_s`` later. Blocks until all have exited."""
    procs = list(processes)
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p._kill(grace_s)
            p.proc.wait()
