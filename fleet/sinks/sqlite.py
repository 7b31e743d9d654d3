"""The SQLite FTS5 sink: stdlib sqlite3, one connection owned by one worker thread (WAL).

Backups use SQLite's online backup API (``sqlite3.Connection.backup``) on that connection: a
consistent copy while an indexer in another process keeps committing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fleet.errors import BackupInvalid, ConfigError, RestoreFailed, SinkUnavailable
from fleet.messages import Page
from fleet.sinks.base import Hit, Rejected, SinkBackup

T = TypeVar("T")


_SCHEMA_VERSION = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    rowid         INTEGER PRIMARY KEY,
    id            TEXT NOT NULL UNIQUE,
    url           TEXT NOT NULL,
    canonical_url TEXT NOT NULL DEFAULT '',
    title         TEXT NOT NULL DEFAULT '',
    description   TEXT NOT NULL DEFAULT '',
    headings      TEXT NOT NULL DEFAULT '',
    text          TEXT NOT NULL DEFAULT '',
    lang          TEXT NOT NULL DEFAULT '',
    links         TEXT NOT NULL DEFAULT '[]',
    content_hash  TEXT NOT NULL DEFAULT '',
    fetched_at    REAL NOT NULL DEFAULT 0,
    via           TEXT NOT NULL DEFAULT 'http'
);
CREATE VIRTUAL TABLE IF NOT EXISTS pages_fts USING fts5(
    title, description, headings, text,
    content='pages', content_rowid='rowid',
    tokenize='unicode61 remove_diacritics 2',
    -- Per-column but no per-position data: ~half the indexing cost of detail=full, and
    -- all fleet needs (term queries, bm25 with column weights, snippets) still works.
    detail=column
);
CREATE TRIGGER IF NOT EXISTS pages_ai AFTER INSERT ON pages BEGIN
    INSERT INTO pages_fts(rowid, title, description, headings, text)
    VALUES (new.rowid, new.title, new.description, new.headings, new.text);
END;
CREATE TRIGGER IF NOT EXISTS pages_ad AFTER DELETE ON pages BEGIN
    INSERT INTO pages_fts(pages_fts, rowid, title, description, headings, text)
    VALUES ('delete', old.rowid, old.title, old.description, old.headings, old.text);
END;
-- Re-index only when an indexed column really changed: a re-fetch of an unchanged page
-- then costs one row update, not an FTS delete + insert.
CREATE TRIGGER IF NOT EXISTS pages_au AFTER UPDATE OF title, description, headings, text ON pages
WHEN old.title IS NOT new.title OR old.description IS NOT new.description
  OR old.headings IS NOT new.headings OR old.text IS NOT new.text
BEGIN
    INSERT INTO pages_fts(pages_fts, rowid, title, description, headings, text)
    VALUES ('delete', old.rowid, old.title, old.description, old.headings, old.text);
    INSERT INTO pages_fts(rowid, title, description, headings, text)
    VALUES (new.rowid, new.title, new.description, new.headings, new.text);
END;
"""


# The newest fetch wins: a redelivered older result must not overwrite a newer one.
_UPSERT = """
INSERT INTO pages (id, url, canonical_url, title, description, headings, text, lang, links,
                   content_hash, fetched_at, via)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET
    url = excluded.url, canonical_url = excluded.canonical_url, title = excluded.title,
    description = excluded.description, headings = excluded.headings, text = excluded.text,
    lang = excluded.lang, links = excluded.links, content_hash = excluded.content_hash,
    fetched_at = excluded.fetched_at, via = excluded.via
WHERE excluded.fetched_at >= pages.fetched_at
"""


# bm25 weights follow the FTS column order: title, description, headings, text.
_SEARCH = """
SELECT p.url, p.title,
       coalesce(nullif(snippet(pages_fts, 3, '', '', '…', 30), ''), p.description)
FROM pages_fts JOIN pages AS p ON p.rowid = pages_fts.rowid
WHERE pages_fts MATCH ?
ORDER BY bm25(pages_fts, 10.0, 2.0, 5.0, 1.0)
LIMIT ?
"""


_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def fts5_query(query: str) -> str | None:
    """Turn free text into a safe FTS5 expression: every term a quoted string, ANDed.

    Quoting makes operators (AND, OR, NOT, NEAR), column filters, ``-``, ``*``, ``^`` and
    stray quotes plain text, so no user input can raise an FTS5 syntax error. Terms with no
    word character are dropped (they would be empty phrases). None means "nothing to search".
    """
    # One quoted term per word, split like the unicode61 tokenizer does: a chunk such as
    # "title:fox" quoted whole would be a multi-token phrase, which detail=column refuses.
    terms = [f'"{word}"' for word in _TOKEN.findall(query)]
    return " ".join(terms) if terms else None


