"""What every `fleet` command shares: exit codes, the event loop, one-line failures, the
Settings a command's flags give, telemetry, URL files, and the common options."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import click

from fleet.errors import ConfigError, FleetError
from fleet.settings import Settings, SettingsError
from fleet.telemetry import Telemetry, setup_telemetry, tracing_configured

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on uvloop (asyncio's own loop without it)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


async def until_signalled(role: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run a long-lived role; SIGTERM/SIGINT set its stop event (it then drains)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await role(stop)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``fleet: message`` on stderr and exit with ``code``."""
    click.echo(f"fleet: {message}", err=True)
    sys.exit(code)


def settings_with(ctx: click.Context, **flags: Any) -> Settings:
    """The environment's Settings (built by `main`) with a command's flags on top."""
    base: Settings = ctx.obj
    try:
        return base.replace(**flags)
    except SettingsError as exc:
        fail(str(exc))


def guard(fn: Callable[[], T]) -> T:
    """Turn fleet's errors into one clear line and an exit code, never a traceback."""
    try:
        return fn()
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except FleetError as exc:
        fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)


@contextlib.contextmanager
def open_lines(file: str) -> Iterator[IO[str]]:
    """The lines of a file of URLs, or of stdin for ``-``; a missing file fails."""
    if file == "-":
        yield sys.stdin
        return
    path = Path(file)
    if not path.is_file():
        fail(f"{file}: no such file (give a file of URLs, one per line, or - for stdin)")
    with path.open(encoding="utf-8", errors="replace") as fh:
        yield fh


def progress_bar(file: str, enabled: bool) -> Any:
    """A tqdm bar on stderr for publishing ``file``, or None when off or not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = None
    if file != "-":
        with Path(file).open("rb") as fh:
            total = sum(1 for _ in fh)
    return tqdm(total=total, unit="url", desc="publish", file=sys.stderr)


def start_telemetry(role: str, settings: Settings, *, metrics: bool = True) -> Telemetry:
    """Traces when an OTLP endpoint is configured (OTEL_* variables, read by the OTel SDK),
    Prometheus metrics when FLEET_METRICS_PORT / --metrics-port is set."""
    try:
        return setup_telemetry(
            role,
            tracing=tracing_configured(os.environ),
            metrics_port=settings.metrics_port if metrics else 0,
        )
    except OSError as exc:
        fail(f"cannot serve metrics on port {settings.metrics_port}: {exc}")


def invalid_reporter(file: str) -> Callable[[int, str], None]:
    """Report an invalid line as ``file:lineno: reason`` on stderr."""
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


def crawl_options_from(seeds: tuple[str, ...], **kw: Any) -> Any:
    """The CrawlOptions of ``seeds`` and the flags `crawl_options` adds."""
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
