"""Operator views: `fleet status`, `fleet dlq list|replay` and `fleet skipped list`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, StreamInfo
from nats.js.errors import NotFoundError

from fleet.messages import DeadLetter, Skipped, dead_letter_decoder, skipped_decoder
from fleet.nats.kv import learned_domains
from fleet.nats.streams import INDEXER_CONSUMER, WORKERS_CONSUMER, require_jetstream
from fleet.settings import Settings

log = logging.getLogger(__name__)


def _consumer_view(info: ConsumerInfo) -> dict[str, int]:
    return {
        "pending": info.num_pending or 0,
        "ack_pending": info.num_ack_pending or 0,
        "redelivered": info.num_redelivered or 0,
        "waiting": info.num_waiting or 0,
        "delivered": (info.delivered.stream_seq or 0) if info.delivered else 0,
    }


def _stream_view(info: StreamInfo) -> dict[str, int]:
    return {
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "first_seq": info.state.first_seq,
        "last_seq": info.state.last_seq,
    }


async def dead_letter_counts(js: JetStreamContext, settings: Settings) -> dict[str, int]:
    """Dead letters held, by stage (worker, indexer)."""
    info = await js.stream_info(settings.dlq_stream, subjects_filter=f"{settings.dlq_subject}.>")
    subjects = info.state.subjects or {}
    prefix = settings.dlq_subject + "."
    return {subject.removeprefix(prefix): count for subject, count in subjects.items()}


async def skipped_counts(js: JetStreamContext, settings: Settings) -> dict[str, int]:
    """URLs skipped on purpose, by reason (scope, cancelled...); empty without the stream."""
    try:
        info = await js.stream_info(
            settings.skipped_stream, subjects_filter=f"{settings.skipped_subject}.>"
        )
    except NotFoundError:
        return {}
    subjects = info.state.subjects or {}
    prefix = settings.skipped_subject + "."
    return {subject.removeprefix(prefix): count for subject, count in subjects.items()}


async def deferred_count(js: JetStreamContext, settings: Settings) -> int:
    """URLs handed back to the stream for politeness, due later (scheduled messages)."""
    try:
        info = await js.stream_info(
            settings.urls_stream, subjects_filter=f"{settings.deferred_subject}.>"
        )
    except NotFoundError:
        return 0
    return sum((info.state.subjects or {}).values())


async def status(js: JetStreamContext, settings: Settings) -> dict[str, Any]:
    """Stream sizes, consumer backlogs, dead letters and learned render decisions (`fleet status`).

    A stream or consumer not created yet shows as ``{}``; raises ``ConfigError`` when the
    server has no JetStream.
    """
    await require_jetstream(js, settings)
    streams = {}
    for key, name in (
        ("urls", settings.urls_stream),
        ("results", settings.results_stream),
        ("dlq", settings.dlq_stream),
    ):
        try:
            streams[key] = _stream_view(await js.stream_info(name))
        except NotFoundError:
            streams[key] = {}
    consumers: dict[str, dict[str, int]] = {}
    for key, stream, durable in (
        ("workers", settings.urls_stream, WORKERS_CONSUMER),
        ("indexer", settings.results_stream, INDEXER_CONSUMER),
    ):
        try:
            consumers[key] = _consumer_view(await js.consumer_info(stream, durable))
        except NotFoundError:
            consumers[key] = {}
    by_stage = await dead_letter_counts(js, settings) if streams["dlq"] else {}
    return {
        "consumers": consumers,
        "dead_letters": sum(by_stage.values()),
        "dead_letters_by_stage": by_stage,
        "skipped": await skipped_counts(js, settings),
        "deferred": await deferred_count(js, settings) if streams["urls"] else 0,
        "render_domains": [
            {
                "domain": d.domain,
                "needs_render": d.needs_render,
                "samples": d.samples,
                "http_chars": d.http_chars,
                "rendered_chars": d.rendered_chars,
                "decided_at": d.decided_at,
            }
            for d in await learned_domains(js, settings)
        ],
        "streams": streams,
    }


@dataclasses.dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter and its sequence in the DLQ stream (the handle to replay or delete it by)."""

    seq: int
    letter: DeadLetter

    def as_dict(self) -> dict[str, Any]:
        """The fields `fleet dlq list` shows; the payload and trace headers are left out."""
        letter = self.letter
        return {
            "seq": self.seq,
            "url": letter.url,
            "id": letter.id,
            "stage": letter.stage,
            "reason": letter.reason,
            "error": letter.error,
            "attempts": letter.attempts,
            "failed_at": letter.failed_at,
        }


