"""The hooks roles see: ``with`` blocks around their steps, and what they read of a message.

``Hook`` and ``ServingHook`` do nothing; ``NOOP`` and ``NOOP_SERVING`` are the one shared
instance of each that ``Telemetry`` hands out when tracing and metrics are off. The
recording hooks (``fleet.telemetry.spans``, ``fleet.telemetry.consuming``) subclass them.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self


class MessageLike(Protocol):
    """The part of a nats-py ``Msg`` the hooks read."""

    @property
    def subject(self) -> str:
        """The subject the message was published on."""

    @property
    def headers(self) -> dict[str, str] | None:
        """Its NATS headers (the trace context among them), or None."""


class TaskLike(Protocol):
    """The part of a ``UrlTask`` the publish hook reads."""

    @property
    def url(self) -> str:
        """The URL to fetch."""

    @property
    def id(self) -> str:
        """The URL's id, also the message's dedup id."""


class Hook:
    """A ``with`` block around a step; this base (tracing and metrics off) does nothing."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set_url(self, url: str) -> None:
        """The URL is known (after decoding the message)."""

    def response(self, status: int) -> None:
        """An HTTP response status (fetching)."""

    def settled(
        self, error: BaseException | None, *, action: str, reason: str, dead_letter: bool
    ) -> None:
        """The message was acked, nak'ed or terminated (``action``), after ``error``."""

    def document(self, index: int) -> Hook:
        """The hook of the ``index``-th message of a batch."""
        return self


NOOP = Hook()


class ServingHook(Hook):
    """A ``with`` block around one HTTP request (this base does nothing)."""

    __slots__ = ()

    def routed(self, route: str) -> None:
        """The request matched this route template (``/api/pages/{page_id}``)."""


NOOP_SERVING = ServingHook()
