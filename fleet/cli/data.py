"""The indexed pages: `fleet search`, `fleet backup` and `fleet restore`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleet.cli.common import guard, json_option, run_coro, settings_with, sink_option


@click.command()
@click.argument("query")
@sink_option
@click.option("--limit", type=int, default=10, show_default=True)
@json_option
@click.pass_context
def search(ctx: click.Context, query: str, sink: str | None, limit: int, as_json: bool) -> None:
    """Search the indexed pages, best first."""
    settings = settings_with(ctx, sink=sink)
    from fleet.sinks import Hit, open_sink

    async def go() -> list[Hit]:
        store = open_sink(settings)
        try:
            await store.open(readonly=True)
            return await store.search(query, limit)
        finally:
            await store.close()

    hits = guard(lambda: run_coro(go()))
    if as_json:
        click.echo(
            json.dumps([{"url": h.url, "title": h.title, "snippet": h.snippet} for h in hits])
        )
        return
    if not hits:
        click.echo("no results")
    for n, hit in enumerate(hits, start=1):
        click.echo(f"{n}. {hit.title or '(untitled)'}\n   {hit.url}\n   {hit.snippet}")


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@sink_option
@click.option(
    "--meili-dump-dir",
    default=None,
    help="Meilisearch: its --dump-dir as seen from here; the dump is then copied into DIR "
    "[env FLEET_MEILI_DUMP_DIR]",
)
@json_option
@click.pass_context
def backup(
    ctx: click.Context,
    directory: Path,
    sink: str | None,
    meili_dump_dir: str | None,
    as_json: bool,
) -> None:
    """Back the sink up into DIR (new or empty), with a manifest; safe while indexers write."""
    settings = settings_with(ctx, sink=sink, meili_dump_dir=meili_dump_dir)
    from fleet import backup as backups
    from fleet.sinks import open_sink

    async def go() -> backups.Manifest:
        store = open_sink(settings)
        try:
            return await backups.backup(store, directory)
        finally:
            await store.close()

    manifest = guard(lambda: run_coro(go()))
    if as_json:
        click.echo(json.dumps(manifest.as_dict()))
        return
    size = sum(f.bytes for f in manifest.files)
    click.echo(
        f"backed up {manifest.pages} page(s) of the {manifest.sink_kind} sink into {directory} "
        f"({len(manifest.files)} file(s), {size} bytes)"
    )
    dump = manifest.details.get("dump_file")
    if dump:
        where = (
            "copied into the backup"
            if dump in {f.name for f in manifest.files}
            else ("in Meilisearch's dump directory only (set --meili-dump-dir to copy it)")
        )
        click.echo(f"Meilisearch dump {dump}: {where}")


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@sink_option
@click.option("--force", is_flag=True, help="Replace the pages a non-empty sink holds.")
@json_option
@click.pass_context
def restore(
    ctx: click.Context, directory: Path, sink: str | None, force: bool, as_json: bool
) -> None:
    """Restore the backup in DIR into the sink (empty, unless --force), then check it."""
    settings = settings_with(ctx, sink=sink)
    from fleet import backup as backups
    from fleet.sinks import open_sink
    from fleet.urls import redact_url

    target = redact_url(settings.sink)

    async def go() -> backups.RestoreReport:
        store = open_sink(settings)
        try:
            return await backups.restore(store, directory, target=target, force=force)
        finally:
            await store.close()

    report = guard(lambda: run_coro(go()))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    replaced = f", replacing {report.replaced} page(s)" if report.replaced else ""
    click.echo(
        f"restored {report.manifest.pages} page(s) from {directory} (backup of "
        f"{report.manifest.created_at}) into {target}{replaced}; checked: "
        f"{report.pages} page(s)"
    )
