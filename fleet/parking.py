"""Where a worker holds URLs until their host's turn: per-origin FIFOs, one head asking.

A URL the politeness gate says must wait is parked here (bounded; heartbeats keep its
delivery) or, when the wait is too long or the parking full, deferred through the stream.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import time

from nats.aio.msg import Msg

from fleet.messages import UrlTask


@dataclasses.dataclass(slots=True)
class Parked:
    """A URL held by this worker until its host's turn (in-progress heartbeats keep it)."""

    msg: Msg
    task: UrlTask
    prior_attempts: int  # fetch attempts before this delivery
    seq: int
    why: str
    beat_at: float = dataclasses.field(default_factory=time.monotonic)
    # The worker's `Worker.term` when this copy was delivered: a later term means the
    # consumer may have delivered the URL again elsewhere meanwhile.
    term: int = 0


class Parking:
    """Bounded per-origin FIFOs of parked URLs, each origin with the time its head may ask
    again. Only the head of an origin asks the politeness gate; the others wait behind it
    locally, so a host with many waiting URLs costs one question per turn, not one per URL.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._queues: dict[str, collections.deque[Parked]] = {}
        self._wake: dict[str, float] = {}  # origin -> wall time; absent: its head is out
        self._heap: list[tuple[float, str]] = []
        self._horizon: dict[str, float] = {}  # latest due time given to a deferred URL

    def __len__(self) -> int:
        return self.size

    def room(self) -> int | None:
        """How many more URLs may park (None: no parking at all, limit 0)."""
        return None if self.limit <= 0 else max(0, self.limit - self.size)

    def has(self, origin: str) -> bool:
        """Whether URLs of ``origin`` wait here (new ones then queue behind them)."""
        return origin in self._queues

    def queued(self, origin: str) -> int:
        """URLs of ``origin`` parked here."""
        queue = self._queues.get(origin)
        return len(queue) if queue is not None else 0

    def wake_at(self, origin: str) -> float:
        """When the head of ``origin`` may ask again (0: its head is out asking)."""
        return self._wake.get(origin, 0.0)

    def push(self, origin: str, item: Parked, *, wake_at: float, front: bool = False) -> None:
        """Queue ``item``; ``front`` for a head that asked and must wait again."""
        queue = self._queues.setdefault(origin, collections.deque())
        if front:
            queue.appendleft(item)
            self._set_wake(origin, wake_at)
        else:
            queue.append(item)
            if origin not in self._wake and len(queue) == 1:
                self._set_wake(origin, wake_at)
        self.size += 1

    def resume(self, origin: str, wake_at: float) -> None:
        """The head of ``origin`` left (fetched or skipped): the next may ask at ``wake_at``."""
        if origin in self._queues:
            self._set_wake(origin, wake_at)

    def due(self, now: float, limit: int) -> list[tuple[str, Parked]]:
        """Take up to ``limit`` heads whose time has come (one per origin)."""
        out: list[tuple[str, Parked]] = []
        while self._heap and len(out) < limit:
            wake, origin = self._heap[0]
            if wake > now:
                break
            heapq.heappop(self._heap)
            if self._wake.get(origin) != wake:
                continue  # stale heap entry
            del self._wake[origin]
            queue = self._queues[origin]
            item = queue.popleft()
            self.size -= 1
            if not queue:
                del self._queues[origin]
            out.append((origin, item))
        return out

    def next_wake(self) -> float | None:
        """The earliest time a head may ask again, or None."""
        while self._heap and self._wake.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def items(self) -> list[Parked]:
        """Every parked URL (for heartbeats)."""
        return [item for queue in self._queues.values() for item in queue]

    def take_all(self) -> list[tuple[str, Parked, float]]:
        """Empty the parking (drain): every item with the time its origin was due."""
        out: list[tuple[str, Parked, float]] = []
        for origin, queue in self._queues.items():
            wake = self._wake.get(origin, 0.0)
            out += [(origin, item, wake) for item in queue]
        self._queues.clear()
        self._wake.clear()
        self._heap.clear()
        self.size = 0
        return out

    def defer_slot(self, origin: str, earliest: float, interval_s: float) -> float:
        """Due time for one more deferred URL of ``origin``: after those already deferred,
        so that deferred URLs come back spread out at the host's pace, not all at once."""
        horizon = self._horizon.get(origin, 0.0)
        due = max(earliest, horizon + interval_s)
        self._horizon[origin] = due
        if len(self._horizon) > 4 * max(self.limit, 1024):
            now = time.time()
            self._horizon = {o: t for o, t in self._horizon.items() if t > now}
        return due

    def _set_wake(self, origin: str, wake_at: float) -> None:
        self._wake[origin] = wake_at
        heapq.heappush(self._heap, (wake_at, origin))
