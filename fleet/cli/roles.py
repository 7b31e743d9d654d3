"""The long-lived roles run until SIGTERM (`fleet worker`, `fleet indexer`, `fleet serve`,
`fleet mcp`) and their health check, `fleet check`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable

import click

from fleet.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    guard,
    json_option,
    metrics_option,
    nats_option,
    render_option,
    run_coro,
    settings_with,
    sink_option,
    start_telemetry,
    until_signalled,
)


@click.command()
@nats_option
@click.option("--concurrency", type=int, default=None, help="[env FLEET_WORKER_CONCURRENCY]")
@render_option
@metrics_option
@click.pass_context
def worker(
    ctx: click.Context,
    nats_url: str | None,
    concurrency: int | None,
    render: str | None,
    metrics_port: int | None,
) -> None:
    """Pull URLs and scrape them (competing with every other worker) until SIGTERM."""
    settings = settings_with(
        ctx,
        nats_url=nats_url,
        worker_concurrency=concurrency,
        render=render,
        metrics_port=metrics_port,
    )
    from fleet import worker as worker_role
    from fleet.scrape.render.chromium import driver_node_options

    if settings.render != "never":
        # Before Playwright's driver starts: it inherits this process's environment.
        os.environ["NODE_OPTIONS"] = driver_node_options(
            settings, os.environ.get("NODE_OPTIONS", "")
        )
    telemetry = start_telemetry("worker", settings)
    environ = dict(os.environ)
    try:
        guard(
            lambda: run_coro(
                until_signalled(
                    lambda stop: worker_role.serve(settings, stop, telemetry, environ=environ)
                )
            )
        )
    finally:
        telemetry.shutdown()  # flushes the last spans (SIGTERM included)


@click.command()
@nats_option
@sink_option
@metrics_option
@click.pass_context
def indexer(
    ctx: click.Context, nats_url: str | None, sink: str | None, metrics_port: int | None
) -> None:
    """Consume results and write them to the sink until SIGTERM."""
    settings = settings_with(ctx, nats_url=nats_url, sink=sink, metrics_port=metrics_port)
    from fleet import indexer as indexer_role
    from fleet.sinks import open_sink

    telemetry = start_telemetry("indexer", settings)

    async def go(stop: asyncio.Event) -> int:
        store = open_sink(settings)
        try:
            return await indexer_role.serve(settings, stop, store, telemetry)
        finally:
            await store.close()

    try:
        guard(lambda: run_coro(until_signalled(go)))
    finally:
        telemetry.shutdown()  # flushes the last spans (SIGTERM included)


@click.command()
@click.option("--host", default=None, help="Address to listen on [env FLEET_API_HOST; 127.0.0.1]")
@click.option("--port", type=int, default=None, help="[env FLEET_API_PORT; 8000]")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Server processes on the port, about one per core [env FLEET_API_WORKERS; 1]",
)
# A server process started by another one (--workers): it joins the port (SO_REUSEPORT).
@click.option("--join-port", is_flag=True, hidden=True)
@nats_option
@sink_option
@metrics_option
@click.pass_context
def serve(
    ctx: click.Context,
    *,  # click passes every parameter by name
    host: str | None,
    port: int | None,
    workers: int | None,
    join_port: bool,
    nats_url: str | None,
    sink: str | None,
    metrics_port: int | None,
) -> None:
    """HTTP API, MCP (/mcp) and the live dashboard (/) until SIGTERM.

    With FLEET_API_KEY set every /api and /mcp request needs `Authorization: Bearer KEY`
    (FLEET_API_READ_KEY: reads only); without it the server binds loopback only.
    """
    settings = settings_with(
        ctx,
        api_host=host,
        api_port=port,
        api_workers=workers,
        nats_url=nats_url,
        sink=sink,
        metrics_port=metrics_port,
    )
    from fleet.serve.app import check_bind
    from fleet.serve.app import serve as serve_role

    guard(lambda: check_bind(settings))
    telemetry = start_telemetry("serve", settings)
    env = dict(os.environ)  # the other server processes get this environment

    def role(stop: asyncio.Event) -> Awaitable[None]:
        return serve_role(settings, stop, telemetry, join_port=join_port, child_env=env)

    try:
        guard(lambda: run_coro(until_signalled(role)))
    finally:
        telemetry.shutdown()  # flushes the last spans (SIGTERM included)


@click.command()
@nats_option
@sink_option
@click.pass_context
def mcp(ctx: click.Context, nats_url: str | None, sink: str | None) -> None:
    """MCP server on stdin/stdout, for desktop agent clients (logs on stderr)."""
    settings = settings_with(ctx, nats_url=nats_url, sink=sink)
    from fleet.serve.mcp import serve_stdio
    from fleet.serve.service import FleetService

    telemetry = start_telemetry("mcp", settings, metrics=False)
    try:
        guard(
            lambda: run_coro(
                until_signalled(lambda stop: serve_stdio(FleetService(settings, telemetry), stop))
            )
        )
    finally:
        telemetry.shutdown()


@click.command()
@click.argument(
    "role",
    envvar="FLEET_ROLE",
    default="nats",
    type=click.Choice(["nats", "publisher", "worker", "indexer", "supervisor", "api"]),
)
@nats_option
@sink_option
@click.option("--timeout", "timeout_s", type=float, default=5.0, show_default=True)
@json_option
@click.pass_context
def check(
    ctx: click.Context,
    *,  # click passes every parameter by name
    role: str,
    nats_url: str | None,
    sink: str | None,
    timeout_s: float,
    as_json: bool,
) -> None:
    """Health of ROLE (nats, publisher, worker, indexer, supervisor, api) [env FLEET_ROLE]."""
    settings = settings_with(ctx, nats_url=nats_url, sink=sink)
    from fleet.check import check as run_check

    result = guard(
        lambda: run_coro(run_check(role, settings, timeout_s=timeout_s, environ=dict(os.environ)))
    )
    if as_json:
        click.echo(json.dumps({"role": role, "ok": result.ok, "detail": result.detail}))
    else:
        click.echo(result.line(), err=not result.ok)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
