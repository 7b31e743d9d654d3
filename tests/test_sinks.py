"""Search sinks: SQLite (real) and Meilisearch (real client against the fake server)."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import meilisearch
import pytest
from meilisearch.errors import MeilisearchApiError

from fleet.errors import ConfigError, SinkUnavailable
from fleet.messages import Page
from fleet.settings import Settings
from fleet.sinks import Hit, Rejected, Sink, open_sink
from fleet.sinks.meili import (
    DISPLAYED_ATTRIBUTES,
    FILTERABLE_ATTRIBUTES,
    SEARCHABLE_ATTRIBUTES,
    MeiliSink,
)
from fleet.sinks.sqlite import SqliteSink, fts5_query
from fleet.urls import normalize_url, url_id
from tests.fakes.meili import FakeMeili

KEY = "fake-master-key-for-tests"

LOREM = (
    "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation "
)


def make_page(
    path: str,
    *,
    title: str = "",
    text: str = "",
    description: str = "",
    headings: list[str] | None = None,
    fetched_at: float = 1_700_000_000.0,
    page_id: str | None = None,
) -> Page:
    url = normalize_url(f"https://example.com/{path}")
    return Page(
        id=page_id if page_id is not None else url_id(url),
        url=url,
        final_url=url,
        canonical_url=url,
        status=200,
        content_type="text/html",
        title=title,
        description=description,
        headings=headings or [],
        text=text,
        lang="en",
        links=[f"https://example.com/{path}/next"],
        content_hash=f"hash-{path}-{title}-{len(text)}",
        fetched_at=fetched_at,
    )


# --------------------------------------------------------------------------------------
# open_sink


def test_open_sink_parses_sqlite_relative_and_absolute() -> None:
    relative = open_sink(Settings(sink="sqlite:///data/fleet.db"))
    assert isinstance(relative, SqliteSink)
    assert relative.path == Path("data/fleet.db")
    absolute = open_sink(Settings(sink="sqlite:////var/lib/fleet/fleet.db"))
    assert isinstance(absolute, SqliteSink)
    assert absolute.path == Path("/var/lib/fleet/fleet.db")


def test_open_sink_parses_meilisearch_url() -> None:
    sink = open_sink(
        Settings(sink="http://meili:7700/", meili_api_key="secret", meili_index="docs")
    )
    assert isinstance(sink, MeiliSink)
    assert sink.url == "http://meili:7700"
    assert sink.index_uid == "docs"
    assert "secret" not in repr(sink)


@pytest.mark.parametrize(
    "spec", ["redis://localhost", "sqlite://fleet.db", "sqlite:///", "postgres://x", "fleet.db"]
)
def test_open_sink_rejects_other_forms(spec: str) -> None:
    # Settings.validate() would refuse some of these already; open_sink must not rely on it.
    settings = Settings()
    object.__setattr__(settings, "sink", spec)
    with pytest.raises(ConfigError) as info:
        open_sink(settings)
    assert "sqlite:///" in str(info.value)
    assert "http(s)://" in str(info.value)


def test_sinks_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(SqliteSink(tmp_path / "x.db"), Sink)
    assert isinstance(MeiliSink("http://127.0.0.1:1", api_key=None, index="pages"), Sink)


# --------------------------------------------------------------------------------------
# SQLite


@pytest.fixture
async def sqlite_sink(tmp_path: Path) -> AsyncIterator[SqliteSink]:
    sink = SqliteSink(tmp_path / "nested" / "dir" / "fleet.db")
    await sink.open()
    yield sink
    await sink.close()


async def test_sqlite_upsert_search_count(sqlite_sink: SqliteSink) -> None:
    pages = [
        make_page("fox", title="Foxes", text="The quick brown fox jumps over the lazy dog."),
        make_page("cat", title="Cats", text="Cats sleep most of the day."),
        make_page("owl", title="Owls", text="Owls hunt at night; a fox may hear them."),
    ]
    assert await sqlite_sink.upsert(pages) == []
    assert await sqlite_sink.count() == 3
    hits = await sqlite_sink.search("fox", 10)
    assert [h.url for h in hits] == [pages[0].url, pages[2].url]  # title match ranks first
    assert isinstance(hits[0], Hit)
    assert hits[0].title == "Foxes"
    assert "fox" in hits[0].snippet
    assert await sqlite_sink.search("fox", 1) == hits[:1]
    assert await sqlite_sink.search("giraffe", 10) == []
    assert (sqlite_sink.path.parent).is_dir()


async def test_sqlite_upsert_twice_is_one_document(sqlite_sink: SqliteSink) -> None:
    first = make_page("a", title="Old title", text="alpha")
    second = make_page("a", title="New title", text="beta", fetched_at=first.fetched_at + 60)
    await sqlite_sink.upsert([first])
    await sqlite_sink.upsert([second])
    await sqlite_sink.upsert([second])  # a redelivery changes nothing
    assert await sqlite_sink.count() == 1
    assert [h.title for h in await sqlite_sink.search("new", 10)] == ["New title"]
    assert await sqlite_sink.search("alpha", 10) == []  # the FTS index followed the update
    assert len(await sqlite_sink.search("beta", 10)) == 1


async def test_sqlite_duplicate_ids_in_one_batch(sqlite_sink: SqliteSink) -> None:
    page = make_page("dup", title="one")
    again = make_page("dup", title="two", fetched_at=page.fetched_at + 1)
    assert await sqlite_sink.upsert([page, again]) == []
    assert await sqlite_sink.count() == 1
    assert [h.title for h in await sqlite_sink.search("two", 10)] == ["two"]


async def test_sqlite_older_fetch_does_not_overwrite_newer(sqlite_sink: SqliteSink) -> None:
    newer = make_page("p", title="Newer", fetched_at=2_000.0)
    older = make_page("p", title="Older", fetched_at=1_000.0)
    await sqlite_sink.upsert([newer])
    await sqlite_sink.upsert([older])  # e.g. a late redelivery of an earlier fetch
    assert [h.title for h in await sqlite_sink.search("newer", 10)] == ["Newer"]
    assert await sqlite_sink.search("older", 10) == []


async def test_sqlite_ranking_weights(sqlite_sink: SqliteSink) -> None:
    in_text = make_page("t", title="Something", text="a zebra " + LOREM)
    in_description = make_page("d", title="Else", description="a zebra here", text=LOREM)
    in_headings = make_page("h", title="Other", headings=["All about the zebra"], text=LOREM)
    in_title = make_page("x", title="Zebra", text=LOREM)
    await sqlite_sink.upsert([in_text, in_description, in_headings, in_title])
    hits = await sqlite_sink.search("zebra", 10)
    assert [h.url for h in hits] == [
        in_title.url,
        in_headings.url,
        in_description.url,
        in_text.url,
    ]


async def test_sqlite_snippet_has_ellipsis_around_the_match(sqlite_sink: SqliteSink) -> None:
    text = LOREM * 5 + " the marmalade sandwich is here " + LOREM * 5
    await sqlite_sink.upsert([make_page("long", title="Breakfast", text=text)])
    [hit] = await sqlite_sink.search("marmalade", 5)
    assert "marmalade" in hit.snippet
    assert hit.snippet.startswith("…")
    assert hit.snippet.endswith("…")
    assert len(hit.snippet.split()) <= 32


async def test_sqlite_snippet_falls_back_when_text_is_empty(sqlite_sink: SqliteSink) -> None:
    page = make_page("empty", title="Lonely title", description="A short description")
    await sqlite_sink.upsert([page])
    [hit] = await sqlite_sink.search("lonely", 5)
    assert hit.snippet == "A short description"


@pytest.mark.parametrize(
    "query",
    [
        "c++",
        '"',
        '"unbalanced',
        "AND",
        "OR",
        "NOT",
        "a AND",
        "-minus",
        "NEAR(a b)",
        "title:fox",
        "*",
        "fox*",
        "^fox",
        "'",
        '""""',
        "(",
        ")",
        "{title}: x",
        "😀",
        "café",
        "a\x00b",
        "x" * 5000,
    ],
)
async def test_sqlite_weird_queries_never_raise(sqlite_sink: SqliteSink, query: str) -> None:
    await sqlite_sink.upsert([make_page("c", title="C++ and AND", text="The fox likes c++.")])
    hits = await sqlite_sink.search(query, 10)
    assert isinstance(hits, list)


