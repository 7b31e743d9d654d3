"""The error tree: every fleet error on one branch, HTTP statuses carrying their data."""

from __future__ import annotations

import pytest

from fleet.check import Unhealthy
from fleet.disposition import Action, decide
from fleet.errors import (
    BadMessage,
    ConfigError,
    FleetError,
    HttpPermanentStatus,
    HttpStatusError,
    HttpTransientStatus,
    InvalidUrl,
    PermanentError,
    RenderUnavailable,
    SinkUnavailable,
    TransientError,
    error_class,
    error_reason,
)
from fleet.nats.session import NatsUnavailable
from fleet.publisher import PublishFailed
from fleet.runner import RoleCrashed, RunTimeout
from fleet.scaling.base import BackendError
from fleet.settings import SettingsError


def _decide(error: BaseException, attempt: int = 1) -> tuple[Action, float, str, bool]:
    d = decide(error, attempt=attempt, max_deliver=5, backoff_base_s=1, backoff_max_s=60)
    return d.action, d.delay_s, d.reason, d.dead_letter


@pytest.mark.parametrize(
    ("status", "transient"),
    [(429, True), (500, True), (503, True), (599, True), (400, False), (404, False), (410, False)],
)
def test_http_status_error_carries_its_data(status: int, transient: bool) -> None:
    exc = HttpStatusError.for_status(status, "https://example.com/a", retry_after_s=7)
    assert isinstance(exc, HttpStatusError)
    assert exc.status == status
    assert exc.url == "https://example.com/a"
    assert exc.reason == f"http_{status}"
    assert str(exc) == f"HTTP {status} from https://example.com/a"
    assert isinstance(exc, TransientError) is transient
    assert isinstance(exc, PermanentError) is not transient
    assert isinstance(exc, HttpTransientStatus if transient else HttpPermanentStatus)
    # Retry-After only means something when the URL is retried.
    assert exc.retry_after_s == (7 if transient else None)
    assert error_class(exc) == ("transient" if transient else "permanent")
    assert error_reason(exc) == f"http_{status}"


def test_decide_for_http_statuses() -> None:
    assert _decide(HttpStatusError.for_status(404, "u", retry_after_s=9)) == (
        Action.TERM,
        0.0,
        "http_404",
        True,
    )
    assert _decide(HttpStatusError.for_status(429, "u", retry_after_s=7)) == (
        Action.NAK,
        7,
        "http_429",
        False,
    )
    assert _decide(HttpStatusError.for_status(503, "u", retry_after_s=12.5)) == (
        Action.NAK,
        12.5,
        "http_503",
        False,
    )
    # The server's hint is capped, and the last allowed delivery is dead-lettered anyway.
    assert _decide(HttpStatusError.for_status(503, "u", retry_after_s=1e9))[1] == 3600.0
    assert _decide(HttpStatusError.for_status(503, "u", retry_after_s=7), attempt=5) == (
        Action.TERM,
        0.0,
        "http_503",
        True,
    )
    # Without Retry-After: the backoff schedule (1 s ± 20 % on the first attempt).
    action, delay, _, _ = _decide(HttpStatusError.for_status(503, "u"))
    assert action is Action.NAK and 0.8 <= delay <= 1.2


@pytest.mark.parametrize(
    ("error", "klass", "reason"),
    [
        (TransientError("t"), "transient", "transient"),
        (SinkUnavailable("down"), "transient", "sink_unavailable"),
        (PermanentError("p", reason="sink_rejected"), "permanent", "sink_rejected"),
        (InvalidUrl("bad"), "permanent", "invalid_url"),
        (BadMessage("garbled"), "permanent", "bad_message"),
        (ConfigError("c"), "config", "config"),
        (RenderUnavailable("no chromium"), "config", "render_unavailable"),
        (SettingsError("FLEET_X"), "config", "invalid_setting"),
        (NatsUnavailable("down"), "config", "nats_unavailable"),
        (PublishFailed("lost", failed=3), "transient", "publish_failed"),
        (RunTimeout("slow", timeout_s=60.0), "transient", "run_timeout"),
        (RoleCrashed("gone", roles=["worker-1"]), "transient", "role_crashed"),
        (BackendError("docker down"), "transient", "backend_unavailable"),
        (Unhealthy("stream missing"), "transient", "unhealthy"),
        (ValueError("bug"), "internal", "internal_error"),
        (KeyError("bug"), "internal", "internal_error"),
    ],
)
def test_classification(error: BaseException, klass: str, reason: str) -> None:
    assert error_class(error) == klass
    assert error_reason(error) == reason


@pytest.mark.parametrize(
    "error",
    [
        PublishFailed("lost", failed=3),
        RunTimeout("slow", timeout_s=60.0),
        RoleCrashed("gone", roles=["worker-1"]),
        BackendError("docker down"),
        Unhealthy("stream missing"),
        SettingsError("FLEET_X"),
        NatsUnavailable("down"),
    ],
)
def test_role_errors_are_on_one_branch(error: FleetError) -> None:
    branches = [b for b in (TransientError, PermanentError, ConfigError) if isinstance(error, b)]
    assert len(branches) == 1, type(error).__mro__


def test_errors_carry_their_data() -> None:
    assert PublishFailed("lost", failed=3).failed == 3
    assert RunTimeout("slow", timeout_s=60.0).timeout_s == 60.0
    assert RoleCrashed("gone", roles=["worker-1 (exit 1)"]).roles == ["worker-1 (exit 1)"]
