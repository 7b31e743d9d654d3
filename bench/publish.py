"""`fleet publish` throughput: ``python -m bench.publish`` (also part of ``make bench``).

Publishes a file of distinct URLs (--urls, default 200,000; a few repeated lines and a few
invalid ones among them, so dedup and validation are on the path) with ``fleet publish FILE
--json`` into a private nats-server, then publishes the same file again (every URL a
duplicate by JetStream's dedup window). Figures, for the first publish:

* URLs/s end to end (the command's wall time, interpreter start-up included) and without
  start-up (wall time minus that of publishing an empty file);
* CPU per URL of the command and of nats-server;
* that the counts are exact: published + duplicates + invalid = lines, and the second
  publish reports every URL as a duplicate.

Target: >= 25,000 URLs/s (without start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import psutil

from bench.run import ProcessRun, log, run_measured
from fleet.nats.server import EmbeddedNats

DEFAULT_URLS = 200_000
TARGET_URLS_PER_S = 25_000.0
REPEATS_EVERY = 1000  # every 1000th line repeats an earlier URL
INVALID_EVERY = 5000  # every 5000th line is not a URL


def write_urls(path: Path, count: int) -> tuple[int, int, int]:
    """``count`` distinct URLs plus repeats and invalid lines; (lines, distinct, invalid)."""
    lines: list[str] = []
    invalid = 0
    for i in range(count):
        lines.append(f"https://site{i % 97}.example.com/docs/{i // 97}/page-{i}.html?v={i % 7}")
        if i and i % REPEATS_EVERY == 0:
            lines.append(lines[-REPEATS_EVERY // 2])
        if i and i % INVALID_EVERY == 0:
            lines.append(f"ftp://nope.example.com/{i}")
            invalid += 1
    path.write_text("\n".join(lines) + "\n")
    return len(lines), count, invalid


def _publish(
    urls: Path, nats: EmbeddedNats, workdir: Path, name: str
) -> tuple[ProcessRun, dict[str, Any]]:
    env = dict(os.environ, FLEET_NATS_URL=nats.url)
    command = [sys.executable, "-m", "fleet", "publish", str(urls), "--json"]
    run = run_measured(command, env=env, workdir=workdir, name=name, timeout_s=600)
    counts: dict[str, Any] = {}
    for line in reversed(run.stdout_path.read_text().splitlines()):
        if line.startswith("{"):
            counts = json.loads(line)
            break
    return run, counts


def run_publish(workdir: Path, urls: int = DEFAULT_URLS) -> dict[str, Any]:
    """Empty publish, first publish, same again; the figures as a dict."""
    urls_file = workdir / "publish-urls.txt"
    lines, distinct, invalid = write_urls(urls_file, urls)
    empty = workdir / "publish-empty.txt"
    empty.write_text("")
    nats = EmbeddedNats().start()
    try:
        server = psutil.Process(nats.pid) if nats.pid else None

        def server_cpu() -> float:
            return sum(server.cpu_times()[:2]) if server is not None else 0.0

        log(f"fleet publish: empty file (start-up), then {lines} lines twice")
        start_up, _ = _publish(empty, nats, workdir, "publish-empty")
        before = server_cpu()
        first, counts = _publish(urls_file, nats, workdir, "publish-1")
        nats_cpu = server_cpu() - before
        again, counts_again = _publish(urls_file, nats, workdir, "publish-2")
    finally:
        nats.close()
    steady_s = max(first.wall_s - start_up.wall_s, 1e-9)
    exact = (
        first.exit_code in (0, 2)  # 2: some lines were invalid (as intended)
        and counts.get("published") == distinct
        and counts.get("invalid") == invalid
        and counts.get("published", 0) + counts.get("duplicates", 0) + counts.get("invalid", 0)
        == lines
        and counts_again.get("published") == 0
        and counts_again.get("duplicates") == lines - invalid
    )
    return {
        "lines": lines,
        "distinct": distinct,
        "invalid_lines": invalid,
        "counts": counts,
        "counts_again": counts_again,
        "exact": exact,
        "wall_s": first.wall_s,
        "start_up_s": start_up.wall_s,
        "urls_per_s": distinct / first.wall_s,
        "urls_per_s_steady": distinct / steady_s,
        "cpu_us_per_url": 1e6 * first.tree.cpu_seconds / distinct,
        "nats_cpu_us_per_url": 1e6 * nats_cpu / distinct,
        "again_urls_per_s": lines / again.wall_s,
        "target_urls_per_s": TARGET_URLS_PER_S,
        "status": "PASS" if exact and distinct / steady_s >= TARGET_URLS_PER_S else "MISS",
    }


def render(report: dict[str, Any]) -> str:
    """The figures as the text `make bench` prints."""
    return (
        f"\nfleet publish: {report['lines']} lines ({report['distinct']} distinct URLs, "
        f"{report['invalid_lines']} invalid), private nats-server\n"
        f"  URLs/s end to end (incl. {report['start_up_s']:.2f} s start-up):  "
        f"{report['urls_per_s']:,.0f}\n"
        f"  URLs/s without start-up:                  {report['urls_per_s_steady']:,.0f}\n"
        f"  CPU per URL: fleet publish {report['cpu_us_per_url']:.1f} us, "
        f"nats-server {report['nats_cpu_us_per_url']:.1f} us\n"
        f"  counts {report['counts']}, again {report['counts_again']}: "
        f"{'exact' if report['exact'] else 'NOT EXACT'}\n"
        f"  {report['status']:<5} fleet publish >= {report['target_urls_per_s']:,.0f} URLs/s "
        f"(without start-up, counts exact)\n"
    )


def main(argv: Sequence[str] | None = None, stdout: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish", description=__doc__)
    parser.add_argument("--urls", type=int, default=DEFAULT_URLS, help="distinct URLs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-publish-") as tmp:
        report = run_publish(Path(tmp), args.urls)
    stdout.write(json.dumps(report, indent=2) + "\n" if args.json else render(report))
    return 0 if report["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
