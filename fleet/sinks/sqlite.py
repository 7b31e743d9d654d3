"""The SQLite FTS5 sink: stdlib sqlite3, one connection owned by one worker thread (WAL).

Backups use SQLite's online backup API (``sqlite3.Connection.backup``) on that connection: a
consistent copy while an indexer in another process keeps committing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from fleet.errors import BackupInvalid, ConfigError, RestoreFailed, SinkUnavailable
from fleet.messages import Page
from fleet.sinks.base import (
    NO_FILTERS,
    Hit,
    Rejected,
    SearchFilters,
    SearchPage,
    SinkBackup,
    StoredPage,
    url_host,
)

T = TypeVar("T")

log = logging.getLogger(__name__)


_SCHEMA_VERSION = 1


# FTS5 `detail` of a new index (an existing index keeps the one it was created with).
FTS_DETAILS = ("column", "full")


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
    -- full (default) keeps token positions. column (FLEET_SQLITE_FTS_DETAIL=column) keeps
    -- only which column has a term: ~10% less indexing CPU, but bm25 then re-tokenizes
    -- every matching page, ~25x slower searches on 37 KB pages (docs/benchmarks.md).
    detail={detail}
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
_RANK = "bm25(pages_fts, 10.0, 2.0, 5.0, 1.0)"


# A snippet: at most 30 words, the match about a third of the way in; the window is wide
# enough for 30 words of ordinary text. Only the first _SNIPPET_SCAN_CHARS of a page are
# searched for the match in Python (bounded work per hit).
_SNIPPET_WORDS = 30
_SNIPPET_BEFORE = 90
_SNIPPET_CHARS = 320
_SNIPPET_SCAN_CHARS = 200_000


_FROM = "FROM pages_fts JOIN pages AS p ON p.rowid = pages_fts.rowid WHERE pages_fts MATCH ?"


# Rank first, then read the page of hits only: with ORDER BY ... LIMIT in one query SQLite
# computes every result column for every match before sorting, which costs seconds for a
# common word in a large index.
# Built from constants only; every value is a bound parameter.
_SEARCH = f"""
WITH top AS (
    SELECT pages_fts.rowid AS rid, {_RANK} AS relevance
    {_FROM} {{filters}}
    ORDER BY relevance
    LIMIT ? OFFSET ?
)
SELECT top.rid, p.id, p.url, p.title, p.description, CAST(p.text AS BLOB), top.relevance
FROM top JOIN pages AS p ON p.rowid = top.rid
ORDER BY top.relevance
"""  # noqa: S608


# Snippets: FTS5's snippet() tokenizes the whole text of each hit (~0.9 ms per 37 KB page,
# most of a search's cost), so the snippet is cut in Python around the first occurrence of
# the query's longest word, and snippet() runs only for hits where that word is not found
# as such (diacritics the index folds, or beyond the first _SNIPPET_SCAN_CHARS).
_FTS_SNIPPETS = """
SELECT rowid, snippet(pages_fts, 3, '', '', '…', 30) FROM pages_fts
WHERE pages_fts MATCH ? AND rowid IN ({rowids})
"""


def _find_word(text: str, word: str) -> int:
    """Index of the first occurrence of ``word`` (lowercase) in ``text``, or -1.

    As written or capitalised first (two plain finds); lowering a whole page costs ~0.3 ms,
    so it is only the last resort, on the first _SNIPPET_SCAN_CHARS characters. (substr()
    in SQL would walk the UTF-8 text to count characters: slower still.)"""
    found = [i for i in (text.find(word), text.find(word.capitalize())) if i >= 0]
    if found:
        return min(found)
    return text[:_SNIPPET_SCAN_CHARS].lower().find(word)


def _snippet_of(body: bytes, word: str) -> str | None:
    """The snippet around ``word`` in a page's text as stored (UTF-8 bytes), or None.

    The text is read as bytes and only the window around the match is decoded: decoding
    each hit's whole text (37 KB on average) and searching it as ``str`` was most of the
    Python time of a search. The window has room for _SNIPPET_BEFORE / _SNIPPET_CHARS
    characters even if each takes 4 bytes, so the cut is the one of the decoded text."""
    at = body.find(word.encode())
    # The capitalised word counts only before the first lowercase one: no second full scan.
    capital = body.find(word.capitalize().encode(), 0, at if at >= 0 else len(body))
    if capital >= 0:
        at = capital
    if at < 0:
        # Rare: another case or form (str.lower folds more than ASCII): the old way.
        text = body.decode("utf-8", "replace")
        at = _find_word(text, word)
        return _cut_window(text, at) if at >= 0 else None
    start = max(0, at - 4 * (_SNIPPET_BEFORE + 2))
    end = at + 4 * _SNIPPET_CHARS
    window = body[start:end].decode("utf-8", "ignore")
    return _cut_window(window, len(body[start:at].decode("utf-8", "ignore")))


def _cut_window(text: str, at: int) -> str:
    """At most _SNIPPET_WORDS whole words of ``text`` around index ``at``, the match near
    the start, '…' where the text was cut (like FTS5's snippet())."""
    start = max(0, at - _SNIPPET_BEFORE)
    end = min(len(text), at + _SNIPPET_CHARS - _SNIPPET_BEFORE)
    before = text[start:at].split()
    after = text[at:end].split()
    if start > 0 and before and not text[start].isspace() and not text[start - 1].isspace():
        before = before[1:]  # a word cut by the window's left edge
    if end < len(text) and after and not text[end].isspace() and not text[end - 1].isspace():
        after = after[:-1]  # and by its right edge
    kept = before[-(_SNIPPET_WORDS // 3) :]
    words = kept + after[: _SNIPPET_WORDS - len(kept)]
    cut_left = start > 0 or len(kept) < len(before)
    cut_right = end < len(text) or len(words) < len(kept) + len(after)
    return ("…" if cut_left else "") + " ".join(words) + ("…" if cut_right else "")


class _SearchRequest(NamedTuple):
    expression: str  # the FTS5 query
    anchor: str  # the word snippets are cut around
    limit: int
    offset: int
    filters: SearchFilters
    total: bool


def _anchor(query: str) -> str:
    """The query word a snippet is cut around: the longest (the most telling), lowercased."""
    return max(_TOKEN.findall(query), key=len, default="").lower()


_COUNT = f"SELECT count(*) {_FROM} {{filters}}"


_GET = """
SELECT id, url, canonical_url, title, description, headings, text, lang, links, via,
       fetched_at, content_hash
FROM pages WHERE id = ?
"""


def _filter_sql(filters: SearchFilters) -> tuple[str, tuple[str, ...]]:
    clauses: list[str] = []
    args: list[str] = []
    if filters.host is not None:
        clauses.append("AND fleet_host(p.url) = ?")
        args.append(filters.host)
    if filters.lang is not None:
        clauses.append("AND lower(p.lang) = ?")
        args.append(filters.lang)
    return " ".join(clauses), tuple(args)


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
    """SQLite + FTS5. One connection, used only by one dedicated worker thread.

    Opened ``readonly`` with ``readers`` > 1 (`fleet serve`), searches and page reads run on
    a pool of that many threads, each with its own read-only connection: SQLite releases
    the GIL while it ranks, and WAL lets readers run beside the indexer's writes.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 10_000,
        readers: int = 1,
        fts_detail: str = "full",
    ) -> None:
        if fts_detail not in FTS_DETAILS:
            raise ConfigError(f"FTS5 detail must be one of {', '.join(FTS_DETAILS)}")
        self.path = Path(path)
        self._fts_detail = fts_detail
        self._busy_timeout_ms = busy_timeout_ms
        self._readers = max(1, readers)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()

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

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on the reader pool if there is one, else on the connection's thread."""
        if self._read_pool is None:
            return await self._run(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(
            self._read_pool, functools.partial(fn, *args)
        )

    def _reader(self) -> sqlite3.Connection:
        """This thread's connection: its own read-only one in the pool, else the main one."""
        if self._read_pool is None:
            return self._connection()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() can close it after the pool stopped;
            # it is used by this thread alone.
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self._busy_timeout_ms / 1000,
                check_same_thread=False,
            )
            conn.execute("PRAGMA cache_size = -16384")
            conn.create_function("fleet_host", 1, url_host, deterministic=True)
            self._local.conn = conn
            with self._read_conns_lock:
                self._read_conns.append(conn)
        return conn

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
        if readonly:
            detail = await self._run(self._fts_detail_of_index)
            if detail == "column":
                log.info(
                    "SQLite index %s has FTS5 detail=column: ranking re-tokenizes every "
                    "matching page, slow on long pages; an index created with "
                    "FLEET_SQLITE_FTS_DETAIL=full (the default) searches several times faster",
                    self.path,
                )
        if readonly and self._readers > 1:
            self._read_pool = ThreadPoolExecutor(
                max_workers=self._readers, thread_name_prefix="fleet-sqlite-read"
            )

    def _fts_detail_of_index(self) -> str:
        row = (
            self._connection()
            .execute("SELECT sql FROM sqlite_master WHERE name = 'pages_fts'")
            .fetchone()
        )
        match = re.search(r"detail\s*=\s*(\w+)", str(row[0]) if row else "")
        return match.group(1).lower() if match else "full"

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
            # The search `host` filter: the same definition as the Meilisearch documents'.
            conn.create_function("fleet_host", 1, url_host, deterministic=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ConfigError(
                    f"SQLite sink {self.path} has schema version {version}, newer than this "
                    f"fleet understands ({_SCHEMA_VERSION}); upgrade fleet"
                )
            if version < _SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _split_sql(_SCHEMA.format(detail=self._fts_detail)):
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

    async def search(
        self, query: str, limit: int, *, offset: int = 0, filters: SearchFilters = NO_FILTERS
    ) -> list[Hit]:
        """Best hits first (bm25); skips the count query ``search_page`` may need."""
        return (await self._search(query, limit, offset, filters, total=False)).hits

    async def search_page(
        self, query: str, limit: int, *, offset: int = 0, filters: SearchFilters = NO_FILTERS
    ) -> SearchPage:
        """Best hits first, with the exact number of matching pages."""
        return await self._search(query, limit, offset, filters, total=True)

    async def _search(
        self, query: str, limit: int, offset: int, filters: SearchFilters, *, total: bool
    ) -> SearchPage:
        expression = fts5_query(query)
        if expression is None or limit <= 0:
            return SearchPage([], 0 if total else None)
        request = _SearchRequest(expression, _anchor(query), limit, max(0, offset), filters, total)
        return await self._read(self._search_sync, request)

    def _search_sync(self, request: _SearchRequest) -> SearchPage:
        expression, anchor, limit, offset, filters, total = request
        where, args = _filter_sql(filters)
        conn = self._reader()
        try:
            rows = conn.execute(
                _SEARCH.format(filters=where), (expression, *args, limit, offset)
            ).fetchall()
            snippets: dict[int, str] = {}
            for rid, _, _, _, _, body, _ in rows:
                snippet = _snippet_of(body, anchor) if anchor and body else None
                if snippet is not None:
                    snippets[rid] = snippet
            missing = [row[0] for row in rows if row[0] not in snippets]
            if missing:
                marks = ",".join("?" * len(missing))
                snippets.update(
                    conn.execute(_FTS_SNIPPETS.format(rowids=marks), (expression, *missing))
                )
            count: int | None = None
            if total:
                # A full first page needs no second query: its length is the total.
                if offset == 0 and len(rows) < limit:
                    count = len(rows)
                else:
                    count = int(
                        conn.execute(_COUNT.format(filters=where), (expression, *args)).fetchone()[
                            0
                        ]
                    )
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None
        hits = [
            Hit(
                url=url,
                title=title,
                snippet=snippets.get(rid) or description,
                id=pid,
                # bm25 is lower-is-better; the score is higher-is-better like Meilisearch's.
                score=round(-rank, 6),
            )
            for rid, pid, url, title, description, _, rank in rows
        ]
        return SearchPage(hits, count)

    async def get(self, page_id: str) -> StoredPage | None:
        """The stored page with this id, or None."""
        return await self._read(self._get_sync, page_id)

    def _get_sync(self, page_id: str) -> StoredPage | None:
        try:
            row = self._reader().execute(_GET, (page_id,)).fetchone()
        except sqlite3.OperationalError as exc:
            raise SinkUnavailable(f"SQLite sink {self.path}: {exc}") from None
        if row is None:
            return None
        (pid, url, canonical, title, description, headings, text, lang, links, via) = row[:10]
        fetched_at, content_hash = row[10:]
        try:
            link_list = [str(link) for link in json.loads(links or "[]")]
        except ValueError:
            link_list = []
        return StoredPage(
            id=pid,
            url=url,
            canonical_url=canonical or url,
            host=url_host(url),
            title=title,
            description=description,
            headings=[h for h in (headings or "").split("\n") if h],
            text=text,
            lang=lang,
            links=link_list,
            via=via,
            fetched_at=float(fetched_at or 0.0),
            content_hash=content_hash,
        )

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
        if self._read_pool is not None:
            self._read_pool.shutdown(wait=True)
            self._read_pool = None
            with self._read_conns_lock:
                for conn in self._read_conns:
                    conn.close()
                self._read_conns.clear()
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