async def list_dead_letters(
    js: JetStreamContext, settings: Settings, *, limit: int | None = None
) -> list[StoredDeadLetter]:
    """The dead letters in the DLQ stream, oldest first, at most ``limit`` of them.

    Undecodable ones are skipped with a warning. Reads one message per sequence number, so it
    is meant for an operator's look, not for a DLQ of millions.
    """
    info = await js.stream_info(settings.dlq_stream)
    out: list[StoredDeadLetter] = []
    for seq in _seqs(info.state.first_seq, info.state.last_seq):
        if limit is not None and len(out) >= limit:
            break
        try:
            raw = await js.get_msg(settings.dlq_stream, seq)
        except NotFoundError:
            continue  # deleted by a replay: sequences have gaps
        try:
            out.append(StoredDeadLetter(seq, dead_letter_decoder.decode(raw.data or b"")))
        except Exception as exc:
            log.warning("skipping undecodable dead letter #%d: %s", seq, exc)
    return out


@dataclasses.dataclass(frozen=True)
class StoredSkipped:
    """A skipped-URL record with its sequence in the skipped stream."""

    seq: int
    record: Skipped

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `fleet skipped list --json`."""
        r = self.record
        return {
            "seq": self.seq,
            "url": r.url,
            "id": r.id,
            "reason": r.reason,
            "detail": r.detail,
            "skipped_at": r.skipped_at,
            "source": r.source,
        }


async def list_skipped(
    js: JetStreamContext,
    settings: Settings,
    *,
    reason: str | None = None,
    limit: int | None = None,
) -> list[StoredSkipped]:
    """Skipped URLs with their reason, oldest first (``reason``: only those)."""
    try:
        info = await js.stream_info(settings.skipped_stream)
    except NotFoundError:
        return []
    out: list[StoredSkipped] = []
    for seq in _seqs(info.state.first_seq, info.state.last_seq):
        if limit is not None and len(out) >= limit:
            break
        try:
            raw = await js.get_msg(settings.skipped_stream, seq)
        except NotFoundError:
            continue  # aged out meanwhile
        try:
            record = skipped_decoder.decode(raw.data or b"")
        except Exception as exc:
            log.warning("skipping undecodable skipped record #%d: %s", seq, exc)
            continue
        if reason is None or record.reason == reason:
            out.append(StoredSkipped(seq, record))
    return out


def _seqs(first: int, last: int) -> Iterator[int]:
    if first == 0 or last < first:
        return iter(())
    return iter(range(first, last + 1))


async def replay_dead_letters(
    js: JetStreamContext, settings: Settings, *, reason: str | None = None
) -> int:
    """Re-publish dead letters to the stage they failed in, then delete them from the DLQ.

    The new message gets a fresh Nats-Msg-Id (a replay is a new attempt, not a duplicate);
    the dead letter is deleted only after the publish was acknowledged.
    """
    replayed = 0
    for stored in await list_dead_letters(js, settings):
        letter = stored.letter
        if reason is not None and letter.reason != reason:
            continue
        if letter.stage == "worker":
            subject, stream = settings.urls_subject, settings.urls_stream
        else:
            subject, stream = settings.results_subject, settings.results_stream
        await js.publish(
            subject,
            letter.payload,
            stream=stream,
            headers={**letter.trace_headers, "Nats-Msg-Id": f"{letter.id}-replay-{stored.seq}"},
        )
        await js.delete_msg(settings.dlq_stream, stored.seq)
        replayed += 1
    return replayed
