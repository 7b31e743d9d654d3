"""Docker helpers shared by the container tests (compose, images, supervisor backends).

Images come from `make ci-images` (run by .ci/run before the tests; built here if missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGES = (
    "fleet:local",
    "fleet-browser:local",
    "fleet-dev:local",
    "fleet-ci-nats:local",
    "fleet-ci-fakes:local",
)
DOCKER = os.environ.get("FLEET_TEST_DOCKER", "docker")


def run(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    """A command's completed process (output captured as text, never raising on failure)."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def docker_available() -> bool:
    if shutil.which(DOCKER) is None:
        return False
    try:
        return (
            run(DOCKER, "info", timeout=30).returncode == 0
            and run(DOCKER, "compose", "version", timeout=30).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_images() -> None:
    missing = [i for i in IMAGES if run(DOCKER, "image", "inspect", i).returncode != 0]
    if not missing:
        return
    base = os.environ.get("BASE_IMAGE") or (
        "fleet-base:local" if shutil.which("mmdebstrap") else "python:3.12-slim-bookworm"
    )
    build_docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else DOCKER
    proc = run(
        "make", "ci-images", f"DOCKER={build_docker}", f"BASE_IMAGE={base}", cwd=ROOT, timeout=1800
    )
    assert proc.returncode == 0, f"make ci-images failed:\n{proc.stdout[-3000:]}\n{proc.stderr}"