@pytest.mark.parametrize("query", ["", "   ", "+++", "--", "\t\n"])
async def test_sqlite_empty_queries_give_nothing(sqlite_sink: SqliteSink, query: str) -> None:
    await sqlite_sink.upsert([make_page("c", title="Anything", text="text")])
    assert await sqlite_sink.search(query, 10) == []


async def test_sqlite_query_terms_are_literal(sqlite_sink: SqliteSink) -> None:
    await sqlite_sink.upsert(
        [
            make_page("cpp", title="C++ guide", text="templates"),
            make_page("and", title="Rock AND roll", text="guitars"),
            make_page("cafe", title="Café culture", text="coffee"),
        ]
    )
    assert [h.title for h in await sqlite_sink.search("c++", 10)] == ["C++ guide"]
    assert [h.title for h in await sqlite_sink.search("AND", 10)] == ["Rock AND roll"]
    assert [h.title for h in await sqlite_sink.search("cafe", 10)] == ["Café culture"]
    assert [h.title for h in await sqlite_sink.search("rock roll", 10)] == ["Rock AND roll"]
    assert await sqlite_sink.search("rock coffee", 10) == []  # every term must match


def test_fts5_query_quotes_every_term() -> None:
    # Words only, each its own quoted term: operators and punctuation become plain text.
    assert fts5_query('c++ "x" AND') == '"c" "x" "AND"'
    assert fts5_query("title:fox NEAR(a b)") == '"title" "fox" "NEAR" "a" "b"'
    assert fts5_query("  ") is None
    assert fts5_query("+++ ---") is None


