"""`fleet run`: publish a file of URLs (or crawl), run workers and the indexer until done."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from fleet.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    crawl_options,
    crawl_options_from,
    fail,
    guard,
    invalid_reporter,
    json_option,
    nats_option,
    open_lines,
    progress_bar,
    render_option,
    run_coro,
    settings_with,
    sink_option,
    start_telemetry,
)


@click.command()
@click.argument("file", required=False)
@click.option(
    "--crawl",
    "crawl_seeds",
    multiple=True,
    metavar="URL",
    help="Crawl from URL (repeatable) instead of a file of URLs; until the crawl is done",
)
@crawl_options
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Worker processes [default: CPU count]; with --autoscale the most workers "
    "[default: FLEET_SUPERVISOR_MAX]",
)
@click.option(
    "--autoscale",
    is_flag=True,
    help="Start and stop workers on the queue's lag (FLEET_SUPERVISOR_* policy)",
)
@nats_option
@sink_option
@render_option
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Indexer's /metrics on this port, worker i's on port+1+i; 0 = off "
    "[env FLEET_METRICS_PORT]",
)
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    /,
    *,  # click passes every parameter by name
    file: str | None,
    crawl_seeds: tuple[str, ...],
    workers: int | None,
    autoscale: bool,
    nats_url: str | None,
    sink: str | None,
    render: str | None,
    metrics_port: int | None,
    as_json: bool,
    **crawl_kw: Any,
) -> None:
    """All in one: publish FILE (or crawl from --crawl URL), run workers and the indexer
    until every URL is done."""
    if bool(file) == bool(crawl_seeds):
        fail("give a FILE of URLs or --crawl URL (not both)")
    settings = settings_with(
        ctx, nats_url=nats_url, sink=sink, render=render, metrics_port=metrics_port
    )
    import dataclasses

    from fleet.publisher import read_url_lines
    from fleet.runner import RunSummary, run_pipeline
    from fleet.supervisor import Policy

    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers < 1:
        fail("--workers must be at least 1")
    policy = None
    if autoscale:
        # --workers is then the ceiling; the floor and the rest come from FLEET_SUPERVISOR_*.
        most = workers if workers is not None else settings.supervisor_max
        policy = dataclasses.replace(
            Policy.from_settings(settings),
            max_replicas=most,
            min_replicas=min(settings.supervisor_min, most),
        )

    crawl_options_ = crawl_options_from(crawl_seeds, **crawl_kw) if crawl_seeds else None

    async def go() -> RunSummary:
        if crawl_options_ is not None:
            return await run_pipeline(
                settings,
                (),
                workers=n_workers,
                base_env=os.environ,
                on_invalid=invalid_reporter("-"),
                telemetry=telemetry,
                autoscale=policy,
                crawl=crawl_options_,
            )
        assert file is not None
        with open_lines(file) as fh:
            bar = progress_bar(file, not as_json)
            try:
                return await run_pipeline(
                    settings,
                    read_url_lines(fh),
                    workers=n_workers,
                    base_env=os.environ,
                    on_invalid=invalid_reporter(file),
                    progress=bar,
                    source=None if file == "-" else Path(file).name,
                    telemetry=telemetry,
                    autoscale=policy,
                )
            finally:
                if bar is not None:
                    bar.close()

    # The children serve their own metrics; this process only traces its publishing.
    telemetry = start_telemetry("run", settings, metrics=False)
    try:
        summary = guard(lambda: run_coro(go()))
    finally:
        telemetry.shutdown()
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        d = summary.as_dict()
        found = f"crawl {d['crawl']}: discovered {d['discovered']}, " if "crawl" in d else ""
        click.echo(
            f"{found}published {d['published']}, indexed {d['indexed']}, dead-lettered "
            f"{d['dead_lettered']}, skipped {sum(d['skipped'].values())}, invalid "
            f"{d['invalid']} in {d['seconds']}s ({d['pages_per_s']} pages/s)"
        )
    sys.exit(EXIT_OK if summary.completed else EXIT_FAILED)
