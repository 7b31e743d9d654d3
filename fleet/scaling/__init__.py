"""Scaling backends: where worker replicas run (``local`` processes, ``docker`` containers).

The supervisor decides how many; ``fleet.scaling.base`` says what a backend does.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from fleet.scaling.base import Backend
from fleet.settings import Settings


def backend_from_settings(settings: Settings, env: Mapping[str, str]) -> Backend:
    """The backend ``settings.supervisor_backend`` names; ``env`` is the environment local
    workers start with (the caller's, with the settings written over it)."""
    if settings.supervisor_backend == "local":
        from fleet.scaling.local import LocalBackend  # noqa: PLC0415 - each backend on demand

        return LocalBackend(
            {**env, **settings.to_env()}, stop_grace_s=settings.supervisor_stop_grace_s
        )
    from fleet.scaling.docker import DockerBackend, connect_engine  # noqa: PLC0415

    return DockerBackend.from_settings(connect_engine(), settings, hostname=socket.gethostname())
