"""One error tree for the whole pipeline.

Every fleet error is a ``FleetError`` under one of three branches:

* ``TransientError``: worth retrying later (network trouble, 429/5xx, a sink or backend
  that is down);
* ``PermanentError``: retrying cannot help (bad URL, blocked address, 4xx, bad message);
* ``ConfigError``: configuration or environment that prevents start-up; the message names
  the fix (the CLI exits 2 on it).

Handlers raise these; exactly one place (``fleet.disposition.Settler``) turns them into
JetStream actions: ``TransientError`` → nak with a delay, ``PermanentError`` → dead letter
then term. Each error carries a short machine ``reason`` (shown in `fleet dlq list`, metrics
and spans) and its data as attributes. ``error_reason`` and ``error_class`` classify any
exception, fleet's or not, the same way for the settler and for telemetry.
"""

from __future__ import annotations

from typing import Literal

ErrorClass = Literal["transient", "permanent", "config", "internal"]


class FleetError(Exception):
    """Base of every fleet error; use one of the three branches below, never this directly."""

    reason: str = "error"

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
    """A URL fleet cannot use (no scheme/host, not http(s), credentials, too long)."""

    reason = "invalid_url"


class BlockedAddress(PermanentError):
    """The URL resolves to an address netguard refuses (private, loopback, ...)."""

    reason = "blocked_address"


class UnsupportedContent(PermanentError):
    """The response is a content type fleet does not extract (images, PDFs, ...)."""

    reason = "unsupported_content"


class BodyTooLarge(PermanentError):
    """The body is over max_body_bytes (declared or as streamed)."""

    reason = "body_too_large"


class TooManyRedirects(PermanentError):
    """More redirects than max_redirects; a loop or a chain we do not follow."""

    reason = "too_many_redirects"


class BadMessage(PermanentError):
    """A wire message that does not decode; a replay of the same bytes fails the same way."""

    reason = "bad_message"


class HttpStatusError(FleetError):
    """A server answered a status fleet does not accept (not 2xx, not a followed redirect).

    Carries ``status``, ``url`` (the hop that answered) and ``retry_after_s`` (the server's
    Retry-After, for 429/5xx). Build it with ``for_status``: 429 and 5xx give an
    ``HttpTransientStatus`` (a ``TransientError``), any other status an
    ``HttpPermanentStatus`` (a ``PermanentError``), so the settler needs no special case.
    """

    status: int
    url: str
    retry_after_s: float | None

    def __init__(self, status: int, url: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status} from {url}", reason=f"http_{status}")
        self.status = status
        self.url = url
        self.retry_after_s = retry_after_s

    @staticmethod
    def is_transient(status: int) -> bool:
        """429 (rate limited) and 5xx (server trouble) may succeed later; others will not."""
        return status == 429 or status >= 500

    @classmethod
    def for_status(
        cls, status: int, url: str, retry_after_s: float | None = None
    ) -> HttpStatusError:
        """The transient or permanent variant for ``status``."""
        if cls.is_transient(status):
            return HttpTransientStatus(status, url, retry_after_s=retry_after_s)
        # A Retry-After on a 4xx is meaningless: the URL is not retried.
        return HttpPermanentStatus(status, url)


class HttpTransientStatus(HttpStatusError, TransientError):
    """429 or 5xx: retried, after the server's Retry-After when it gave one."""


class HttpPermanentStatus(HttpStatusError, PermanentError):
    """Any other non-2xx status (404, 410, 403, ...): dead-lettered at once."""


class SinkUnavailable(TransientError):
    """The sink cannot be reached; the indexer backs off and acks nothing."""

    reason = "sink_unavailable"


class ConfigError(FleetError):
    """Configuration or environment that prevents start-up; the message names the fix."""

    reason = "config"


class BackupInvalid(PermanentError):
    """A backup directory fleet cannot restore from (no manifest, a bad checksum, another
    sink kind); carries the ``directory``; the message names the fix."""

    reason = "backup_invalid"

    def __init__(self, message: str, *, directory: str) -> None:
        super().__init__(message)
        self.directory = directory


class RestoreFailed(PermanentError):
    """A restore whose check afterwards failed (integrity check, pages missing); carries the
    ``target`` sink it was written to."""

    reason = "restore_failed"

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(message)
        self.target = target


class RestoreTargetNotEmpty(ConfigError):
    """`fleet restore` into a sink that already holds pages, without ``--force``; carries the
    ``target`` and how many ``pages`` it holds."""

    reason = "restore_target_not_empty"

    def __init__(self, target: str, pages: int) -> None:
        super().__init__(
            f"{target} already holds {pages} page(s); restore into an empty sink (another "
            "--sink / FLEET_SINK), or pass --force to replace its contents with the backup"
        )
        self.target = target
        self.pages = pages


class BrowserCrashed(TransientError):
    """The browser died or hung with the page open; the URL is retried (another browser)."""

    reason = "browser_crashed"


class RenderTimeout(TransientError):
    """A page did not finish rendering within render_timeout_s."""

    reason = "render_timeout"


class RenderFailed(TransientError):
    """The browser could not render the page (navigation error, no browser right now)."""

    reason = "render_failed"


class RenderDeferred(TransientError):
    """A borderline page of a domain auto mode is still learning, sent back for a moment
    (``retry_after_s``) because this worker holds enough such pages already; it comes back
    when the domain's decision is likely made (``fleet.scrape.render.policy``)."""

    reason = "render_learning"


class RenderUnavailable(ConfigError):
    """Rendering was asked for but Playwright or Chromium is missing; names the fix."""

    reason = "render_unavailable"


def error_reason(error: BaseException) -> str:
    """The machine reason of any exception: a fleet error's own, else ``internal_error``."""
    return error.reason if isinstance(error, FleetError) else "internal_error"


def error_class(error: BaseException) -> ErrorClass:
    """Which branch of the tree ``error`` is on; ``internal`` for anything not fleet's."""
    if isinstance(error, PermanentError):
        return "permanent"
    if isinstance(error, TransientError):
        return "transient"
    if isinstance(error, ConfigError):
        return "config"
    return "internal"
