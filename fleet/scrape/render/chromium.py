"""Chromium as a process: which binary, its switches, and the process-tree tooling the
pool uses (memory of a browser's tree, finding its main process, killing it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

import psutil

from fleet.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable


# Debian's Chromium, in order of preference (see chromium_executable): the binaries
# themselves, not their /usr/bin wrappers (the headless shell's runs it as a child without
# exec, so a kill of the "browser" would hit the shell; the full browser's adds the flags of
# /etc/chromium.d). The wrapper only if the binary is not where Debian puts it.
DEBIAN_CHROMIUMS: Final = (
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/lib/chromium/chromium",
    "/usr/bin/chromium",
)


# Playwright's default --disable-features (playwright-core chromiumSwitches.ts, 1.65).
PLAYWRIGHT_DISABLED_FEATURES: Final = (
    *("AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose"),
    *("HttpsUpgrades", "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter"),
    *("PaintHolding", "ThirdPartyStoragePartitioning", "AvoidCorsURLLoaderRestartOnRedirect"),
    *("TcpPortRandomizationWin", "OptimizationHints", "NetworkTimeServiceQuerying"),
    *("AimEnabled", "PreconnectToSearch", "msForceBrowserSignIn"),
    "msEdgeUpdateLaunchServicesPreferredVersion",
)


FLEET_DISABLED_FEATURES: Final = (
    # A reused page would otherwise keep the previous documents alive for "back".
    "BackForwardCache",
    # Headless Chromium still builds the address bar's popups, two renderer processes per
    # browser context that nobody sees (~75 MB, and two process starts per context).
    "WebUIOmniboxPopup",
    "WebUIOmniboxAimPopup",
)


CHROMIUM_ARGS: Final = (
    "--no-sandbox",  # workers run unprivileged in containers without user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers' default 64 MB /dev/shm crashes tabs otherwise
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-extensions",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    # One switch for all: Chromium keeps only the last --disable-features, so this list
    # carries Playwright's own (tests/test_render_pool.py checks it still does).
    "--disable-features=" + ",".join((*PLAYWRIGHT_DISABLED_FEATURES, *FLEET_DISABLED_FEATURES)),
)


# The SSRF fence (with ``--proxy-server`` at the guarded proxy, see fleet.proxy): nothing
# bypasses the proxy, loopback included, and every host name resolves to "not found", so
# a connection the proxy does not make for the browser cannot happen. Only the proxy's own
# literal address is left to the browser's resolver (tested).
FENCE_ARGS: Final = (
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def chromium_executable(settings: Settings) -> str | None:
    """FLEET_CHROMIUM_PATH, else Debian's headless shell, else Debian's Chromium, else None
    (Playwright's own download).

    The headless shell (package chromium-headless-shell; what Playwright itself launches
    for headless) is Chromium without the browser's UI. The full browser makes each
    context a window with its own compositor and address-bar popups: with a context per
    page it renders ~25 % slower (measured, docs/benchmarks.md)."""
    if settings.chromium_path:
        return settings.chromium_path
    return next((path for path in DEBIAN_CHROMIUMS if Path(path).exists()), None)


def driver_node_options(settings: Settings, current: str) -> str:
    """NODE_OPTIONS (``current`` plus a cap) that limit the old space of Playwright's
    driver (node) to ``render_driver_heap_mb``: left alone its heap grows lazily by ~70 MB
    before its first major collection (docs/benchmarks.md).

    Playwright starts its driver with a copy of the process's environment and takes no
    environment of its own (playwright/_impl/_driver.py, ``get_driver_env``), so the
    process's NODE_OPTIONS is the only way in: `fleet worker` sets it at start-up, before
    its browser pool; nothing else in a worker runs node. Idempotent."""
    cap = f"--max-old-space-size={settings.render_driver_heap_mb}"
    if cap in current.split():
        return current
    return " ".join(filter(None, (current, cap)))


RENDER_FIX: Final = (
    "install the browser extra (pip install 'fleet[browser]'), use the fleet-browser image, "
    "set FLEET_CHROMIUM_PATH to a Chromium binary, or set FLEET_RENDER=never"
)


def process_tree_memory(pid: int, limit: int | None = None) -> int:
    """Memory of a process and all its descendants (Chromium's renderers, GPU, utility).

    PSS where the kernel offers it: Chromium's processes share most of their pages, and a
    plain sum of RSS counts those once per process (about twice the real figure). PSS costs
    a walk of every mapping, RSS is one read: with ``limit``, PSS is only computed when the
    RSS sum (never below PSS) is over it.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += int(proc.memory_info().rss)
    if limit is not None and rss <= limit:
        return rss
    pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            pss += int(getattr(info, "pss", info.rss))  # no PSS on this platform: RSS
    return pss


def is_browser_main(cmdline: list[str]) -> bool:
    """Whether ``cmdline`` is a Chromium main process Playwright started (not a renderer...)."""
    return any("--remote-debugging-pipe" in a for a in cmdline) and not any(
        a.startswith("--type=") for a in cmdline
    )


def new_browser_process(before: set[int]) -> psutil.Process | None:
    """The Chromium main process below this process that was not there ``before``: the
    innermost one, should FLEET_CHROMIUM_PATH be a wrapper script that does not exec."""
    found = [proc for pid, proc in children(is_browser_main).items() if pid not in before]
    parents: set[int] = set()
    for proc in found:
        with contextlib.suppress(psutil.Error):
            parents.add(proc.ppid())
    return next((proc for proc in found if proc.pid not in parents), None)


def is_playwright_driver(cmdline: list[str]) -> bool:
    """Whether ``cmdline`` is Playwright's driver (the node process run with ``run-driver``)."""
    return "run-driver" in cmdline


def children(match: Callable[[list[str]], bool]) -> dict[int, psutil.Process]:
    """Processes below this one whose command line ``match`` accepts, by PID."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if match(proc.cmdline()):
                    found[proc.pid] = proc
    return found


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie not yet reaped counts) or replaced by another under its PID."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def kill_tree(process: psutil.Process) -> None:
    """SIGKILL a browser and its children and wait for them (psutil checks the process is
    still the one we launched, so a reused PID is never hit)."""
    try:
        procs = [*process.children(recursive=True), process]
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=3)
