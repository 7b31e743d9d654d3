"""Publisher role: URL lines in, UrlTask messages on the URLs stream out.

Publishing is pipelined: up to ``window`` publishes are in flight; when the window is full
the older half is settled while the newer half is still on its way, so the server stores
one half while the publisher sends the next (no stop-and-wait per window). Every message carries
``Nats-Msg-Id`` = the URL's id, so JetStream drops a URL already published within the
dedup window (a re-run of the same file publishes nothing twice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from nats.js.api import PubAck

from fleet.errors import InvalidUrl, TransientError
from fleet.messages import UrlTask, url_task_encoder
from fleet.nats.streams import JsPublish
from fleet.settings import Settings
from fleet.urls import normalize_url, url_id

log = logging.getLogger(__name__)

# In-flight publishes; large enough to hide loopback/LAN latency, small enough to bound memory.
DEFAULT_WINDOW = 1024
PUBLISH_RETRIES = 3


class JetStreamPublisher(JsPublish, Protocol):
    """Publish with acks collected later (windowed), plus the plain publish."""

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[PubAck]:
        """Send without waiting; the future resolves to the PubAck, or to the publish's error.

        The future has no deadline of its own. While too many publishes are pending, waits up to
        ``wait_stall`` for room, then raises ``TooManyStalledMsgsError``.
        """


class Progress(Protocol):
    """Where ``publish_urls`` reports URLs dealt with (a tqdm bar in the CLI)."""

    def update(self, n: int = 1) -> object:
        """Advance by ``n`` URLs; the return value is ignored."""


@dataclasses.dataclass
class PublishReport:
    """What ``publish_urls`` did, in URLs: published, duplicates, invalid lines, failed."""

    published: int = 0
    duplicates: int = 0
    invalid: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts `fleet publish` prints (``failed`` left out: any failure raises instead)."""
        return {"published": self.published, "duplicates": self.duplicates, "invalid": self.invalid}


class PublishFailed(TransientError):
    """Some URLs were not acknowledged by JetStream after the retries (``failed`` of them).

    Transient: re-running the same publish is safe (dedup) and finishes the job.
    """

    reason = "publish_failed"

    def __init__(self, message: str, *, failed: int) -> None:
        super().__init__(message)
        self.failed = failed


def read_url_lines(lines: Iterable[str]) -> Iterable[tuple[int, str]]:
    """Yield (line number, text) of lines that hold a URL: blanks and # comments skipped."""
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield lineno, text


@dataclasses.dataclass(frozen=True)
class _Pending:
    future: asyncio.Future[PubAck]
    payload: bytes
    headers: dict[str, str]


class Publisher:
    """Publishes URL lines as ``UrlTask`` messages on the URLs stream, ``window`` in flight.

    ``headers_for`` adds headers per message (trace context); ``counted(result, n)`` is told of
    each URL published, duplicate or invalid, for metrics.
    """

    def __init__(
        self,
        js: JetStreamPublisher,
        settings: Settings,
        *,
        window: int = DEFAULT_WINDOW,
        headers_for: Callable[[UrlTask], dict[str, str]] | None = None,
        counted: Callable[[str, int], None] | None = None,
    ) -> None:
        self._js = js
        self._settings = settings
        self._window = window
        # Extra headers per message (trace context); the dedup id is always set here.
        self._headers_for = headers_for
        # Progress for metrics: (result, count) with result published/duplicate/invalid.
        self._counted = counted or (lambda _result, _count: None)

    async def publish_urls(
        self,
        lines: Iterable[tuple[int, str]],
        *,
        on_invalid: Callable[[int, str], None],
        progress: Progress | None = None,
        source: str | None = None,
    ) -> PublishReport:
        """Normalize and publish ``lines`` (line number, text), as ``read_url_lines`` yields them.

        An invalid URL goes to ``on_invalid(lineno, message)`` and is skipped. A URL repeated in
        the input, or already published within the dedup window, counts as a duplicate. A publish
        not acknowledged is retried with the same dedup id; ``PublishFailed`` is raised at the end
        if some URLs were still not acknowledged. ``source`` is recorded in each task.
        """
        report = PublishReport()
        seen: set[str] = set()
        pending: list[_Pending] = []
        half = max(1, self._window // 2)
        for lineno, raw in lines:
            try:
                url = normalize_url(raw)
            except InvalidUrl as exc:
                report.invalid += 1
                self._counted("invalid", 1)
                on_invalid(lineno, str(exc))
                continue
            if url in seen:
                report.duplicates += 1
                self._counted("duplicate", 1)
                if progress is not None:
                    progress.update(1)
                continue
            seen.add(url)
            pending.append(await self._send(url, source))
            if len(pending) >= self._window:
                await self._settle(pending[:half], report, progress)
                del pending[:half]
        await self._settle(pending, report, progress)
        if report.failed:
            raise PublishFailed(
                f"{report.failed} URL(s) were not acknowledged by JetStream after "
                f"{PUBLISH_RETRIES} tries; re-run the same command (dedup makes it safe)",
                failed=report.failed,
            )
        return report

    def _headers(self, task: UrlTask) -> dict[str, str]:
        if self._headers_for is None:
            return {"Nats-Msg-Id": task.id}
        headers = dict(self._headers_for(task))
        headers["Nats-Msg-Id"] = task.id
        return headers

    async def _send(self, url: str, source: str | None) -> _Pending:
        task = UrlTask(url=url, id=url_id(url), published_at=time.time(), source=source)
        payload = url_task_encoder.encode(task)
        headers = self._headers(task)
        future = await self._js.publish_async(
            self._settings.urls_subject, payload, stream=self._settings.urls_stream, headers=headers
        )
        return _Pending(future, payload, headers)

    async def _settle(
        self, pending: list[_Pending], report: PublishReport, progress: Progress | None
    ) -> None:
        if not pending:
            return
        # publish_async futures have no deadline of their own; bound the wait. Waiting only
        # on those not done yet: in a sliding window most of the older half already are.
        waiting = [p.future for p in pending if not p.future.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=max(5.0, self._settings.ack_wait_s))
        for item in pending:
            ack: PubAck | None = None
            future = item.future
            if future.done() and not future.cancelled() and future.exception() is None:
                ack = future.result()
            else:
                if not future.done():
                    future.cancel()
                ack = await self._retry(item)
            if ack is None:
                report.failed += 1
            elif ack.duplicate:
                report.duplicates += 1
                self._counted("duplicate", 1)
            else:
                report.published += 1
                self._counted("published", 1)
        if progress is not None:
            progress.update(len(pending))

    async def _retry(self, item: _Pending) -> PubAck | None:
        # Same Nats-Msg-Id, so a publish that did land before its ack was lost is not doubled.
        for attempt in range(1, PUBLISH_RETRIES + 1):
            try:
                return await self._js.publish(
                    self._settings.urls_subject,
                    item.payload,
                    stream=self._settings.urls_stream,
                    headers=item.headers,
                )
            except Exception as exc:
                log.warning("publish retry %d failed: %s", attempt, exc)
                if attempt < PUBLISH_RETRIES:
                    await asyncio.sleep(0.2 * 2**attempt)
        return None
