"""The direction of imports inside fleet/, checked by reading every module's imports.

Imports inside functions and under ``TYPE_CHECKING`` count too: a rule that holds only at
start-up would still let the wrong concern leak in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fleet"
GROUND_FLOOR = {"fleet.settings", "fleet.messages", "fleet.errors", "fleet.urls"}
ROLES = {
    "fleet.publisher",
    "fleet.worker",
    "fleet.indexer",
    "fleet.runner",
    "fleet.supervisor",
    "fleet.admin",
    "fleet.backup",
    "fleet.check",
    "fleet.disposition",
    "fleet.crawl",
    "fleet.sweep",
    "fleet.cli",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every fleet module ``path`` imports (``from fleet import x`` counts as fleet.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fleet"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fleet":
                found.update(f"fleet.{a.name}" for a in node.names)
            elif node.module.startswith("fleet."):
                found.add(node.module)
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(importers: str, forbidden: str) -> list[str]:
    return [
        f"{mod} imports {imp}"
        for mod, imps in MODULES.items()
        if within(mod, importers)
        for imp in sorted(imps)
        if within(imp, forbidden)
    ]


def test_the_modules_were_found() -> None:
    found = {"fleet.cli", "fleet.nats.session", "fleet.scrape.fetch", "fleet.sinks.sqlite"}
    packages = {"fleet.cli.common", "fleet.crawl", "fleet.crawl.work", "fleet.telemetry.spans"}
    assert found | packages <= set(MODULES)


def test_nothing_imports_the_cli() -> None:
    # Its own modules import each other; outside the package only the entry point may.
    bad = [
        f"{mod} imports {imp}"
        for mod, imps in MODULES.items()
        if not within(mod, "fleet.cli") and mod != "fleet.__main__"
        for imp in sorted(imps)
        if within(imp, "fleet.cli")
    ]
    assert bad == []


@pytest.mark.parametrize("module", sorted(GROUND_FLOOR))
def test_the_ground_floor_imports_only_the_ground_floor(module: str) -> None:
    assert MODULES[module] <= GROUND_FLOOR, MODULES[module] - GROUND_FLOOR


@pytest.mark.parametrize("package", ["fleet.sinks", "fleet.scrape"])
def test_sinks_and_scraping_know_nothing_of_nats(package: str) -> None:
    assert offenders(package, "fleet.nats") == []


@pytest.mark.parametrize("package", ["fleet.supervisor", "fleet.scaling"])
def test_the_supervisor_never_imports_scraping(package: str) -> None:
    assert offenders(package, "fleet.scrape") == []


def test_telemetry_imports_no_role() -> None:
    bad = [
        f"{mod} imports {imp}"
        for mod, imps in MODULES.items()
        if within(mod, "fleet.telemetry")
        for imp in sorted(imps)
        if not (within(imp, "fleet.telemetry") or imp in GROUND_FLOOR)
    ]
    assert bad == []


def test_roles_are_not_imported_by_the_lower_floors() -> None:
    lower = ("fleet.nats", "fleet.scrape", "fleet.sinks", "fleet.telemetry", "fleet.scaling")
    bad = [
        f"{mod} imports {imp}"
        for mod, imps in MODULES.items()
        if any(within(mod, p) for p in lower)
        for imp in sorted(imps)
        if any(within(imp, role) for role in ROLES)  # a role package's modules too (crawl, cli)
    ]
    assert bad == []
