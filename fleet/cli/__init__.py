"""`fleet` command line: builds Settings (env, then flags) and wires the roles together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import click

from fleet.errors import ConfigError, FleetError
from fleet.settings import SUPERVISOR_BACKENDS, Settings, SettingsError
from fleet.telemetry import Telemetry, setup_logging, setup_telemetry, tracing_configured

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _until_signalled(role: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run a long-lived role; SIGTERM/SIGINT set its stop event (it then drains)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await role(stop)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"fleet: {message}", err=True)
    sys.exit(code)


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    base: Settings = ctx.obj
    try:
        return base.replace(**flags)
    except SettingsError as exc:
        _fail(str(exc))


def _guard(fn: Callable[[], T]) -> T:
    """Turn fleet's errors into one clear line and an exit code, never a traceback."""
    try:
        return fn()
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    except FleetError as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)


@contextlib.contextmanager
def _open_lines(file: str) -> Iterator[IO[str]]:
    if file == "-":
        yield sys.stdin
        return
    path = Path(file)
    if not path.is_file():
        _fail(f"{file}: no such file (give a file of URLs, one per line, or - for stdin)")
    with path.open(encoding="utf-8", errors="replace") as fh:
        yield fh


def _progress(file: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = None
    if file != "-":
        with Path(file).open("rb") as fh:
            total = sum(1 for _ in fh)
    return tqdm(total=total, unit="url", desc="publish", file=sys.stderr)


def _telemetry(role: str, settings: Settings, *, metrics: bool = True) -> Telemetry:
    """Traces when an OTLP endpoint is configured (OTEL_* variables, read by the OTel SDK),
    Prometheus metrics when FLEET_METRICS_PORT / --metrics-port is set."""
    try:
        return setup_telemetry(
            role,
            tracing=tracing_configured(os.environ),
            metrics_port=settings.metrics_port if metrics else 0,
        )
    except OSError as exc:
        _fail(f"cannot serve metrics on port {settings.metrics_port}: {exc}")


def _invalid_reporter(file: str) -> Callable[[int, str], None]:
    name = "<stdin>" if file == "-" else file

    def report(lineno: int, reason: str) -> None:
        click.echo(f"{name}:{lineno}: {reason}", err=True)

    return report


nats_option = click.option(
    "--nats-url",
    default=None,
    help="NATS server URL, or a cluster's servers comma-separated "
    "[env FLEET_NATS_URL; nats://127.0.0.1:4222]",
)
sink_option = click.option(
    "--sink",
    default=None,
    help="sqlite:///path/to/fleet.db or http(s)://meili:7700 [env FLEET_SINK]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
render_option = click.option(
    "--render",
    type=click.Choice(["never", "auto", "always"]),
    default=None,
    help="Render pages with Chromium: never, auto (only pages that need it) or always "
    "[env FLEET_RENDER; auto]",
)
metrics_option = click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus /metrics on this port; 0 = off [env FLEET_METRICS_PORT]",
)


def crawl_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The follow rules shared by `fleet crawl start` and `fleet run --crawl`."""
    for option in reversed(
        [
            click.option(
                "--scope",
                type=click.Choice(["host", "domain", "prefix", "any"]),
                default=None,
                help="Follow links on the seed's host, registrable domain, URL prefix "
                "(scheme, host, path up to its last /), or anywhere [prefix; a recrawl: "
                "the earlier crawl's]",
            ),
            click.option(
                "--include",
                multiple=True,
                metavar="REGEX",
                help="Follow only links matching one of these (repeatable)",
            ),
            click.option(
                "--exclude",
                multiple=True,
                metavar="REGEX",
                help="Never follow links matching one of these (repeatable)",
            ),
            click.option("--max-depth", type=int, default=None, help="Clicks from a seed [∞]"),
            click.option("--max-pages", type=int, default=None, help="Hard cap on pages queued"),
            click.option(
                "--sitemaps", is_flag=True, help="Also queue the pages of robots.txt/sitemap.xml"
            ),
            click.option("--name", default="", help="A name; starting it again is a recrawl"),
            click.option(
                "--recrawl",
                default=None,
                metavar="ID",
                help="Revisit crawl ID's pages with conditional requests",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _crawl_opts(seeds: tuple[str, ...], **kw: Any) -> Any:
    from fleet.crawl import CrawlOptions

    return CrawlOptions(
        seeds=seeds,
        scope=kw["scope"],
        include=tuple(kw["include"]),
        exclude=tuple(kw["exclude"]),
        max_depth=kw["max_depth"],
        max_pages=kw["max_pages"],
        sitemaps=kw["sitemaps"],
        name=kw["name"],
        recrawl=kw["recrawl"],
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING… [env FLEET_LOG_LEVEL]")
@click.option(
    "--log-format", default=None, type=click.Choice(["text", "json"]), help="[env FLEET_LOG_FORMAT]"
)
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """fleet: a streaming scraper fleet over NATS JetStream."""
    try:
        settings = Settings.from_env(os.environ).replace(log_level=log_level, log_format=log_format)
    except SettingsError as exc:
        _fail(str(exc))
    ctx.obj = settings
    setup_logging(
        ctx.invoked_subcommand or "fleet", level=settings.log_level, fmt=settings.log_format
    )


@main.command()
@click.argument("file")
@nats_option
@metrics_option
@json_option
@click.pass_context
def publish(
    ctx: click.Context, file: str, nats_url: str | None, metrics_port: int | None, as_json: bool
) -> None:
    """Publish URLs from FILE (one per line; - for stdin)."""
    settings = _settings(ctx, nats_url=nats_url, metrics_port=metrics_port)
    telemetry = _telemetry("publish", settings)

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
            with _open_lines(file) as fh:
                bar = _progress(file, not as_json)
                try:
                    publisher = Publisher(
                        acks,
                        settings,
                        headers_for=telemetry.publish_headers(settings.urls_subject),
                        counted=telemetry.published,
                    )
                    report = await publisher.publish_urls(
                        read_url_lines(fh),
                        on_invalid=_invalid_reporter(file),
                        progress=bar,
                        source=None if file == "-" else Path(file).name,
                    )
                finally:
                    if bar is not None:
                        bar.close()
            return report.as_dict()

    try:
        counts = _guard(lambda: _run(go()))
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


@main.command()
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
    settings = _settings(
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
    telemetry = _telemetry("worker", settings)
    environ = dict(os.environ)
    try:
        _guard(
            lambda: _run(
                _until_signalled(
                    lambda stop: worker_role.serve(settings, stop, telemetry, environ=environ)
                )
            )
        )
    finally:
        telemetry.shutdown()  # flushes the last spans (SIGTERM included)


@main.command()
@nats_option
@sink_option
@metrics_option
@click.pass_context
def indexer(
    ctx: click.Context, nats_url: str | None, sink: str | None, metrics_port: int | None
) -> None:
    """Consume results and write them to the sink until SIGTERM."""
    settings = _settings(ctx, nats_url=nats_url, sink=sink, metrics_port=metrics_port)
    from fleet import indexer as indexer_role
    from fleet.sinks import open_sink

    telemetry = _telemetry("indexer", settings)

    async def go(stop: asyncio.Event) -> int:
        store = open_sink(settings)
        try:
            return await indexer_role.serve(settings, stop, store, telemetry)
        finally:
            await store.close()

    try:
        _guard(lambda: _run(_until_signalled(go)))
    finally:
        telemetry.shutdown()  # flushes the last spans (SIGTERM included)


@main.command()
@click.argument("query")
@sink_option
@click.option("--limit", type=int, default=10, show_default=True)
@json_option
@click.pass_context
def search(ctx: click.Context, query: str, sink: str | None, limit: int, as_json: bool) -> None:
    """Search the indexed pages, best first."""
    settings = _settings(ctx, sink=sink)
    from fleet.sinks import Hit, open_sink

    async def go() -> list[Hit]:
        store = open_sink(settings)
        try:
            await store.open(readonly=True)
            return await store.search(query, limit)
        finally:
            await store.close()

    hits = _guard(lambda: _run(go()))
    if as_json:
        click.echo(
            json.dumps([{"url": h.url, "title": h.title, "snippet": h.snippet} for h in hits])
        )
        return
    if not hits:
        click.echo("no results")
    for n, hit in enumerate(hits, start=1):
        click.echo(f"{n}. {hit.title or '(untitled)'}\n   {hit.url}\n   {hit.snippet}")


@main.command()
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
    settings = _settings(ctx, sink=sink, meili_dump_dir=meili_dump_dir)
    from fleet import backup as backups
    from fleet.sinks import open_sink

    async def go() -> backups.Manifest:
        store = open_sink(settings)
        try:
            return await backups.backup(store, directory)
        finally:
            await store.close()

    manifest = _guard(lambda: _run(go()))
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


@main.command()
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@sink_option
@click.option("--force", is_flag=True, help="Replace the pages a non-empty sink holds.")
@json_option
@click.pass_context
def restore(
    ctx: click.Context, directory: Path, sink: str | None, force: bool, as_json: bool
) -> None:
    """Restore the backup in DIR into the sink (empty, unless --force), then check it."""
    settings = _settings(ctx, sink=sink)
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

    report = _guard(lambda: _run(go()))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    replaced = f", replacing {report.replaced} page(s)" if report.replaced else ""
    click.echo(
        f"restored {report.manifest.pages} page(s) from {directory} (backup of "
        f"{report.manifest.created_at}) into {target}{replaced}; checked: "
        f"{report.pages} page(s)"
    )


@main.command()
@nats_option
@json_option
@click.pass_context
def status(ctx: click.Context, nats_url: str | None, as_json: bool) -> None:
    """Streams, consumers and dead letters."""
    settings = _settings(ctx, nats_url=nats_url)

    async def go() -> dict[str, Any]:
        from fleet.admin import status as get_status
        from fleet.nats.session import nats_session

        # No topology: status shows what is there, missing streams included.
        async with nats_session(
            settings, name="fleet-status", reconnect=False, topology=False, drain=False
        ) as session:
            return await get_status(session.js, settings)

    info = _guard(lambda: _run(go()))
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


@main.group()
def dlq() -> None:
    """Dead letters: URLs or documents that will not be retried on their own."""


@dlq.command("list")
@nats_option
@click.option("--limit", type=int, default=1000, show_default=True)
@json_option
@click.pass_context
def dlq_list(ctx: click.Context, nats_url: str | None, limit: int, as_json: bool) -> None:
    """Show dead letters with their reason and attempt count."""
    settings = _settings(ctx, nats_url=nats_url)

    async def go() -> list[dict[str, Any]]:
        from fleet.admin import list_dead_letters
        from fleet.nats.session import nats_session

        async with nats_session(
            settings, name="fleet-dlq", reconnect=False, drain=False
        ) as session:
            letters = await list_dead_letters(session.js, settings, limit=limit)
            return [d.as_dict() for d in letters]

    letters = _guard(lambda: _run(go()))
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
    settings = _settings(ctx, nats_url=nats_url)

    async def go() -> int:
        from fleet.admin import replay_dead_letters
        from fleet.nats.session import nats_session

        async with nats_session(settings, name="fleet-dlq", reconnect=False) as session:
            return await replay_dead_letters(session.js, settings, reason=reason)

    count = _guard(lambda: _run(go()))
    click.echo(json.dumps({"replayed": count}) if as_json else f"replayed {count} dead letter(s)")


@main.group()
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
    settings = _settings(ctx, nats_url=nats_url)

    async def go() -> list[dict[str, Any]]:
        from fleet.admin import list_skipped
        from fleet.nats.session import connect

        nc = await connect(settings, name="fleet-skipped", reconnect=False)
        try:
            records = await list_skipped(nc.jetstream(), settings, reason=reason, limit=limit)
            return [r.as_dict() for r in records]
        finally:
            await nc.close()

    records = _guard(lambda: _run(go()))
    if as_json:
        click.echo(json.dumps(records))
        return
    for r in records:
        click.echo(f"#{r['seq']} {r['reason']} {r['url']}")
        if r["detail"]:
            click.echo(f"    {r['detail']}")
    click.echo(f"{len(records)} skipped URL(s)")


@main.group()
def crawl() -> None:
    """Crawls: follow links from seed URLs within a scope, on the shared NATS server."""


def _frontier_call(settings: Settings, name: str, call: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        from fleet.nats.frontier import Frontier
        from fleet.nats.session import nats_session

        async with nats_session(settings, name=name, reconnect=False) as session:
            frontier = Frontier(session.nc, session.js, settings)
            try:
                return await call(frontier)
            finally:
                await frontier.close()

    return _guard(lambda: _run(go()))


@crawl.command("start")
@click.argument("urls", nargs=-1)
@crawl_options
@nats_option
@json_option
@click.pass_context
def crawl_start(
    ctx: click.Context, /, urls: tuple[str, ...], nats_url: str | None, as_json: bool, **kw: Any
) -> None:
    """Start a crawl from URLS (a --recrawl or a known --name may omit them); prints its id."""
    settings = _settings(ctx, nats_url=nats_url)
    from fleet.crawl import start_crawl, started_view

    options = _crawl_opts(urls, **kw)
    if not urls and not (options.recrawl or options.name):
        _fail("give at least one seed URL (or --recrawl ID)")
    spec = _frontier_call(settings, "fleet-crawl", lambda f: start_crawl(f, options))
    if as_json:
        click.echo(json.dumps(started_view(spec)))
    else:
        click.echo(spec.id)


@crawl.command("list")
@nats_option
@json_option
@click.pass_context
def crawl_list(ctx: click.Context, nats_url: str | None, as_json: bool) -> None:
    """Every crawl with its state and counters."""
    settings = _settings(ctx, nats_url=nats_url)
    from fleet.crawl import list_crawls

    views = _frontier_call(settings, "fleet-crawl", list_crawls)
    if as_json:
        click.echo(json.dumps(views))
        return
    for v in views:
        click.echo(
            f"{v['crawl']} {v['state']:9} {v['name'] or '-'} fetched={v['fetched']} "
            f"queued={v['queued']} discovered={v['discovered']} {' '.join(v['seeds'])}"
        )
    if not views:
        click.echo("no crawls")


@crawl.command("status")
@click.argument("crawl_id")
@nats_option
@json_option
@click.pass_context
def crawl_status_cmd(
    ctx: click.Context, crawl_id: str, nats_url: str | None, as_json: bool
) -> None:
    """Counters and state of crawl CRAWL_ID (an id, or a name: its newest crawl)."""
    settings = _settings(ctx, nats_url=nats_url)
    from fleet.crawl import crawl_status

    view = _frontier_call(settings, "fleet-crawl", lambda f: crawl_status(f, crawl_id))
    if as_json:
        click.echo(json.dumps(view))
        return
    for key in ("crawl", "name", "state", "discovered", "queued", "fetched", "unchanged"):
        click.echo(f"{key:14} {view[key]}")
    for key in ("redirected", "indexed", "dead_lettered", "sitemaps_read"):
        click.echo(f"{key:14} {view[key]}")
    skipped = " ".join(f"{k}={n}" for k, n in view["skipped"].items())
    click.echo(f"{'skipped':14} {sum(view['skipped'].values())} {skipped}".rstrip())


@crawl.command("cancel")
@click.argument("crawl_id")
@nats_option
@json_option
@click.pass_context
def crawl_cancel(ctx: click.Context, crawl_id: str, nats_url: str | None, as_json: bool) -> None:
    """Stop crawl CRAWL_ID: in-flight URLs finish, queued ones are skipped (cancelled)."""
    settings = _settings(ctx, nats_url=nats_url)
    from fleet.crawl import cancel_crawl, cancelled_view

    spec = _frontier_call(settings, "fleet-crawl", lambda f: cancel_crawl(f, crawl_id))
    click.echo(json.dumps(cancelled_view(spec)) if as_json else spec.id)


@main.command()
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
        _fail("give a FILE of URLs or --crawl URL (not both)")
    settings = _settings(
        ctx, nats_url=nats_url, sink=sink, render=render, metrics_port=metrics_port
    )
    import dataclasses

    from fleet.publisher import read_url_lines
    from fleet.runner import RunSummary, run_pipeline
    from fleet.supervisor import Policy

    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers < 1:
        _fail("--workers must be at least 1")
    policy = None
    if autoscale:
        # --workers is then the ceiling; the floor and the rest come from FLEET_SUPERVISOR_*.
        most = workers if workers is not None else settings.supervisor_max
        policy = dataclasses.replace(
            Policy.from_settings(settings),
            max_replicas=most,
            min_replicas=min(settings.supervisor_min, most),
        )

    crawl_options_ = _crawl_opts(crawl_seeds, **crawl_kw) if crawl_seeds else None

    async def go() -> RunSummary:
        if crawl_options_ is not None:
            return await run_pipeline(
                settings,
                (),
                workers=n_workers,
                base_env=os.environ,
                on_invalid=_invalid_reporter("-"),
                telemetry=telemetry,
                autoscale=policy,
                crawl=crawl_options_,
            )
        assert file is not None
        with _open_lines(file) as fh:
            bar = _progress(file, not as_json)
            try:
                return await run_pipeline(
                    settings,
                    read_url_lines(fh),
                    workers=n_workers,
                    base_env=os.environ,
                    on_invalid=_invalid_reporter(file),
                    progress=bar,
                    source=None if file == "-" else Path(file).name,
                    telemetry=telemetry,
                    autoscale=policy,
                )
            finally:
                if bar is not None:
                    bar.close()

    # The children serve their own metrics; this process only traces its publishing.
    telemetry = _telemetry("run", settings, metrics=False)
    try:
        summary = _guard(lambda: _run(go()))
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


@main.command()
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
    settings = _settings(
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

    backend_impl = _guard(lambda: backend_from_settings(settings, os.environ))

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
        _guard(lambda: _run(_until_signalled(go)))
    except OSError as exc:
        _fail(f"cannot serve on port {settings.supervisor_port}: {exc}")


@main.command()
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
    settings = _settings(
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

    _guard(lambda: check_bind(settings))
    telemetry = _telemetry("serve", settings)
    env = dict(os.environ)  # the other server processes get this environment

    def role(stop: asyncio.Event) -> Awaitable[None]:
        return serve_role(settings, stop, telemetry, join_port=join_port, child_env=env)

    try:
        _guard(lambda: _run(_until_signalled(role)))
    finally:
        telemetry.shutdown()  # flushes the last spans (SIGTERM included)


@main.command()
@nats_option
@sink_option
@click.pass_context
def mcp(ctx: click.Context, nats_url: str | None, sink: str | None) -> None:
    """MCP server on stdin/stdout, for desktop agent clients (logs on stderr)."""
    settings = _settings(ctx, nats_url=nats_url, sink=sink)
    from fleet.serve.mcp import serve_stdio
    from fleet.serve.service import FleetService

    telemetry = _telemetry("mcp", settings, metrics=False)
    try:
        _guard(
            lambda: _run(
                _until_signalled(lambda stop: serve_stdio(FleetService(settings, telemetry), stop))
            )
        )
    finally:
        telemetry.shutdown()


@main.command()
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
    settings = _settings(ctx, nats_url=nats_url, sink=sink)
    from fleet.check import check as run_check

    result = _guard(
        lambda: _run(run_check(role, settings, timeout_s=timeout_s, environ=dict(os.environ)))
    )
    if as_json:
        click.echo(json.dumps({"role": role, "ok": result.ok, "detail": result.detail}))
    else:
        click.echo(result.line(), err=not result.ok)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)
