"""The error tree → ack/nak/term table, and the settler carrying it out on a real server."""

from __future__ import annotations

import pytest

from fleet.disposition import Action, decide
from fleet.errors import (
    BlockedAddress,
    BodyTooLarge,
    HttpStatusError,
    InvalidUrl,
    PermanentError,
    SinkUnavailable,
    TransientError,
    UnsupportedContent,
)


def _decide(
    error: BaseException | None, attempt: int = 1, max_deliver: int = 5
) -> tuple[Action, str, bool]:
    d = decide(error, attempt=attempt, max_deliver=max_deliver, backoff_base_s=1, backoff_max_s=60)
    return d.action, d.reason, d.dead_letter


@pytest.mark.parametrize(
    ("error", "attempt", "want"),
    [
        (None, 1, (Action.ACK, "", False)),
        (TransientError("timeout", reason="timeout"), 1, (Action.NAK, "timeout", False)),
        (HttpStatusError.for_status(503, "u"), 2, (Action.NAK, "http_503", False)),
        (HttpStatusError.for_status(429, "u"), 1, (Action.NAK, "http_429", False)),
        (HttpStatusError.for_status(404, "u"), 1, (Action.TERM, "http_404", True)),
        (HttpStatusError.for_status(410, "u"), 1, (Action.TERM, "http_410", True)),
        (BlockedAddress("no"), 1, (Action.TERM, "blocked_address", True)),
        (InvalidUrl("no"), 1, (Action.TERM, "invalid_url", True)),
        (BodyTooLarge("big"), 1, (Action.TERM, "body_too_large", True)),
        (UnsupportedContent("png"), 1, (Action.TERM, "unsupported_content", True)),
        (PermanentError("x", reason="sink_rejected"), 1, (Action.TERM, "sink_rejected", True)),
        # The last allowed delivery of a transient error is dead-lettered, never dropped.
        (HttpStatusError.for_status(500, "u"), 5, (Action.TERM, "http_500", True)),
        (SinkUnavailable("down"), 4, (Action.NAK, "sink_unavailable", False)),
        # A bug is retried like a transient error, then dead-lettered as internal_error.
        (ValueError("bug"), 1, (Action.NAK, "internal_error", False)),
        (ValueError("bug"), 5, (Action.TERM, "internal_error", True)),
    ],
)
def test_decision_table(
    error: BaseException | None, attempt: int, want: tuple[Action, str, bool]
) -> None:
    assert _decide(error, attempt) == want


def test_retry_after_wins_over_backoff() -> None:
    d = decide(
        HttpStatusError.for_status(429, "u", retry_after_s=7),
        attempt=1,
        max_deliver=5,
        backoff_base_s=1,
        backoff_max_s=60,
    )
    assert d.action is Action.NAK and d.delay_s == 7


def test_backoff_grows_and_is_capped() -> None:
    delays = [
        decide(
            TransientError("t"), attempt=a, max_deliver=99, backoff_base_s=1, backoff_max_s=8
        ).delay_s
        for a in range(1, 8)
    ]
    assert delays[0] < 1.3 and delays[2] > 3
    assert max(delays) <= 8 * 1.2 + 1e-9


def test_unlimited_deliveries_never_dead_letter_transient() -> None:
    assert _decide(SinkUnavailable("down"), attempt=1000, max_deliver=-1)[0] is Action.NAK
