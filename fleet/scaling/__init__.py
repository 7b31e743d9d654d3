"""Scaling backends: where worker replicas run (``local`` processes, ``docker`` containers,
the tasks of a ``swarm`` service, the pods of a ``kubernetes`` Deployment).

The supervisor decides how many; ``fleet.scaling.base`` says what a backend does.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from fleet.scaling.base import Backend
from fleet.settings import Settings


def backend_from_settings(settings: Settings, env: Mapping[str, str]) -> Backend:
    """The backend ``settings.supervisor_backend`` names; ``env`` is the caller's environment
    (local workers start with it, the settings written over it; ``KUBECONFIG`` is read there)."""
    if settings.supervisor_backend == "local":
        from fleet.scaling.local import LocalBackend  # noqa: PLC0415 - each backend on demand

        return LocalBackend(
            {**env, **settings.to_env()}, stop_grace_s=settings.supervisor_stop_grace_s
        )
    if settings.supervisor_backend == "kubernetes":
        from fleet.scaling.kubernetes import KubernetesBackend, connect_cluster  # noqa: PLC0415

        return KubernetesBackend.from_settings(connect_cluster(env.get("KUBECONFIG")), settings)
    if settings.supervisor_backend == "swarm":
        from fleet.scaling.swarm import SwarmBackend, connect_manager  # noqa: PLC0415

        return SwarmBackend.from_settings(connect_manager(), settings)
    from fleet.scaling.docker import DockerBackend, connect_engine  # noqa: PLC0415

    return DockerBackend.from_settings(connect_engine(), settings, hostname=socket.gethostname())