BACKUP_FILE = "fleet.db"


class SqliteSink:
    """SQLite + FTS5. One connection, used only by one dedicated worker thread."""

    kind = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteSink({str(self.path)!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"{self!r} is not open")
        # Not asyncio.to_thread: sqlite3 connections belong to the thread that made them, so
        # every call goes to the same single worker thread.
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args)
        )

    async def open(self, *, readonly: bool = False) -> None:
        """Open the file in WAL mode with ``synchronous=FULL`` and create the schema if missing.

        Idempotent. ``readonly`` refuses a missing file with ``ConfigError`` (a mistyped path must
        not look like an empty index). Raises ``ConfigError`` for a file fleet cannot use (no
        FTS5, not a database, a newer schema) and ``SinkUnavailable`` when it is locked.
        """
        if self._executor is not None:
            return
        if readonly and not self.path.exists():
            # A typo in the path must not look like "no results" (or create an empty db).
            raise ConfigError(
                f"no SQLite index at {self.path}; check FLEET_SINK/--sink or run the indexer first"
            )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the directory for the SQLite sink {self.path}: {exc}; "
                "fix FLEET_SINK or the permissions"
            ) from None
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            # timeout= is sqlite3_busy_timeout: wait for a lock instead of failing at once.
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"SQLite sink {self.path} cannot use WAL journaling (got {mode!r}); "
                    "put it on a local filesystem"
                )
            # FULL: a commit survives power loss, so an ack after upsert() is safe.
            conn.execute("PRAGMA synchronous = FULL")
            # FTS5 segment merges re-read index pages: a 64 MiB cache (default 2 MiB) and
            # fewer WAL checkpoints cut indexing CPU by ~10% on 20-150 KB pages.
            conn.execute("PRAGMA cache_size = -65536")
            conn.execute("PRAGMA wal_autocheckpoint = 16384")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ConfigError(
                    f"SQLite sink {self.path} has schema version {version}, newer than this "
                    f"fleet understands ({_SCHEMA_VERSION}); upgrade fleet"
                )
            if version < _SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # also "file is not a database"
            if conn is not None:
                conn.close()
            if "fts5" in str(exc).lower():
                raise ConfigError(
                    "this Python's SQLite has no FTS5; use a Python built with FTS5 or a "
                    "Meilisearch sink (FLEET_SINK=http://host:7700)"
                ) from None
            if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                raise SinkUnavailable(f"SQLite sink {self.path} is locked: {exc}") from None
            raise ConfigError(
                f"cannot open the SQLite sink {self.path}: {exc}; check FLEET_SINK"
            ) from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._conn

    async def upsert(self, pages: Sequence[Page]) -> list[Rejected]:
        """Insert or replace ``pages`` in one transaction, durably committed before returning.

        A stored page with a newer ``fetched_at`` is kept (a late redelivery does not overwrite
        it); a document SQLite refuses is returned as ``Rejected``, the rest still committed.
        Raises ``SinkUnavailable`` when the database is locked or failing.
        """
        if not pages:
            return []
        return await self._run(self._upsert_sync, list(pages))

    def _upsert_sync(self, pages: list[Page]) -> list[Rejected]:
        conn = self._connection()
        rejected: list[Rejected] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for page in pages:
                    if not page.id:
                        rejected.append(Rejected(page.id, "empty document id"))
                        continue
                    try:
                        conn.execute(_UPSERT, _row(page))
                    except (UnicodeEncodeError, sqlite3.DataError, sqlite3.IntegrityError) as exc:
                        # Statement-level failure: SQLite keeps the rest of the transaction.
                        rejected.append(Rejected(page.id, f"sqlite refused the document: {exc}"))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None
        return rejected

    async def search(self, query: str, limit: int) -> list[Hit]:
        """Best hits first by bm25 (title counts most, then headings, description, text).

        Each snippet is up to 30 tokens of text around the match, or the description. Every word
        of ``query`` must match; a query with no words gives [].
        """
        expression = fts5_query(query)
        if expression is None or limit <= 0:
            return []
        return await self._run(self._search_sync, expression, limit)

    def _search_sync(self, expression: str, limit: int) -> list[Hit]:
        try:
            rows = self._connection().execute(_SEARCH, (expression, limit)).fetchall()
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None
        return [Hit(url=url, title=title, snippet=snippet or "") for url, title, snippet in rows]

    async def count(self) -> int:
        """Number of pages stored."""
        return await self._run(self._count_sync)

    def _count_sync(self) -> int:
        try:
            return int(self._connection().execute("SELECT count(*) FROM pages").fetchone()[0])
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None

    # -- backup and restore

    async def backup(self, directory: Path) -> SinkBackup:
        """Copy the database into ``directory/fleet.db`` with the online backup API.

        The copy is one self-contained file (rollback journal, no ``-wal``) and holds
        the database as of one moment even while an indexer commits. Raises
        ``SinkUnavailable`` when the copy fails (locked, disk full).
        """
        return await self._run(self._backup_sync, directory / BACKUP_FILE)

    def _backup_sync(self, target: Path) -> SinkBackup:
        conn = self._connection()
        try:
            dest = sqlite3.connect(target, isolation_level=None)
            try:
                # One step (pages=-1) copies every page inside one read transaction: with WAL
                # the indexer keeps committing meanwhile, and the copy is the database as of
                # that transaction. Copying in chunks would restart at every foreign commit.
                conn.backup(dest, pages=-1)
                dest.execute("PRAGMA journal_mode = DELETE")
                check = dest.execute("PRAGMA quick_check").fetchone()[0]
                details = {
                    "db_pages": int(dest.execute("PRAGMA page_count").fetchone()[0]),
                    "page_size": int(dest.execute("PRAGMA page_size").fetchone()[0]),
                    "schema_version": int(dest.execute("PRAGMA user_version").fetchone()[0]),
                }
                pages = int(dest.execute("SELECT count(*) FROM pages").fetchone()[0])
            finally:
                dest.close()
        except sqlite3.Error as exc:
            raise SinkUnavailable(f"backup of the SQLite sink {self.path} failed: {exc}") from None
        if check != "ok":
            raise SinkUnavailable(f"the backup copy of {self.path} fails SQLite's check: {check}")
        return SinkBackup(kind=self.kind, pages=pages, files=(BACKUP_FILE,), details=details)

    async def restore(self, directory: Path, backup: SinkBackup) -> int:
        """Replace the database's contents with ``directory/fleet.db``, then check it.

        Writes through this sink's connection with the backup API, so a reader or an indexer
        on the same file sees either the old or the restored database. Afterwards SQLite's
        ``integrity_check`` and FTS5's ``integrity-check`` must pass and at least
        ``backup.pages`` pages must be there (``RestoreFailed`` otherwise).
        """
        source = directory / (backup.files[0] if backup.files else BACKUP_FILE)
        return await self._run(self._restore_sync, source, backup.pages)

    def _restore_sync(self, source: Path, pages: int) -> int:
        conn = self._connection()
        try:
            # Read-only: a backup on read-only media restores too, and is never changed.
            src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                version = int(src.execute("PRAGMA user_version").fetchone()[0])
                if version != _SCHEMA_VERSION:
                    raise BackupInvalid(
                        f"the backup {source} has schema version {version}, this fleet uses "
                        f"{_SCHEMA_VERSION}; restore it with the fleet version that made it",
                        directory=str(source.parent),
                    )
                src.backup(conn, pages=-1)
            finally:
                src.close()
        except sqlite3.DatabaseError as exc:
            raise BackupInvalid(
                f"cannot restore from {source}: {exc}; check the backup directory",
                directory=str(source.parent),
            ) from None
        return self._verify_sync(pages)

    def _verify_sync(self, pages: int) -> int:
        conn = self._connection()
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise RestoreFailed(
                f"SQLite sink {self.path} fails integrity_check after the restore: "
                + "; ".join(problems[:5]),
                target=str(self.path),
            )
        try:
            # Compares the full-text index with the pages table it indexes.
            conn.execute("INSERT INTO pages_fts(pages_fts) VALUES ('integrity-check')")
        except sqlite3.DatabaseError as exc:
            raise RestoreFailed(
                f"the full-text index of {self.path} fails its check after the restore: {exc}",
                target=str(self.path),
            ) from None
        held = int(conn.execute("SELECT count(*) FROM pages").fetchone()[0])
        if held < pages:
            raise RestoreFailed(
                f"SQLite sink {self.path} holds {held} page(s) after the restore, the backup "
                f"{pages}",
                target=str(self.path),
            )
        return held

    async def close(self) -> None:
        """Close the connection and stop the sink's thread; a no-op when not open."""
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _split_sql(script: str) -> list[str]:
    """Split the schema into statements; trigger bodies contain ';', hence complete_statement."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def _row(page: Page) -> tuple[Any, ...]:
    return (
        page.id,
        page.url,
        page.canonical_url,
        page.title,
        page.description,
        "\n".join(page.headings),
        page.text,
        page.lang,
        json.dumps(page.links, ensure_ascii=False),
        page.content_hash,
        page.fetched_at,
        page.via,
    )
