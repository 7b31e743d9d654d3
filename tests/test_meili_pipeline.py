"""The indexer role on the Meilisearch sink: real meilisearch client, API-faithful test server.

(No Meilisearch binary can be installed here; docker compose uses the real image.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.settings import Settings
from tests.conftest import Roles, wait_for
from tests.fakes.meili import FakeMeili
from tests.pipeline_helpers import cli, cli_json, drained, get_status, write_urls
from tests.site import LoopbackSite

KEY = "test-master-key"


@pytest.fixture
def meili() -> Iterator[FakeMeili]:
    fake = FakeMeili(master_key=KEY)
    fake.start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture
def meili_settings(settings: Settings, meili: FakeMeili) -> Settings:
    return settings.replace(
        sink=meili.url, meili_api_key=KEY, meili_index="pages", sink_retry_max_s=1.0
    )


async def test_indexer_writes_meilisearch_and_holds_batches_while_it_is_down(
    meili_settings: Settings, meili: FakeMeili, site: LoopbackSite, roles: Roles, tmp_path: Path
) -> None:
    settings = meili_settings
    roles.env.update(settings.to_env())
    first = [site.url(f"/page/{n}") for n in range(20)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "a.txt", first)))
    roles.start("worker")
    roles.start("indexer")

    async def first_indexed() -> bool:
        return len(meili.documents("pages")) == 20 and await drained(settings)

    await wait_for(first_indexed, timeout=60)

    # Sink down: the indexer backs off and acks nothing; nothing is lost.
    meili.set_down(True)
    second = [site.url(f"/page/{n}") for n in range(100, 110)]
    cli_json(settings, "publish", str(write_urls(tmp_path / "b.txt", second)))

    async def held() -> bool:
        st = await get_status(settings)
        workers, indexer = st["consumers"]["workers"], st["consumers"]["indexer"]
        return bool(workers["pending"] == 0 and indexer["ack_pending"] + indexer["pending"] == 10)

    await wait_for(held, timeout=60)
    assert len(meili.documents("pages")) == 20
    meili.set_down(False)

    async def all_indexed() -> bool:
        return len(meili.documents("pages")) == 30 and await drained(settings)

    await wait_for(all_indexed, timeout=60)
    assert (await get_status(settings))["dead_letters"] == 0

    hits = cli_json(settings, "search", "unique105")
    assert hits[0]["url"] == site.url("/page/105")
    assert hits[0]["title"] == "Page 105"


def test_wrong_meili_key_is_a_clear_error(meili_settings: Settings) -> None:
    out = cli(meili_settings, "search", "x", env={"FLEET_MEILI_API_KEY": "wrong"})
    assert out.returncode == 2
    assert "FLEET_MEILI_API_KEY" in out.stderr and "wrong" not in out.stderr
