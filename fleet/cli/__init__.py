"""`fleet` command line: builds Settings (env, then flags) and wires the roles together.

`main` is the click group; each command lives in the module of its group (`queue`, `data`,
`crawl`, `run`, `roles`, `supervisor`), with what they share in `common`.
"""

from __future__ import annotations

import os

import click

from fleet.cli import crawl, data, queue, roles, run, supervisor
from fleet.cli.common import fail
from fleet.settings import Settings, SettingsError
from fleet.telemetry import setup_logging


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
        fail(str(exc))
    ctx.obj = settings
    setup_logging(
        ctx.invoked_subcommand or "fleet", level=settings.log_level, fmt=settings.log_format
    )


# Listed here, not decorated with @main.command(), so no command module imports this one.
for command in (
    queue.publish,
    queue.status,
    queue.dlq,
    queue.skipped,
    data.search,
    data.backup,
    data.restore,
    crawl.crawl,
    run.run,
    roles.worker,
    roles.indexer,
    roles.serve,
    roles.mcp,
    roles.check,
    supervisor.supervisor,
):
    main.add_command(command)