async def test_sqlite_commit_is_durable_when_upsert_returns(sqlite_sink: SqliteSink) -> None:
    pages = [make_page(f"d{i}", title=f"Durable {i}") for i in range(25)]
    await sqlite_sink.upsert(pages)
    # A brand-new connection (another process would do the same) sees the rows at once.
    with sqlite3.connect(sqlite_sink.path) as other:
        assert other.execute("SELECT count(*) FROM pages").fetchone()[0] == 25
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        found = other.execute(
            "SELECT count(*) FROM pages_fts WHERE pages_fts MATCH 'durable'"
        ).fetchone()[0]
        assert found == 25
        other.execute("INSERT INTO pages_fts(pages_fts) VALUES ('integrity-check')")
    other.close()


async def test_sqlite_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    sink = SqliteSink(path)
    await sink.open()
    await sink.open()  # idempotent
    await sink.upsert([make_page("keep", title="Persistent")])
    await sink.close()
    await sink.close()
    again = SqliteSink(path)
    await again.open()
    try:
        assert await again.count() == 1
        assert [h.title for h in await again.search("persistent", 5)] == ["Persistent"]
    finally:
        await again.close()


async def test_sqlite_concurrent_reader_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    writer, reader = SqliteSink(path), SqliteSink(path)
    await writer.open()
    await reader.open()
    batches, per_batch = 30, 40
    done = asyncio.Event()
    seen: list[int] = []

    async def write() -> None:
        try:
            for b in range(batches):
                batch = [
                    make_page(f"w{b}-{i}", title=f"shared page {b} {i}", text=LOREM)
                    for i in range(per_batch)
                ]
                assert await writer.upsert(batch) == []
        finally:
            done.set()

    async def read() -> None:
        while not done.is_set():
            seen.append(await reader.count())
            await reader.search("shared", 5)
            await asyncio.sleep(0)

    try:
        await asyncio.gather(write(), read())
        assert seen, "the reader never ran"
        assert seen == sorted(seen), "a reader saw the count go backwards"
        assert all(n % per_batch == 0 for n in seen), "a reader saw half a batch"
        assert await reader.count() == batches * per_batch
    finally:
        await writer.close()
        await reader.close()


