"""`fleet backup DIR` and `fleet restore DIR`: a sink copied into a directory, and back.

A backup directory holds the files the sink wrote (``fleet.db`` for SQLite;
``documents.jsonl``, and the dump when it is reachable, for Meilisearch) and
``manifest.json``: fleet version, sink kind, time, pages, and every file's size and SHA-256.
The manifest is written last, so a directory without one is an unfinished backup.

A restore checks the manifest and every checksum before it writes anything, refuses a target
that already holds pages unless forced, and lets the sink check itself afterwards (SQLite's
integrity checks; for Meilisearch, every id of the backup present).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from fleet import __version__
from fleet.errors import BackupInvalid, ConfigError, RestoreTargetNotEmpty
from fleet.sinks.base import Backupable, Sink, SinkBackup

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackupFile:
    """One file of a backup: its name inside the directory, size and SHA-256 (hex)."""

    name: str
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """``manifest.json`` of a backup directory."""

    format: int
    fleet_version: str
    sink_kind: str
    created_at: str
    pages: int
    files: list[BackupFile]
    details: dict[str, Any]

    def sink_backup(self) -> SinkBackup:
        """The sink's part, as handed to ``Backupable.restore``."""
        return SinkBackup(
            kind=self.sink_kind,
            pages=self.pages,
            files=tuple(f.name for f in self.files),
            details=dict(self.details),
        )

    def as_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON values (for ``--json``)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RestoreReport:
    """What `fleet restore` did: the backup's manifest and the pages the sink holds now."""

    manifest: Manifest
    pages: int
    replaced: int

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "pages": self.pages,
            "replaced": self.replaced,
            "sink_kind": self.manifest.sink_kind,
            "backup_created_at": self.manifest.created_at,
            "backup_pages": self.manifest.pages,
        }


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def backup(
    sink: Sink, directory: Path, *, now: Callable[[], datetime] = _utc_now
) -> Manifest:
    """Back ``sink`` up into ``directory`` (created; must be empty) and write the manifest.

    Safe while indexers write. On failure the files written so far are removed. Raises
    ``ConfigError`` for a directory that cannot be used or a sink that cannot be backed up,
    ``SinkUnavailable`` when the sink fails.
    """
    store = _backupable(sink)
    await store.open(readonly=True)
    created = _prepare_directory(directory)
    try:
        part = await store.backup(directory)
        files = [await asyncio.to_thread(_file_entry, directory, name) for name in part.files]
        manifest = Manifest(
            format=MANIFEST_FORMAT,
            fleet_version=__version__,
            sink_kind=part.kind,
            created_at=now().astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            pages=part.pages,
            files=files,
            details=part.details,
        )
        await asyncio.to_thread(_write_manifest, directory, manifest)
    except BaseException:
        _remove_partial(directory, created)
        raise
    return manifest


async def restore(
    sink: Sink, directory: Path, *, target: str, force: bool = False
) -> RestoreReport:
    """Restore the backup in ``directory`` into ``sink`` (named ``target`` in messages).

    Checks the manifest, the sink kind and every checksum first. A sink that already holds
    pages is refused (``RestoreTargetNotEmpty``) unless ``force``, which replaces them.
    Raises ``BackupInvalid`` for a directory fleet cannot restore from, ``RestoreFailed``
    when the restored sink fails its check.
    """
    store = _backupable(sink)
    manifest = read_manifest(directory)
    if manifest.sink_kind != store.kind:
        raise BackupInvalid(
            f"{directory} holds a backup of a {manifest.sink_kind} sink, and {target} is "
            f"{store.kind}; restore it into a {manifest.sink_kind} sink (--sink)",
            directory=str(directory),
        )
    await asyncio.to_thread(verify_files, directory, manifest)
    await store.open()
    held = await store.count()
    if held and not force:
        raise RestoreTargetNotEmpty(target, held)
    pages = await store.restore(directory, manifest.sink_backup())
    return RestoreReport(manifest=manifest, pages=pages, replaced=held)


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the backup in ``directory``; ``BackupInvalid`` if it is missing or bad."""
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise BackupInvalid(
            f"no backup directory {directory}; give the DIR that `fleet backup` wrote",
            directory=str(directory),
        )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BackupInvalid(
            f"{directory} has no {MANIFEST_NAME}: not a fleet backup, or one that did not "
            "finish; use a complete backup",
            directory=str(directory),
        ) from None
    except OSError as exc:
        raise BackupInvalid(f"cannot read {path}: {exc}", directory=str(directory)) from None
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
    except msgspec.DecodeError as exc:
        raise BackupInvalid(
            f"{path} is not a fleet backup manifest ({exc}); use a complete backup",
            directory=str(directory),
        ) from None
    if manifest.format != MANIFEST_FORMAT:
        raise BackupInvalid(
            f"{path} has manifest format {manifest.format}, this fleet reads "
            f"{MANIFEST_FORMAT}; restore it with the fleet version that made it "
            f"({manifest.fleet_version})",
            directory=str(directory),
        )
    for entry in manifest.files:
        # A manifest names files inside its directory, never a path elsewhere.
        if Path(entry.name).name != entry.name or entry.name in ("", ".", "..", MANIFEST_NAME):
            raise BackupInvalid(
                f"{path} names a file outside the backup ({entry.name!r}); the manifest is damaged",
                directory=str(directory),
            )
    return manifest


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check every file of the manifest is there with its size and SHA-256."""
    for entry in manifest.files:
        path = directory / entry.name
        try:
            size, digest = _digest(path)
        except FileNotFoundError:
            raise BackupInvalid(
                f"{path} is missing from the backup; the backup is incomplete",
                directory=str(directory),
            ) from None
        if size != entry.bytes or digest != entry.sha256:
            raise BackupInvalid(
                f"{path} does not match its checksum in {MANIFEST_NAME} (sha256 {digest}, "
                f"{size} bytes; expected {entry.sha256}, {entry.bytes} bytes); the file is "
                "damaged, use another backup",
                directory=str(directory),
            )


def _backupable(sink: Sink) -> Backupable:
    if not isinstance(sink, Backupable):
        raise ConfigError(f"{sink!r} cannot be backed up; use a SQLite or Meilisearch sink")
    return sink


def _prepare_directory(directory: Path) -> bool:
    """Create ``directory`` or check it is empty; True when this call created it."""
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"{directory} is not a directory; give a new directory to back up to")
        if any(directory.iterdir()):
            raise ConfigError(
                f"{directory} is not empty; give a new (or empty) directory for each backup"
            )
        return False
    try:
        directory.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the backup directory {directory}: {exc}") from None
    return True


def _remove_partial(directory: Path, created: bool) -> None:
    """Leave no half backup behind: remove what this backup wrote."""
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir() if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _file_entry(directory: Path, name: str) -> BackupFile:
    path = directory / name
    _fsync(path)
    size, digest = _digest(path)
    return BackupFile(name=name, bytes=size, sha256=digest)


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest atomically and durably: it is what makes the backup complete."""
    partial = directory / (MANIFEST_NAME + ".partial")
    partial.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    _fsync(partial)
    partial.replace(directory / MANIFEST_NAME)
    _fsync(directory)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
