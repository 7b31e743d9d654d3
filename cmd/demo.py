#!/usr/bin/env python3
"""`make demo`: serve the bundled sample site on loopback, `fleet run` it, then search it.

Everything runs on this machine: a private nats-server (started by `fleet run`), the
SQLite sink in ./demo.db, and the sample site on 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from importlib.resources import files
from pathlib import Path

QUERIES = ("bowline knot", "mayday", "anchor scope", "fog")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the sample site without an access log line per request."""

    def log_message(self, format: str, *args: object) -> None:
        """Drop the line: it would interleave with the output of `fleet run`."""


def main() -> int:
    """Serve the site, `fleet run` it, then search; the exit code of a failed run, else 0."""
    site_dir = Path(str(files("fleet") / "sample_site"))
    handler = functools.partial(QuietHandler, directory=str(site_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = str(server.server_address[0]), int(server.server_address[1])
    base = f"http://{host}:{port}"
    db = Path("demo.db").resolve()
    for leftover in (db, db.with_suffix(".db-wal"), db.with_suffix(".db-shm")):
        leftover.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    # The sample site is on loopback, which the SSRF guard refuses unless allow-listed.
    # It is our own site: no per-host limits for it (its robots.txt is still obeyed).
    env.update(
        FLEET_ALLOW_HOSTS=f"{host}:{port}",
        FLEET_SINK=f"sqlite:///{db}",
        FLEET_HOST_RULES=f"{host}:{port} concurrency=0 delay_s=0",
    )
    fleet = [sys.executable, "-m", "fleet"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            urls = Path(tmp) / "urls.txt"
            template = (site_dir / "urls.txt").read_text()
            urls.write_text(template.replace("{base}", base))
            print(f"== fleet run ({base}, sink {db.name})", flush=True)
            run = subprocess.run([*fleet, "run", str(urls), "--workers", "2"], env=env, check=False)
            if run.returncode != 0:
                return run.returncode
        print("(the list has one broken link on purpose: it ends dead-lettered, not lost;")
        print(" and one page its robots.txt disallows: it ends skipped, see `fleet skipped`)")
        for query in QUERIES:
            print(f"\n== fleet search {query!r}", flush=True)
            subprocess.run([*fleet, "search", query, "--limit", "3"], env=env, check=True)
    finally:
        server.shutdown()
    print(f"\nDone. Search again with: FLEET_SINK=sqlite:///{db} .venv/bin/fleet search 'reefing'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
