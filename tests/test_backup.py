"""`fleet backup` / `fleet restore`: SQLite through the online backup API, Meilisearch through
its dumps API (real client, API-faithful fake), both while an indexer writes.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import meilisearch
import pytest
from meilisearch.errors import MeilisearchApiError

from fleet.backup import MANIFEST_NAME, backup, read_manifest, restore
from fleet.errors import BackupInvalid, ConfigError, RestoreTargetNotEmpty
from fleet.messages import Page
from fleet.settings import Settings
from fleet.sinks.meili import MeiliSink
from fleet.sinks.sqlite import SqliteSink
from fleet.urls import url_id
from tests.conftest import Roles, wait_for
from tests.fakes.meili import FakeMeili
from tests.pipeline_helpers import cli, cli_json, drained, indexed_urls, write_urls
from tests.site import LoopbackSite

KEY = "backup-test-master-key"


def page(n: int, *, text: str = "") -> Page:
    url = f"https://example.com/doc/{n}"
    return Page(
        id=url_id(url),
        url=url,
        final_url=url,
        canonical_url=url,
        status=200,
        content_type="text/html",
        title=f"Doc {n}",
        description=f"document number {n}",
        headings=[f"Heading {n}"],
        text=text or f"unique{n} alpha bravo charlie",
        lang="en",
        links=[],
        content_hash=f"h{n}",
        fetched_at=1_700_000_000.0 + n,
    )


def backup_urls(directory: Path) -> set[str]:
    """URLs in a SQLite backup, read without changing the file (its checksum must hold)."""
    uri = (directory / "fleet.db").resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        return {url for (url,) in db.execute("SELECT url FROM pages")}


def export_urls(directory: Path) -> set[str]:
    lines = (directory / "documents.jsonl").read_text().splitlines()
    return {json.loads(line)["url"] for line in lines if line.strip()}


def search_urls(settings: Settings, sink: str, query: str = "alpha") -> list[str]:
    hits = cli_json(settings, "search", query, "--sink", sink, "--limit", "1000")
    return [hit["url"] for hit in hits]


# --------------------------------------------------------------------------------------
# SQLite


async def test_sqlite_backup_while_a_writer_commits_is_one_consistent_moment(
    tmp_path: Path,
) -> None:
    """Batches of 50 pages commit in another connection; every backup holds whole batches."""
    path = tmp_path / "live.db"
    seed = SqliteSink(path)
    await seed.open()
    await seed.upsert([page(n) for n in range(50)])
    await seed.close()
    stop = threading.Event()
    committed: list[int] = [1]
    errors: list[BaseException] = []

    def writer() -> None:
        async def write() -> None:
            sink = SqliteSink(path)
            await sink.open()
            try:
                batch = 1
                while not stop.is_set():
                    start = batch * 50
                    await sink.upsert([page(n, text="x " * 2000) for n in range(start, start + 50)])
                    batch += 1
                    committed.append(batch)
            finally:
                await sink.close()

        try:
            asyncio.run(write())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen: list[int] = []
        for n in range(5):
            before = committed[-1]
            manifest = await backup(SqliteSink(path), tmp_path / f"b{n}")
            after = committed[-1]
            # Whole transactions only, and the state of some moment during the backup.
            assert manifest.pages % 50 == 0
            # (A commit lands before the writer counts it, hence the +1.)
            assert before * 50 <= manifest.pages <= (after + 1) * 50
            seen.append(manifest.pages)
            assert manifest.details["schema_version"] == 1
            assert manifest.details["db_pages"] * manifest.details["page_size"] == (
                manifest.files[0].bytes
            )

            async def wrote_more(mark: int = after) -> bool:
                return committed[-1] > mark

            await wait_for(wrote_more, timeout=30)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert seen == sorted(seen) and seen[-1] > seen[0]
    # The last backup restores into an empty sink, intact, with exactly its pages.
    target = SqliteSink(tmp_path / "restored.db")
    report = await restore(target, tmp_path / "b4", target="restored")
    await target.close()
    assert report.pages == seen[-1] and report.replaced == 0


async def test_backup_during_a_run_restores_into_an_empty_sink_with_the_same_pages(
    settings: Settings, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    settings = settings.replace(worker_concurrency=8)
    roles.env.update(settings.to_env())
    # Slow pages hold the run open while the backup runs; released afterwards.
    site.slow_s = 1.0
    urls = [site.url(f"/slow/{n}") for n in range(300)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "urls.txt", urls)))
    roles.start("worker")
    roles.start("indexer")

    async def some_indexed() -> bool:
        return len(indexed_urls(settings)) >= 8

    await wait_for(some_indexed, timeout=60)
    before = len(indexed_urls(settings))
    out = cli(settings, "backup", str(tmp_path / "backup"), "--json")
    after = len(indexed_urls(settings))
    site.slow_s = 0.0
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert manifest["sink_kind"] == "sqlite"
    assert manifest["fleet_version"]
    assert manifest["created_at"].endswith("Z")
    assert [f["name"] for f in manifest["files"]] == ["fleet.db"]
    assert len(manifest["files"][0]["sha256"]) == 64
    # Taken mid-run: some pages, not all, and the state of a moment during the backup.
    assert before <= manifest["pages"] <= after < len(urls)
    backed_up = backup_urls(tmp_path / "backup")
    assert len(backed_up) == manifest["pages"]

    async def all_indexed() -> bool:
        return len(indexed_urls(settings)) == len(urls) and await drained(settings)

    await wait_for(all_indexed, timeout=120)
    assert backed_up <= set(indexed_urls(settings))

    restored = f"sqlite:///{tmp_path / 'restored.db'}"
    out = cli(settings, "restore", str(tmp_path / "backup"), "--sink", restored)
    assert out.returncode == 0, out.stderr
    assert f"restored {manifest['pages']} page(s)" in out.stdout
    # `fleet search` on the restored sink finds exactly the backed-up pages.
    found = search_urls(settings, restored)
    assert len(found) == len(set(found)) == manifest["pages"]
    assert set(found) == backed_up
    some = sorted(backed_up)[0]
    n = some.rsplit("/", 1)[1]
    assert search_urls(settings, restored, f"unique{n}") == [some]


async def test_restore_refuses_a_non_empty_sink_unless_forced(
    settings: Settings, tmp_path: Path
) -> None:
    source = SqliteSink(tmp_path / "source.db")
    await source.open()
    await source.upsert([page(n) for n in range(10)])
    await source.close()
    out = cli(settings, "backup", str(tmp_path / "b"), "--sink", f"sqlite:///{source.path}")
    assert out.returncode == 0, out.stderr
    other = SqliteSink(tmp_path / "other.db")
    await other.open()
    await other.upsert([page(n) for n in range(100, 103)])
    await other.close()
    target = f"sqlite:///{other.path}"

    out = cli(settings, "restore", str(tmp_path / "b"), "--sink", target)
    assert out.returncode == 2
    assert "already holds 3 page(s)" in out.stderr and "--force" in out.stderr
    assert len(search_urls(settings, target)) == 3  # untouched

    out = cli(settings, "restore", str(tmp_path / "b"), "--sink", target, "--force", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["replaced"] == 3
    assert sorted(search_urls(settings, target)) == sorted(page(n).url for n in range(10))


async def test_a_damaged_or_unfinished_backup_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    source = SqliteSink(tmp_path / "source.db")
    await source.open()
    await source.upsert([page(n) for n in range(5)])
    await source.close()
    directory = tmp_path / "b"
    await backup(SqliteSink(source.path), directory)

    data = bytearray((directory / "fleet.db").read_bytes())
    data[-1] ^= 0xFF
    (directory / "fleet.db").write_bytes(bytes(data))
    target = SqliteSink(tmp_path / "target.db")
    with pytest.raises(BackupInvalid, match="checksum"):
        await restore(target, directory, target="target")
    assert not target.path.exists()

    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["files"][0]["name"] = "../source.db"
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BackupInvalid, match="outside the backup"):
        read_manifest(directory)

    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(BackupInvalid, match="did not finish"):
        read_manifest(directory)
    with pytest.raises(BackupInvalid, match="no backup directory"):
        read_manifest(tmp_path / "nowhere")


async def test_backup_wants_a_new_directory_and_an_existing_index(
    settings: Settings, tmp_path: Path
) -> None:
    source = SqliteSink(tmp_path / "source.db")
    await source.open()
    await source.close()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        await backup(SqliteSink(source.path), busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    out = cli(settings, "backup", str(tmp_path / "b"), "--sink", f"sqlite:///{tmp_path / 'no.db'}")
    assert out.returncode == 2
    assert "no SQLite index" in out.stderr
    assert not (tmp_path / "b").exists()

    out = cli(settings, "backup", str(tmp_path / "b"), "--sink", f"sqlite:///{source.path}")
    assert out.returncode == 0, out.stderr
    out = cli(settings, "restore", str(tmp_path / "b"), "--sink", "http://127.0.0.1:9")
    assert out.returncode == 1
    assert "backup of a sqlite sink" in out.stderr


# --------------------------------------------------------------------------------------
# Meilisearch


@pytest.fixture
def meili(tmp_path: Path) -> Iterator[FakeMeili]:
    fake = FakeMeili(master_key=KEY, dump_dir=tmp_path / "meili-dumps")
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture
def fresh_meili(tmp_path: Path) -> Iterator[FakeMeili]:
    fake = FakeMeili(master_key=KEY, dump_dir=tmp_path / "fresh-dumps")
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


def meili_sink(fake: FakeMeili, **options: Any) -> MeiliSink:
    return MeiliSink(
        fake.url, api_key=KEY, index="pages", task_timeout_s=10.0, poll_interval_s=0.005, **options
    )


def test_fake_dumps_api_through_the_client(meili: FakeMeili, tmp_path: Path) -> None:
    client = meilisearch.Client(meili.url, KEY)
    index = client.index("books")
    client.wait_for_task(index.add_documents([{"id": "a", "t": "dune"}], primary_key="id").task_uid)
    client.wait_for_task(index.update_settings({"searchableAttributes": ["t"]}).task_uid)

    meili.pause_tasks()
    info = client.create_dump()
    assert (info.status, info.type, info.index_uid) == ("enqueued", "dumpCreation", None)
    assert client.get_task(info.task_uid).details == {"dumpUid": None}
    meili.resume_tasks()
    task = client.wait_for_task(info.task_uid, interval_in_ms=5)
    assert task.status == "succeeded"
    uid = (task.details or {})["dumpUid"]
    assert len(uid) == 18 and uid[8] == "-"  # 20250828-162026170
    dump = tmp_path / "meili-dumps" / f"{uid}.dump"
    with tarfile.open(dump, "r:gz") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        meta = archive.extractfile("./metadata.json")
        assert meta is not None
        assert json.loads(meta.read())["dumpVersion"] == "V6"
    assert {
        "metadata.json",
        "instance_uid.uuid",
        "keys.jsonl",
        "tasks/queue.jsonl",
        "batches/queue.jsonl",
        "indexes/books/metadata.json",
        "indexes/books/settings.json",
        "indexes/books/documents.jsonl",
    } <= names

    # Creating a dump needs the key; importing one happens only at start-up.
    request = urllib.request.Request(f"{meili.url}/dumps", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401
    imported = FakeMeili(master_key=KEY, import_dump=dump)
    with imported.running() as url:
        other = meilisearch.Client(url, KEY)
        assert other.index("books").get_document("a").t == "dune"
        assert other.index("books").get_settings()["searchableAttributes"] == ["t"]
        # The task history comes along, so new task uids follow the dumped ones.
        assert other.index("books").add_documents([{"id": "b"}]).task_uid == info.task_uid + 1


async def test_meili_backup_during_indexing_then_restore_and_import_the_dump(
    settings: Settings,
    meili: FakeMeili,
    fresh_meili: FakeMeili,
    site: LoopbackSite,
    roles: Roles,
    tmp_path: Path,
) -> None:
    settings = settings.replace(
        sink=meili.url,
        meili_api_key=KEY,
        meili_index="pages",
        worker_concurrency=8,
        sink_retry_max_s=1.0,
    )
    roles.env.update(settings.to_env())
    site.slow_s = 1.0
    urls = [site.url(f"/slow/{n}") for n in range(200)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "urls.txt", urls)))
    roles.start("worker")
    roles.start("indexer")

    async def some_indexed() -> bool:
        return len(meili.documents("pages")) >= 8

    await wait_for(some_indexed, timeout=60)
    directory = tmp_path / "backup"
    out = cli(
        settings,
        "backup",
        str(directory),
        "--json",
        env={"FLEET_MEILI_DUMP_DIR": str(tmp_path / "meili-dumps")},
    )
    site.slow_s = 0.0
    assert out.returncode == 0, out.stderr
    manifest = json.loads(out.stdout)
    assert manifest["sink_kind"] == "meilisearch"
    details = manifest["details"]
    dump_file = details["dump_file"]
    assert dump_file == f"{details['dump_uid']}.dump"
    assert details["dump_location"] == str(tmp_path / "meili-dumps" / dump_file)
    assert (tmp_path / "meili-dumps" / dump_file).is_file()  # where Meilisearch wrote it
    assert [f["name"] for f in manifest["files"]] == ["documents.jsonl", dump_file]
    assert KEY not in (directory / MANIFEST_NAME).read_text()
    exported = export_urls(directory)
    assert len(exported) == manifest["pages"] < len(urls)

    async def all_indexed() -> bool:
        return len(meili.documents("pages")) == len(urls) and await drained(settings)

    await wait_for(all_indexed, timeout=120)
    assert exported <= {d["url"] for d in meili.documents("pages")}

    # fleet restore: re-index the export into an empty instance.
    out = cli(settings, "restore", str(directory), "--sink", fresh_meili.url)
    assert out.returncode == 0, out.stderr
    found = search_urls(settings, fresh_meili.url)
    assert len(found) == len(set(found)) == manifest["pages"]
    assert set(found) == exported
    assert {d["id"] for d in fresh_meili.documents("pages")} == {url_id(u) for u in exported}

    # Meilisearch's own restore: a new instance started with --import-dump.
    imported = FakeMeili(master_key=KEY, import_dump=directory / dump_file)
    with imported.running() as url:
        from_dump = set(search_urls(settings, url))
    assert from_dump and from_dump <= exported


async def test_meili_restore_refuses_a_non_empty_index_and_force_replaces_it(
    meili: FakeMeili, fresh_meili: FakeMeili, tmp_path: Path
) -> None:
    source = meili_sink(meili)
    await source.open()
    await source.upsert([page(n) for n in range(30)])
    manifest = await backup(source, tmp_path / "b")
    await source.close()
    assert manifest.pages == 30
    assert manifest.files[0].name == "documents.jsonl"
    assert manifest.details["dump_location"].endswith(
        "in the instance's dump directory (--dump-dir)"
    )
    assert (tmp_path / "meili-dumps" / manifest.details["dump_file"]).is_file()

    target = meili_sink(fresh_meili)
    await target.open()
    await target.upsert([page(n) for n in range(100, 105)])
    with pytest.raises(RestoreTargetNotEmpty) as refused:
        await restore(target, tmp_path / "b", target="fresh")
    assert refused.value.pages == 5
    report = await restore(target, tmp_path / "b", target="fresh", force=True)
    assert (report.pages, report.replaced) == (30, 5)
    assert {d["id"] for d in fresh_meili.documents("pages")} == {page(n).id for n in range(30)}
    hits = await target.search("unique7", 5)
    assert [h.url for h in hits] == [page(7).url]
    await target.close()


async def test_meili_dump_dir_without_the_dump_is_a_config_error(
    meili: FakeMeili, tmp_path: Path
) -> None:
    sink = meili_sink(meili, dump_dir=tmp_path / "elsewhere")
    await sink.open()
    await sink.upsert([page(1)])
    with pytest.raises(ConfigError, match="FLEET_MEILI_DUMP_DIR"):
        await backup(sink, tmp_path / "b")
    await sink.close()
    assert not (tmp_path / "b").exists()  # nothing half-written left behind


async def test_meili_dump_needs_a_key_allowed_to_create_dumps(
    meili: FakeMeili, tmp_path: Path
) -> None:
    sink = MeiliSink(meili.url, api_key="wrong", index="pages", task_timeout_s=5.0)
    with pytest.raises(ConfigError, match="FLEET_MEILI_API_KEY") as refused:
        await backup(sink, tmp_path / "b")
    await sink.close()
    assert "wrong" not in str(refused.value)
    with pytest.raises(MeilisearchApiError):
        meilisearch.Client(meili.url, "wrong").create_dump()
