"""The URL queue: `fleet publish`, `fleet status`, `fleet dlq` (dead letters) and
`fleet skipped` (URLs not fetched on purpose)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from fleet.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    guard,
    invalid_reporter,
    json_option,
    metrics_option,
    nats_option,
    open_lines,
    progress_bar,
    run_coro,
    settings_with,
    start_telemetry,
)


@click.command()
@click.argument("file")
@nats_option
@metrics_option
@json_option
@click.pass_context
def publish(
    ctx: click.Context, file: str, nats_url: str | None, metrics_port: int | None, as_json: bool
) -> None:
    """Publish URLs from FILE (one per line; - for stdin)."""
    settings = settings_with(ctx, nats_url=nats_url, metrics_port=metrics_port)
    telemetry = start_telemetry("publish", settings)

    async def go() -> dict[str, int]:
        from fleet.nats.acks import FastAcks
        from fleet.nats.session import nats_session
        from fleet.publisher import Publisher, read_url_lines

        async with (
            nats_session(
                settings, name="fleet-publish", reconnect=False, publish_async_max_pending=2048
            ) as session,
            FastAcks(session.nc, session.js) as acks,
        ):
            with open_lines(file) as fh:
                bar = progress_bar(file, not as_json)
                try:
                    publisher = Publisher(
                        acks,
                        settings,
                        headers_for=telemetry.publish_headers(settings.urls_subject),
                        counted=telemetry.published,
                    )
                    report = await publisher.publish_urls(
                        read_url_lines(fh),
                        on_invalid=invalid_reporter(file),
                        progress=bar,
                        source=None if file == "-" else Path(file).name,
                    )
                finally:
                    if bar is not None:
                        bar.close()
            return report.as_dict()

    try:
        counts = guard(lambda: run_coro(go()))
    finally:
        telemetry.shutdown()
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(
            f"published {counts['published']}, duplicates {counts['duplicates']}, "
            f"invalid {counts['invalid']}"
        )
    sys.exit(EXIT_USAGE if counts["invalid"] else EXIT_OK)


@click.command()
@nats_option
@json_option
@click.pass_context
def status(ctx: click.Context, nats_url: str | None, as_json: bool) -> None:
    """Streams, consumers and dead letters."""
    settings = settings_with(ctx, nats_url=nats_url)

    async def go() -> dict[str, Any]:
        from fleet.admin import status as get_status
        from fleet.nats.session import nats_session

        # No topology: status shows what is there, missing streams included.
        async with nats_session(
            settings, name="fleet-status", reconnect=False, topology=False, drain=False
        ) as session:
            return await get_status(session.js, settings)

    info = guard(lambda: run_coro(go()))
    if as_json:
        click.echo(json.dumps(info))
        return
    for name, view in info["streams"].items():
        shown = " ".join(f"{k}={v}" for k, v in view.items()) or "(missing)"
        click.echo(f"stream {name:8} {shown}")
    for name, view in info["consumers"].items():
        shown = " ".join(f"{k}={v}" for k, v in view.items()) or "(missing)"
        click.echo(f"consumer {name:7} {shown}")
    click.echo(f"dead letters {info['dead_letters']}")
    skipped = " ".join(f"{k}={v}" for k, v in sorted(info["skipped"].items()))
    click.echo(f"skipped {sum(info['skipped'].values())}" + (f" ({skipped})" if skipped else ""))
    click.echo(f"deferred {info['deferred']} (URLs due back later, for politeness)")
    for d in info["render_domains"]:
        path = "browser" if d["needs_render"] else "http"
        click.echo(
            f"render domain {d['domain']} {path} samples={d['samples']} "
            f"http_chars={d['http_chars']} rendered_chars={d['rendered_chars']}"
        )


@click.group()
def dlq() -> None:
    """Dead letters: URLs or documents that will not be retried on their own."""


@dlq.command("list")
@nats_option
@click.option("--limit", type=int, default=1000, show_default=True)
@json_option
@click.pass_context
def dlq_list(ctx: click.Context, nats_url: str | None, limit: int, as_json: bool) -> None:
    """Show dead letters with their reason and attempt count."""
    settings = settings_with(ctx, nats_url=nats_url)

    async def go() -> list[dict[str, Any]]:
        from fleet.admin import list_dead_letters
        from fleet.nats.session import nats_session

        async with nats_session(
            settings, name="fleet-dlq", reconnect=False, drain=False
        ) as session:
            letters = await list_dead_letters(session.js, settings, limit=limit)
            return [d.as_dict() for d in letters]

    letters = guard(lambda: run_coro(go()))
    if as_json:
        click.echo(json.dumps(letters))
        return
    for d in letters:
        click.echo(f"#{d['seq']} {d['stage']} {d['reason']} attempts={d['attempts']} {d['url']}")
        click.echo(f"    {d['error']}")
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("replay")
@nats_option
@click.option("--reason", default=None, help="Only dead letters with this reason (e.g. http_503).")
@json_option
@click.pass_context
def dlq_replay(ctx: click.Context, nats_url: str | None, reason: str | None, as_json: bool) -> None:
    """Re-publish dead letters to the stage they failed in, and remove them from the DLQ."""
    settings = settings_with(ctx, nats_url=nats_url)

    async def go() -> int:
        from fleet.admin import replay_dead_letters
        from fleet.nats.session import nats_session

        async with nats_session(settings, name="fleet-dlq", reconnect=False) as session:
            return await replay_dead_letters(session.js, settings, reason=reason)

    count = guard(lambda: run_coro(go()))
    click.echo(json.dumps({"replayed": count}) if as_json else f"replayed {count} dead letter(s)")


@click.group()
def skipped() -> None:
    """URLs not fetched on purpose (robots.txt, crawl scope, cancelled...), with their reason."""


@skipped.command("list")
@nats_option
@click.option("--reason", default=None, help="Only this reason (e.g. robots).")
@click.option("--limit", type=int, default=1000, show_default=True)
@json_option
@click.pass_context
def skipped_list(
    ctx: click.Context, nats_url: str | None, reason: str | None, limit: int, as_json: bool
) -> None:
    """Show skipped URLs with their reason (kept FLEET_RESULTS_MAX_AGE_S)."""
    settings = settings_with(ctx, nats_url=nats_url)

    async def go() -> list[dict[str, Any]]:
        from fleet.admin import list_skipped
        from fleet.nats.session import connect

        nc = await connect(settings, name="fleet-skipped", reconnect=False)
        try:
            records = await list_skipped(nc.jetstream(), settings, reason=reason, limit=limit)
            return [r.as_dict() for r in records]
        finally:
            await nc.close()

    records = guard(lambda: run_coro(go()))
    if as_json:
        click.echo(json.dumps(records))
        return
    for r in records:
        click.echo(f"#{r['seq']} {r['reason']} {r['url']}")
        if r["detail"]:
            click.echo(f"    {r['detail']}")
    click.echo(f"{len(records)} skipped URL(s)")
