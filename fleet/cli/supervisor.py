"""`fleet supervisor`: scale workers on the queue's lag, its policy and backend flags."""

from __future__ import annotations

import asyncio
import os

import click

from fleet.cli.common import fail, guard, nats_option, run_coro, settings_with, until_signalled
from fleet.settings import SUPERVISOR_BACKENDS


@click.command()
@nats_option
@click.option(
    "--backend",
    type=click.Choice(list(SUPERVISOR_BACKENDS)),
    default=None,
    help="Where workers run: Docker containers, local processes, a Swarm service's tasks, "
    "a Kubernetes Deployment's pods [env FLEET_SUPERVISOR_BACKEND; docker]",
)
@click.option("--min", "min_", type=int, default=None, help="[env FLEET_SUPERVISOR_MIN; 1]")
@click.option("--max", "max_", type=int, default=None, help="[env FLEET_SUPERVISOR_MAX; 8]")
@click.option(
    "--target-lag",
    type=int,
    default=None,
    help="URLs (pending + unacked) per worker [env FLEET_SUPERVISOR_TARGET_LAG; 200]",
)
@click.option(
    "--activation-lag",
    type=int,
    default=None,
    help="Lag below which the fleet is idle (min workers) [env FLEET_SUPERVISOR_ACTIVATION_LAG; 1]",
)
@click.option(
    "--max-step",
    type=int,
    default=None,
    help="Most workers added or removed at once [env FLEET_SUPERVISOR_MAX_STEP; 4]",
)
@click.option(
    "--cooldown-s",
    type=float,
    default=None,
    help="Lag stays low this long before scaling down [env FLEET_SUPERVISOR_COOLDOWN_S; 60]",
)
@click.option("--interval-s", type=float, default=None, help="[env FLEET_SUPERVISOR_INTERVAL_S; 5]")
@click.option(
    "--stop-grace-s",
    type=float,
    default=None,
    help="SIGTERM → SIGKILL for a removed worker [env FLEET_SUPERVISOR_STOP_GRACE_S; 30]",
)
@click.option(
    "--port",
    type=int,
    default=None,
    help="/health, /metrics, /workers on this port [env FLEET_SUPERVISOR_PORT; 8080]",
)
@click.option(
    "--worker-service",
    default=None,
    help="Compose service of the workers [env FLEET_SUPERVISOR_WORKER_SERVICE; worker]",
)
@click.option(
    "--project",
    default=None,
    help="Docker: compose project of the workers [env FLEET_SUPERVISOR_PROJECT; default: "
    "the supervisor's own container's]",
)
@click.option(
    "--worker-image",
    default=None,
    help="Docker: image for workers when no worker container exists to copy "
    "[env FLEET_SUPERVISOR_WORKER_IMAGE]",
)
@click.option(
    "--worker-network",
    default=None,
    help="Docker: network of those workers [env FLEET_SUPERVISOR_WORKER_NETWORK]",
)
@click.option(
    "--service",
    default=None,
    help="Swarm: the workers' service, STACK_SERVICE [env FLEET_SUPERVISOR_SERVICE; fleet_worker]",
)
@click.option(
    "--deployment",
    default=None,
    help="Kubernetes: the workers' Deployment [env FLEET_SUPERVISOR_DEPLOYMENT; worker]",
)
@click.option(
    "--namespace",
    default=None,
    help="Kubernetes: its namespace [env FLEET_SUPERVISOR_NAMESPACE; default: the pod's own]",
)
@click.pass_context
def supervisor(
    ctx: click.Context,
    *,  # click passes every parameter by name
    nats_url: str | None,
    backend: str | None,
    min_: int | None,
    max_: int | None,
    target_lag: int | None,
    activation_lag: int | None,
    max_step: int | None,
    cooldown_s: float | None,
    interval_s: float | None,
    stop_grace_s: float | None,
    port: int | None,
    worker_service: str | None,
    project: str | None,
    worker_image: str | None,
    worker_network: str | None,
    service: str | None,
    deployment: str | None,
    namespace: str | None,
) -> None:
    """Scale workers on the queue's lag (containers, processes, a Swarm service or a
    Kubernetes Deployment) until SIGTERM."""
    settings = settings_with(
        ctx,
        nats_url=nats_url,
        supervisor_backend=backend,
        supervisor_min=min_,
        supervisor_max=max_,
        supervisor_target_lag=target_lag,
        supervisor_activation_lag=activation_lag,
        supervisor_max_step=max_step,
        supervisor_cooldown_s=cooldown_s,
        supervisor_interval_s=interval_s,
        supervisor_stop_grace_s=stop_grace_s,
        supervisor_port=port,
        supervisor_worker_service=worker_service,
        supervisor_project=project,
        supervisor_worker_image=worker_image,
        supervisor_worker_network=worker_network,
        supervisor_service=service,
        supervisor_deployment=deployment,
        supervisor_namespace=namespace,
    )
    from fleet import supervisor as supervisor_role
    from fleet.scaling import backend_from_settings

    backend_impl = guard(lambda: backend_from_settings(settings, os.environ))

    async def go(stop: asyncio.Event) -> None:
        lag = supervisor_role.JetStreamLag(settings)
        sup = supervisor_role.Supervisor(
            supervisor_role.Policy.from_settings(settings),
            lag,
            backend_impl,
            interval_s=settings.supervisor_interval_s,
        )
        try:
            await supervisor_role.serve(sup, stop, port=settings.supervisor_port)
        finally:
            await backend_impl.close()
            await lag.close()

    try:
        guard(lambda: run_coro(until_signalled(go)))
    except OSError as exc:
        fail(f"cannot serve on port {settings.supervisor_port}: {exc}")
