"""`fleet crawl start|list|status|cancel`: crawl jobs on the shared NATS server."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from fleet.cli.common import (
    crawl_options,
    crawl_options_from,
    fail,
    guard,
    json_option,
    nats_option,
    run_coro,
    settings_with,
)
from fleet.settings import Settings

T = TypeVar("T")


@click.group()
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

    return guard(lambda: run_coro(go()))


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
    settings = settings_with(ctx, nats_url=nats_url)
    from fleet.crawl import start_crawl, started_view

    options = crawl_options_from(urls, **kw)
    if not urls and not (options.recrawl or options.name):
        fail("give at least one seed URL (or --recrawl ID)")
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
    settings = settings_with(ctx, nats_url=nats_url)
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
    settings = settings_with(ctx, nats_url=nats_url)
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
    settings = settings_with(ctx, nats_url=nats_url)
    from fleet.crawl import cancel_crawl, cancelled_view

    spec = _frontier_call(settings, "fleet-crawl", lambda f: cancel_crawl(f, crawl_id))
    click.echo(json.dumps(cancelled_view(spec)) if as_json else spec.id)
