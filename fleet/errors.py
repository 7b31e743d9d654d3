"""One error tree for the whole pipeline.

Handlers raise these; exactly one place (``fleet.disposition.Settler``) turns them into
JetStream actions: ``TransientError`` → nak with a delay, ``PermanentError`` → dead letter
then term. Each error carries a short machine ``reason`` (shown in `fleet dlq list`).
"""

from __future__ import annotations


class FleetError(Exception):
    reason: str = "error"
    # The HTTP status behind the error, when there was a response (politeness adapts on it).
    http_status: int | None = None

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TransientError(FleetError):
    """Worth retrying later: network trouble, timeouts, 5xx, 429."""

    reason = "transient"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        # A server's own hint (Retry-After) beats our backoff schedule.
        self.retry_after_s = retry_after_s


class PermanentError(FleetError):
    """Retrying cannot help: bad URL, blocked address, 4xx, content we do not handle."""

    reason = "permanent"


class InvalidUrl(PermanentError):
    reason = "invalid_url"


class BlockedAddress(PermanentError):
    reason = "blocked_address"


class UnsupportedContent(PermanentError):
    reason = "unsupported_content"


class BodyTooLarge(PermanentError):
    reason = "body_too_large"


class TooManyRedirects(PermanentError):
    reason = "too_many_redirects"


class BadMessage(PermanentError):
    """A wire message that does not decode; a replay of the same bytes fails the same way."""

    reason = "bad_message"


class HttpStatusError(FleetError):
    """Namespace helper: build the right error class from an HTTP status."""

    @staticmethod
    def for_status(status: int, url: str, retry_after_s: float | None = None) -> FleetError:
        error: FleetError
        if status == 429 or status >= 500:
            error = TransientError(
                f"HTTP {status} from {url}", reason=f"http_{status}", retry_after_s=retry_after_s
            )
        else:
            error = PermanentError(f"HTTP {status} from {url}", reason=f"http_{status}")
        error.http_status = status
        return error


class SinkUnavailable(TransientError):
    """The sink cannot be reached; the indexer backs off and acks nothing."""

    reason = "sink_unavailable"


class ConfigError(FleetError):
    """Configuration or environment that prevents start-up; the message names the fix."""

    reason = "config"


class BrowserCrashed(TransientError):
    """The browser died or hung with the page open; the URL is retried (another browser)."""

    reason = "browser_crashed"


class RenderTimeout(TransientError):
    """A page did not finish rendering within render_timeout_s."""

    reason = "render_timeout"


class RenderFailed(TransientError):
    """The browser could not render the page (navigation error, no browser right now)."""

    reason = "render_failed"


class RenderUnavailable(ConfigError):
    """Rendering was asked for but Playwright or Chromium is missing; names the fix."""

    reason = "render_unavailable"
