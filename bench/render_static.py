"""What ``--render auto`` costs on a static site: ``fleet run`` with FLEET_RENDER=never and
=auto, alternated in one run, on real documentation pages (``bench.render`` runs it).

The corpus is Debian's python3-doc (/usr/share/doc/python3-dev/html, 530 pages of Sphinx
HTML: scripts on every page, a few short index pages that look script-heavy, a search page
whose <noscript> asks for JavaScript), each page listed ``copies`` times (``?copy=N``: a
distinct URL, the same file) and served by nginx on loopback. ``fleet run --workers 2``
with Playwright installed and Debian's Chromium: in ``auto`` the browser starts only when a
page needs it (the search page; the domain's ``render_samples`` samples). Reported: pages/s
(fleet's own steady figure), CPU per page of fleet's process tree, pages rendered (the
sink's ``via``), and the ratio auto / never (target ≥ 90 %).

A second corpus, ``generated`` (``bench.site``: the pages of ``make bench``, 2,000 by
default), has no page that needs or may need rendering: there ``auto`` must never start a
browser, and its cost is only the page assessment.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
from pathlib import Path
from typing import Any

from bench.run import SiteServer, ToolResult, log, run_fleet
from bench.site import generate_site

DOCS = Path("/usr/share/doc/python3-dev/html")
TARGET_STATIC_RATIO = 0.9
WORKERS = 2


def corpus_urls(port: int, copies: int) -> list[str]:
    """Every HTML page of the corpus, ``copies`` times (distinct URLs)."""
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.html"))
    return [f"http://127.0.0.1:{port}/{page}?copy={c}" for c in range(copies) for page in pages]


def rendered_rows(db: Path) -> int:
    """Pages the sink holds as rendered (``via = 'browser'``)."""
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM pages WHERE via = 'browser'").fetchone()[0])


def one_run(
    mode: str, urls_file: Path, pages: int, server: SiteServer, workdir: Path
) -> dict[str, Any]:
    """One ``fleet run`` with FLEET_RENDER=``mode`` (fleet's environment is this one's)."""
    os.environ["FLEET_RENDER"] = mode
    try:
        result: ToolResult = run_fleet(urls_file, pages, server, workdir, WORKERS, timeout_s=900)
    finally:
        os.environ.pop("FLEET_RENDER", None)
    if not result.ok:
        raise RuntimeError(f"fleet run --render {mode} failed: {result.error}")
    rate = result.steady_pages_per_s or result.wall_pages_per_s
    return {
        "mode": mode,
        "pages": result.pages_done,
        "pages_per_s": rate,
        "wall_s": result.wall_s,
        "cpu_ms_per_page": result.cpu_s * 1000 / max(1, result.pages_done),
        "peak_rss_mb": result.peak_rss_bytes / 2**20,
        "rendered": rendered_rows(workdir / "bench.db"),
        "warnings": result.warnings,
    }


def compare(
    workdir: Path, copies: int, rounds: int, corpus: str = "docs", pages: int = 2000
) -> dict[str, Any]:
    """never, auto, never, auto … (``rounds`` of each), then the medians and their ratio.
    ``corpus``: ``docs`` (python3-doc, ``copies`` times) or ``generated`` (``pages``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    root = DOCS
    if corpus == "generated":
        site = generate_site(workdir / "site", pages)
        root = site.root
    with SiteServer(root, workdir, "nginx") as server:
        if corpus == "generated":
            urls = [f"http://127.0.0.1:{server.port}{p}" for p in site.paths]
        else:
            urls = corpus_urls(server.port, copies)
        urls_file = workdir / "urls.txt"
        urls_file.write_text("".join(u + "\n" for u in urls))
        runs: list[dict[str, Any]] = []
        for _ in range(rounds):
            for mode in ("never", "auto"):
                log(f"{corpus} corpus: fleet run --render {mode}, {len(urls)} pages, 2 workers")
                run = one_run(mode, urls_file, len(urls), server, workdir)
                log(
                    f"  {run['pages_per_s']:.0f} pages/s, {run['cpu_ms_per_page']:.2f} CPU "
                    f"ms/page, {run['rendered']} rendered"
                )
                runs.append(run)

    def median(mode: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs if r["mode"] == mode))

    never, auto = median("never", "pages_per_s"), median("auto", "pages_per_s")
    return {
        "corpus": str(DOCS) if corpus == "docs" else f"bench.site ({len(urls)} generated pages)",
        "pages": len(urls),
        "workers": WORKERS,
        "runs": runs,
        "never_pages_per_s": never,
        "auto_pages_per_s": auto,
        "ratio": auto / never if never else 0.0,
        "cpu_ratio": median("auto", "cpu_ms_per_page") / median("never", "cpu_ms_per_page"),
        "auto_rendered": max(r["rendered"] for r in runs if r["mode"] == "auto"),
    }


def report_lines(s: dict[str, Any]) -> list[str]:
    """The static-corpus part of ``bench.render``'s table."""
    verdict = "PASS" if s["ratio"] >= TARGET_STATIC_RATIO else "MISS"
    lines = [
        f"static corpus ({s['pages']} URLs of {s['corpus']}, nginx, fleet run, "
        f"{s['workers']} workers):",
        f"  {'run':24} {'pages/s':>8} {'CPU ms/page':>12} {'rendered':>9} {'peak RSS MB':>12}",
    ]
    lines += [
        f"  {'FLEET_RENDER=' + r['mode']:24} {r['pages_per_s']:>8.0f} "
        f"{r['cpu_ms_per_page']:>12.2f} {r['rendered']:>9} {r['peak_rss_mb']:>12.0f}"
        for r in s["runs"]
    ]
    lines.append(
        f"  auto / never (medians): {s['ratio']:.0%} of never's pages/s (target ≥ "
        f"{TARGET_STATIC_RATIO:.0%}: {verdict}); CPU per page {s['cpu_ratio']:.2f}x"
    )
    return lines