async def test_sqlite_rejects_only_the_unencodable_document(sqlite_sink: SqliteSink) -> None:
    good = make_page("good", title="Fine")
    bad = make_page("bad", title="broken \ud800 surrogate")
    rejected = await sqlite_sink.upsert([good, bad, make_page("good2", title="Fine too")])
    assert [r.id for r in rejected] == [bad.id]
    assert isinstance(rejected[0], Rejected)
    assert await sqlite_sink.count() == 2


async def test_sqlite_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    sink = SqliteSink(blocker / "fleet.db")
    with pytest.raises(ConfigError):
        await sink.open()


async def test_sqlite_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a database"):
        await SqliteSink(path).open()


async def test_sqlite_locked_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    sink = SqliteSink(path, busy_timeout_ms=100)
    await sink.open()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(SinkUnavailable):
            await sink.upsert([make_page("x", title="x")])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await sink.upsert([make_page("x", title="x")]) == []
    await sink.close()


# --------------------------------------------------------------------------------------
# Meilisearch: the sink against the fake


@pytest.fixture
def fake_meili() -> Iterator[FakeMeili]:
    fake = FakeMeili(master_key=KEY)
    fake.start_in_thread()
    yield fake
    fake.stop_thread()


def new_meili_sink(fake: FakeMeili, **overrides: Any) -> MeiliSink:
    options: dict[str, Any] = {
        "api_key": KEY,
        "index": "pages",
        "task_timeout_s": 5.0,
        "poll_interval_s": 0.005,
    }
    options.update(overrides)
    return MeiliSink(fake.url, **options)


@pytest.fixture
async def meili_sink(fake_meili: FakeMeili) -> AsyncIterator[MeiliSink]:
    sink = new_meili_sink(fake_meili)
    await sink.open()
    yield sink
    await sink.close()


async def test_meili_open_creates_index_and_settings_idempotently(fake_meili: FakeMeili) -> None:
    sink = new_meili_sink(fake_meili)
    await sink.open()
    await sink.open()
    await new_meili_sink(fake_meili).open()  # a second indexer starting up
    await sink.close()
    assert len(fake_meili.tasks_of_type("indexCreation")) == 1
    assert len(fake_meili.tasks_of_type("settingsUpdate")) == 1
    client = meilisearch.Client(fake_meili.url, KEY)
    index = client.get_index("pages")
    assert index.primary_key == "id"
    settings = index.get_settings()
    assert settings["searchableAttributes"] == SEARCHABLE_ATTRIBUTES
    assert settings["displayedAttributes"] == DISPLAYED_ATTRIBUTES
    assert settings["filterableAttributes"] == FILTERABLE_ATTRIBUTES


