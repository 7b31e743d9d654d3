"""Search sinks: where the indexer writes pages and where `fleet search` reads them.

* ``fleet.sinks.sqlite.SqliteSink``: stdlib sqlite3 + FTS5, the embedded default.
* ``fleet.sinks.meili.MeiliSink``: the official ``meilisearch`` client (imported only when
  a Meilisearch sink is opened).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fleet.errors import ConfigError
from fleet.settings import Settings
from fleet.sinks.base import SINK_FORMS, Backupable, Hit, Rejected, Sink, SinkBackup

__all__ = ["Backupable", "Hit", "Rejected", "Sink", "SinkBackup", "open_sink"]


def open_sink(settings: Settings) -> Sink:
    """Build (not open) the sink named by ``settings.sink``."""
    spec = settings.sink.strip()
    if spec.startswith("sqlite:///"):
        raw = spec[len("sqlite:///") :]
        if not raw or raw.endswith("/") or raw == ":memory:":
            raise ConfigError(f"FLEET_SINK={spec!r} has no database file; use one of: {SINK_FORMS}")
        from fleet.sinks.sqlite import SqliteSink  # noqa: PLC0415 - each backend on demand

        return SqliteSink(
            Path(raw).expanduser(),
            readers=settings.sqlite_readers,
            fts_detail=settings.sqlite_fts_detail,
        )
    if spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)
        if not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(f"FLEET_SINK={spec!r} is not a usable URL; use one of: {SINK_FORMS}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError(f"FLEET_SINK={spec!r} has an invalid port") from None
        from fleet.sinks.meili import MeiliSink  # noqa: PLC0415 - meilisearch only when used

        return MeiliSink(
            spec.rstrip("/"),
            api_key=settings.meili_api_key,
            index=settings.meili_index,
            task_timeout_s=settings.meili_task_timeout_s,
            dump_dir=Path(settings.meili_dump_dir).expanduser()
            if settings.meili_dump_dir
            else None,
            dump_timeout_s=settings.meili_dump_timeout_s,
        )
    raise ConfigError(f"FLEET_SINK={spec!r} is not supported; use one of: {SINK_FORMS}")
