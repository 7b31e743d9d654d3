"""The supervisor with its local backend: real nats-server, real `fleet worker` and
`fleet indexer` processes, a slow loopback site. A burst of 2,000 URLs scales the workers
to max within two intervals; once drained they go back to min within the cooldown plus
two intervals; every URL is indexed exactly once across the scale-down."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleet.nats.server import EmbeddedNats
from fleet.scaling.local import LocalBackend
from fleet.settings import Settings
from fleet.supervisor import ConsumerMissing, JetStreamLag, Policy, Supervisor
from tests.conftest import Roles, fleet_cli, wait_for
from tests.pipeline_helpers import cli, get_status, indexed_urls
from tests.scaling_helpers import BURST, burst_scenario, free_port, publish
from tests.site import LoopbackSite


def scenario_settings(settings: Settings) -> Settings:
    return settings.replace(
        render="never",  # plain HTTP workers: no Chromium to start
        worker_concurrency=8,
        supervisor_min=1,
        supervisor_max=4,
        supervisor_target_lag=250,
        supervisor_max_step=4,
        supervisor_cooldown_s=4.0,
        supervisor_interval_s=1.0,
        supervisor_stop_grace_s=15.0,
        drain_timeout_s=8.0,
        ack_wait_s=10.0,
    )


@pytest.mark.timeout(180)
async def test_local_backend_burst_to_max_then_back_to_min(
    settings: Settings, site: LoopbackSite
) -> None:
    settings = scenario_settings(settings)
    roles = Roles(settings)
    roles.start("indexer")
    backend = LocalBackend(roles.env, stop_grace_s=settings.supervisor_stop_grace_s)
    policy = Policy.from_settings(settings)
    urls = [site.url(f"/slow/{n}?s=0.2") for n in range(BURST)]
    try:
        run = await burst_scenario(
            settings, backend, policy, urls, interval_s=settings.supervisor_interval_s
        )
        stats = await backend.get_worker_stats()
        assert len(stats) == policy.min_replicas
        assert all(s.state == "running" and s.memory_bytes for s in stats)

        async def all_indexed() -> bool:
            return len(indexed_urls(settings)) == BURST

        await wait_for(all_indexed, timeout=30)
    finally:
        await backend.close()
        roles.stop_all()
    run.assert_promised(settings, "local")
    assert backend.crashed == []
    # Exactly once: every URL is in the index once, nothing dead-lettered or left over.
    counts = indexed_urls(settings)
    assert sorted(counts) == sorted(urls)
    assert set(counts.values()) == {1}
    status = await get_status(settings)
    assert status["dead_letters"] == 0
    assert status["streams"]["urls"]["messages"] == 0
    assert status["streams"]["results"]["messages"] == BURST  # no result written twice


async def test_lag_source_counts_pending_and_unacked(settings: Settings) -> None:
    source = JetStreamLag(settings)
    try:
        # No consumer yet: the lag is unknown (the supervisor holds), never 0.
        with pytest.raises(ConsumerMissing, match="consumer workers on stream FLEET_URLS"):
            await source.lag()
        await publish(settings, [f"http://example.test/{n}" for n in range(7)])
        assert await source.lag() == 7
    finally:
        await source.close()
    down = JetStreamLag(settings.replace(nats_url="nats://127.0.0.1:1"))
    with pytest.raises(Exception, match="cannot reach NATS"):
        await down.lag()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.timeout(120)
def test_cli_supervisor_local_backend_health_check_and_sigterm(settings: Settings) -> None:
    port = free_port()
    settings = settings.replace(render="never", supervisor_port=port)
    env = {**os.environ, **settings.to_env()}
    proc = subprocess.Popen(
        [*fleet_cli(), "supervisor", "--backend", "local", "--min", "2", "--interval-s", "0.5"],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                status, body = _get(f"http://127.0.0.1:{port}/health")
                if status == 200 and body["last_decision"]["current"] == 2:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "supervisor not healthy"
            time.sleep(0.2)
        assert body["dependencies"]["nats"]["ok"] and body["dependencies"]["local"]["ok"]
        assert body["policy"]["min_replicas"] == 2
        status, workers = _get(f"http://127.0.0.1:{port}/workers")
        assert status == 200 and len(workers) == 2
        assert all(w["state"] == "running" for w in workers)
        pids = [int(w["id"]) for w in workers]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert "fleet_supervisor_replicas_actual 2.0" in metrics
        assert 'fleet_supervisor_scale_events_total{direction="up"} 1.0' in metrics
        check = cli(settings, "check", "supervisor", timeout=30)
        assert check.returncode == 0, check.stderr
        assert check.stdout.startswith("ok: supervisor: ")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        # A fresh server has no consumer yet: the lag is unknown, so the supervisor holds
        # (alert raised) but still brings the fleet up to min, whose workers create it.
        assert "ALERT consumer_missing" in err
        assert "direction=up" in err and "reason='below min 2; lag unknown" in err
        for pid in pids:  # its workers were stopped with it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            assert not _alive(pid), pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Nothing listening any more: the check fails and says why.
    check = cli(settings, "check", "supervisor", timeout=30)
    assert check.returncode == 1
    assert "unhealthy: supervisor: no answer from" in check.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_fleet_run_autoscale(site: LoopbackSite, tmp_path: Path) -> None:
    urls = [site.url(f"/slow/{n}?s=0.2") for n in range(300)]
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(urls) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        FLEET_ALLOW_HOSTS=site.hostport,
        FLEET_SINK=f"sqlite:///{tmp_path / 'run.db'}",
        FLEET_RENDER="never",
        FLEET_WORKER_CONCURRENCY="8",
        FLEET_SUPERVISOR_TARGET_LAG="50",
        FLEET_SUPERVISOR_INTERVAL_S="0.5",
        FLEET_HOST_CONCURRENCY="0",  # one loopback host: no per-host limits
        FLEET_HOST_DELAY_S="0",
    )
    out = subprocess.run(
        [*fleet_cli(), "run", str(path), "--autoscale", "--workers", "3", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["published"] == 300 and summary["indexed"] == 300
    assert summary["dead_lettered"] == 0
    # --workers is the most workers: the policy asked for more (300 / 50) but ran 3. The
    # first tick may come before or after the publish (from 0, or from min 1).
    assert re.search(r"wanted=3 desired=3 direction=up", out.stderr), out.stderr
    assert not re.search(r"desired=[4-9]", out.stderr), out.stderr


@pytest.mark.timeout(60)
async def test_nats_outage_is_reported_and_survived(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    policy = Policy(min_replicas=0, max_replicas=2, target_lag=100, cooldown_s=1)
    lag = JetStreamLag(settings, timeout_s=1.0)
    sup = Supervisor(policy, lag, LocalBackend({}, stop_grace_s=5), interval_s=0.2)
    try:
        assert await sup.step() is not None
        assert sup.health()[0]
        nats_server.stop()
        assert await sup.step() is None  # no exception: the tick is skipped
        ok, body = sup.health()
        assert not ok and body["dependencies"]["nats"]["ok"] is False
        assert body["dependencies"]["nats"]["error"]
        nats_server.start()  # same port and store: the client reconnects

        async def recovered() -> bool:
            return await sup.step() is not None

        await wait_for(recovered, timeout=20, interval=0.2)
        assert sup.health()[0]
        text = sup.metrics.render()[0].decode()
        assert 'fleet_supervisor_errors_total{dependency="nats"} 0.0' not in text
    finally:
        await lag.close()