async def test_meili_open_rejects_index_with_another_primary_key(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    client.wait_for_task(client.create_index("pages", {"primaryKey": "url"}).task_uid)
    with pytest.raises(ConfigError, match="primary key"):
        await new_meili_sink(fake_meili).open()


async def test_meili_upsert_search_count(meili_sink: MeiliSink, fake_meili: FakeMeili) -> None:
    pages = [
        make_page("fox", title="Foxes", text=LOREM + " the quick brown fox jumps " + LOREM),
        make_page("cat", title="Cats", text="Cats sleep most of the day."),
    ]
    assert await meili_sink.upsert(pages) == []
    assert await meili_sink.count() == 2
    hits = await meili_sink.search("fox", 10)
    assert [h.url for h in hits] == [pages[0].url]
    assert hits[0].title == "Foxes"
    assert "fox" in hits[0].snippet
    assert hits[0].snippet.startswith("…") and hits[0].snippet.endswith("…")
    assert await meili_sink.search("", 10) == []
    stored = {doc["id"]: doc for doc in fake_meili.documents("pages")}
    assert stored[pages[0].id]["host"] == "example.com"
    assert stored[pages[0].id]["headings"] == []
    assert set(stored[pages[0].id]) == set(DISPLAYED_ATTRIBUTES)


async def test_meili_upsert_twice_is_one_document(meili_sink: MeiliSink) -> None:
    await meili_sink.upsert([make_page("a", title="Old title")])
    await meili_sink.upsert([make_page("a", title="New title")])
    assert await meili_sink.count() == 1
    assert [h.title for h in await meili_sink.search("title", 5)] == ["New title"]


async def test_meili_payload_too_large_splits_the_batch(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    pages = [make_page(f"big{i}", title=f"Big {i}", text=LOREM * 4) for i in range(8)]
    fake_meili.max_payload_bytes = 2500  # about two documents per request
    before = fake_meili.document_add_requests
    assert await meili_sink.upsert(pages) == []
    assert await meili_sink.count() == 8
    assert fake_meili.document_add_requests - before >= 4


async def test_meili_single_document_over_the_limit_is_rejected(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    small = make_page("small", title="Small")
    huge = make_page("huge", title="Huge", text=LOREM * 50)
    fake_meili.max_payload_bytes = 3000
    rejected = await meili_sink.upsert([small, huge])
    assert [r.id for r in rejected] == [huge.id]
    assert "payload" in rejected[0].reason
    assert await meili_sink.count() == 1


async def test_meili_bisects_to_the_one_invalid_document(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    pages = [make_page(f"p{i}", title=f"Page {i}") for i in range(16)]
    bad = make_page("bad", title="Bad", page_id="not a valid id!")
    batch = [*pages[:11], bad, *pages[11:]]
    rejected = await meili_sink.upsert(batch)
    assert rejected == [Rejected(bad.id, rejected[0].reason)]
    assert rejected[0].reason.startswith("invalid_document_id")
    assert "Document identifier" in rejected[0].reason
    assert await meili_sink.count() == 16
    # Bisection, not one request per document.
    assert fake_meili.document_add_requests <= 1 + 2 * 5


async def test_meili_several_invalid_documents(meili_sink: MeiliSink) -> None:
    pages = [make_page(f"p{i}", title=f"Page {i}") for i in range(6)]
    bad = [make_page(f"b{i}", page_id=f"bad/{i}") for i in range(2)]
    rejected = await meili_sink.upsert([bad[0], *pages, bad[1]])
    assert sorted(r.id for r in rejected) == sorted(p.id for p in bad)
    assert await meili_sink.count() == 6


async def test_meili_503_is_sink_unavailable_then_recovers(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    fake_meili.fail_next(1, status=503)
    with pytest.raises(SinkUnavailable):
        await meili_sink.upsert([make_page("x", title="x")])
    assert await meili_sink.upsert([make_page("x", title="x")]) == []
    assert await meili_sink.count() == 1


async def test_meili_503_while_polling_is_sink_unavailable(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    fake_meili.pause_tasks()
    task = asyncio.create_task(meili_sink.upsert([make_page("y", title="y")]))
    await asyncio.sleep(0.1)
    fake_meili.set_down(True)
    fake_meili.resume_tasks()
    with pytest.raises(SinkUnavailable):
        await task
    fake_meili.set_down(False)


async def test_meili_server_stopped_is_sink_unavailable(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    fake_meili.stop_thread()
    with pytest.raises(SinkUnavailable):
        await meili_sink.upsert([make_page("z", title="z")])
    with pytest.raises(SinkUnavailable):
        await meili_sink.search("z", 5)
    with pytest.raises(SinkUnavailable):
        await meili_sink.count()
    fake_meili.start_in_thread()  # same port, state kept: like a restarted instance
    assert await meili_sink.upsert([make_page("z", title="z")]) == []
    assert await meili_sink.count() == 1


async def test_meili_nothing_listening_is_sink_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = MeiliSink(f"http://127.0.0.1:{port}", api_key=KEY, index="pages")
    with pytest.raises(SinkUnavailable):
        await sink.open()
    await sink.close()


async def test_meili_task_timeout_is_sink_unavailable(fake_meili: FakeMeili) -> None:
    sink = new_meili_sink(fake_meili, task_timeout_s=0.2)
    await sink.open()
    fake_meili.pause_tasks()
    try:
        with pytest.raises(SinkUnavailable, match="timed out"):
            await sink.upsert([make_page("slow", title="slow")])
    finally:
        fake_meili.resume_tasks()
        await sink.close()


async def test_meili_internal_task_failure_is_sink_unavailable(
    meili_sink: MeiliSink, fake_meili: FakeMeili
) -> None:
    fake_meili.fail_next_tasks(1, code="internal")
    with pytest.raises(SinkUnavailable, match="internal"):
        await meili_sink.upsert([make_page("i", title="i")])


@pytest.mark.parametrize("api_key", ["s3cr3t-but-wrong", None])
async def test_meili_bad_api_key_is_config_error(
    fake_meili: FakeMeili, api_key: str | None
) -> None:
    sink = new_meili_sink(fake_meili, api_key=api_key)
    with pytest.raises(ConfigError) as info:
        await sink.open()
    assert "FLEET_MEILI_API_KEY" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    await sink.close()


async def test_meili_search_before_any_index_is_empty(fake_meili: FakeMeili) -> None:
    sink = new_meili_sink(fake_meili, index="never_created")
    assert await sink.search("anything", 5) == []
    assert await sink.count() == 0
    await sink.close()


# --------------------------------------------------------------------------------------
# the fake itself, through the official client


def test_fake_task_lifecycle(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    fake_meili.pause_tasks()
    info = client.index("books").add_documents([{"id": 1, "title": "Dune"}], primary_key="id")
    assert info.status == "enqueued"
    assert info.type == "documentAdditionOrUpdate"
    enqueued = client.get_task(info.task_uid)
    assert enqueued.status == "enqueued"
    assert enqueued.started_at is None and enqueued.finished_at is None
    assert enqueued.details == {"receivedDocuments": 1, "indexedDocuments": None}
    with pytest.raises(MeilisearchApiError) as missing:
        client.get_index("books")  # not created before the task runs
    assert missing.value.code == "index_not_found"
    assert missing.value.status_code == 404
    fake_meili.resume_tasks()
    done = client.wait_for_task(info.task_uid, timeout_in_ms=5000, interval_in_ms=5)
    assert done.status == "succeeded"
    assert done.details == {"receivedDocuments": 1, "indexedDocuments": 1}
    assert done.error is None
    assert done.started_at is not None and done.finished_at is not None
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.duration is not None and done.duration.startswith("PT")
    assert client.index("books").get_document(1).title == "Dune"
    listed = client.get_tasks({"indexUids": ["books"], "statuses": ["succeeded"]})
    assert [t.uid for t in listed.results] == [info.task_uid]


def test_fake_tasks_run_in_order(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    index = client.index("books")
    fake_meili.pause_tasks()
    first = index.add_documents([{"id": "a", "n": 1}], primary_key="id")
    second = index.add_documents([{"id": "a", "n": 2}])
    fake_meili.resume_tasks()
    client.wait_for_task(second.task_uid, interval_in_ms=5)
    first_done = client.get_task(first.task_uid).finished_at
    second_started = client.get_task(second.task_uid).started_at
    assert first_done is not None and second_started is not None
    assert first_done <= second_started
    assert index.get_document("a").n == 2


def test_fake_one_bad_id_fails_the_whole_task(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    index = client.index("books")
    client.wait_for_task(index.add_documents([{"id": "seed"}], primary_key="id").task_uid)
    info = index.add_documents([{"id": "ok"}, {"id": "bad id"}, {"id": "ok2"}])
    task = client.wait_for_task(info.task_uid, interval_in_ms=5)
    assert task.status == "failed"
    assert task.details == {"receivedDocuments": 3, "indexedDocuments": 0}
    assert task.error is not None
    assert set(task.error) == {"message", "code", "type", "link"}
    assert task.error["code"] == "invalid_document_id"
    assert task.error["type"] == "invalid_request"
    assert task.error["link"] == "https://docs.meilisearch.com/errors#invalid_document_id"
    assert '`"bad id"`' in task.error["message"]
    assert index.get_documents().total == 1  # nothing from the failed task was written
    missing = client.wait_for_task(index.add_documents([{"title": "no id"}]).task_uid)
    assert missing.error is not None and missing.error["code"] == "missing_document_id"
    too_long = client.wait_for_task(index.add_documents([{"id": "a" * 512}]).task_uid)
    assert too_long.error is not None and too_long.error["code"] == "invalid_document_id"


def test_fake_index_errors(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    assert client.wait_for_task(client.create_index("dup").task_uid).status == "succeeded"
    again = client.wait_for_task(client.create_index("dup").task_uid)
    assert again.status == "failed"
    assert again.error is not None and again.error["code"] == "index_already_exists"
    with pytest.raises(MeilisearchApiError) as info:
        client.index("nope").search("x")
    assert info.value.code == "index_not_found"
    with pytest.raises(MeilisearchApiError) as bad:
        client.get_index("bad uid!")
    assert bad.value.code == "invalid_index_uid"


def test_fake_payload_too_large(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    fake_meili.max_payload_bytes = 100
    with pytest.raises(MeilisearchApiError) as info:
        client.index("books").add_documents([{"id": "x", "text": "y" * 200}])
    assert info.value.status_code == 413
    assert info.value.code == "payload_too_large"
    assert fake_meili.document_add_requests == 0


def test_fake_search_shapes(fake_meili: FakeMeili) -> None:
    client = meilisearch.Client(fake_meili.url, KEY)
    index = client.index("books")
    docs = [
        {"id": 1, "title": "Hello world", "text": LOREM + "a world of tea " + LOREM},
        {"id": 2, "title": "Other", "text": "hello again"},
        {"id": 3, "title": "Unrelated", "text": "nothing to see"},
    ]
    client.wait_for_task(index.add_documents(docs, primary_key="id").task_uid)
    result = index.search(
        "hello",
        {
            "limit": 10,
            "attributesToRetrieve": ["id", "title"],
            "attributesToCrop": ["text"],
            "cropLength": 5,
            "attributesToHighlight": ["title"],
        },
    )
    assert set(result) >= {"hits", "query", "processingTimeMs", "limit", "offset"}
    assert result["estimatedTotalHits"] == 2
    assert [h["id"] for h in result["hits"]] == [1, 2]  # title before text
    first = result["hits"][0]
    assert set(first) == {"id", "title", "_formatted"}
    assert first["_formatted"]["title"] == "<em>Hello</em> world"
    assert first["_formatted"]["text"].endswith("…")
    assert index.search("hel")["estimatedTotalHits"] == 2  # last word is a prefix
    assert index.search("hello world")["hits"][0]["id"] == 1
    assert index.search("")["estimatedTotalHits"] == 3  # placeholder search
    with pytest.raises(MeilisearchApiError) as info:
        index.search("x", {"nonsense": True})
    assert info.value.code == "bad_request"


def test_fake_auth(fake_meili: FakeMeili) -> None:
    def status_and_body(path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(fake_meili.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert status_and_body("/health", {}) == (200, {"status": "available"})
    status, body = status_and_body("/indexes", {})
    assert status == 401
    assert body["code"] == "missing_authorization_header"
    assert body["type"] == "auth"
    status, body = status_and_body("/indexes", {"Authorization": "Bearer nope"})
    assert (status, body["code"]) == (403, "invalid_api_key")
    status, body = status_and_body("/version", {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and "pkgVersion" in body


def test_fake_admin_routes(fake_meili: FakeMeili) -> None:
    request = urllib.request.Request(fake_meili.url + "/_fake/fail?count=1", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["pendingFailures"] == 1
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(fake_meili.url + "/health", timeout=5)
    assert info.value.code == 503
    with urllib.request.urlopen(fake_meili.url + "/health", timeout=5) as response:
        assert response.status == 200


def test_fake_runs_as_a_module() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.meili", "--port", str(port), "--master-key", KEY],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        client = meilisearch.Client(f"http://127.0.0.1:{port}", KEY)
        deadline = time.monotonic() + 15
        while not client.is_healthy():
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "fake Meilisearch did not start"
            time.sleep(0.05)
        task = client.wait_for_task(client.create_index("x", {"primaryKey": "id"}).task_uid)
        assert task.status == "succeeded"
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


async def test_sqlite_search_on_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "typo.db")
    with pytest.raises(ConfigError, match="no SQLite index"):
        await sink.open(readonly=True)
    assert not (tmp_path / "typo.db").exists()


async def test_sqlite_readonly_reader_pool_serves_concurrent_searches(tmp_path: Path) -> None:
    writer = SqliteSink(tmp_path / "pool.db")
    await writer.open()
    pages = [make_page(f"p{i}", title=f"Page {i}", text=f"common word{i} text") for i in range(40)]
    assert await writer.upsert(pages) == []
    reader = SqliteSink(tmp_path / "pool.db", readers=4)
    await reader.open(readonly=True)
    try:
        searches = await asyncio.gather(
            *(reader.search_page(f"word{i % 40}", 5) for i in range(200))
        )
        for i, page in enumerate(searches):
            assert [h.title for h in page.hits] == [f"Page {i % 40}"]
        got = await asyncio.gather(*(reader.get(pages[i % 40].id) for i in range(100)))
        assert all(p is not None and p.id == pages[i % 40].id for i, p in enumerate(got))
        # The indexer keeps writing beside the readers (WAL).
        assert await writer.upsert([make_page("late", title="Late", text="common late")]) == []
        assert (await reader.search_page("common", 100)).total == 41
    finally:
        await reader.close()
        await writer.close()


async def test_sqlite_snippet_falls_back_to_fts5_for_folded_words(sqlite_sink: SqliteSink) -> None:
    text = LOREM * 3 + " the CAFÉ opens at dawn " + LOREM * 3
    await sqlite_sink.upsert([make_page("cafe", title="Mornings", text=text)])
    # The index folds case and diacritics; the snippet still finds the word.
    [hit] = await sqlite_sink.search("cafe", 5)
    assert "CAFÉ" in hit.snippet
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    [hit] = await sqlite_sink.search("dawn", 5)
    assert "dawn" in hit.snippet and len(hit.snippet.split()) <= 32


@pytest.mark.parametrize("detail", ["full", "column"])
async def test_sqlite_fts_detail_of_a_new_index(tmp_path: Path, detail: str) -> None:
    sink = SqliteSink(tmp_path / "d.db", fts_detail=detail)
    await sink.open()
    await sink.upsert([make_page("a", title="Alpha", text="bravo charlie")])
    assert [h.title for h in await sink.search("charlie", 5)] == ["Alpha"]
    await sink.close()
    with sqlite3.connect(tmp_path / "d.db") as db:
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'pages_fts'").fetchone()
    assert f"detail={detail}" in sql
    # Reopened with the other setting, an index keeps the detail it was created with.
    other = SqliteSink(tmp_path / "d.db", fts_detail="column" if detail == "full" else "full")
    await other.open(readonly=True)
    assert [h.title for h in await other.search("bravo", 5)] == ["Alpha"]
    await other.close()


@pytest.mark.parametrize(
    "text",
    [
        "word at the start, then " + "plain prose " * 200,
        "plain prose " * 200 + "and the word near the end",
        ("é " * 400) + "the word between accents " + ("ü " * 400),
        ("😀x " * 300) + "word" + (" 😀" * 300),
        "Word capitalised first, " + "filler " * 100 + "then the word again",
        "short word",
    ],
)
def test_sqlite_snippet_from_bytes_is_the_snippet_of_the_text(text: str) -> None:
    from fleet.sinks.sqlite import _cut_window, _find_word, _snippet_of  # noqa: PLC0415

    assert _snippet_of(text.encode(), "word") == _cut_window(text, _find_word(text, "word"))
