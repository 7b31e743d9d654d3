"""One Settings object for every role, built once (in the CLI) and passed down.

Values come from ``FLEET_*`` environment variables, then CLI flags override them.
Nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_SINK = "sqlite:///fleet.db"
ENV_PREFIX = "FLEET_"


class SettingsError(ValueError):
    """A setting has a value fleet cannot use; the message names the variable and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    # NATS. None means "not configured": `fleet run` then starts a private server.
    nats_url: str | None = None
    nats_connect_timeout_s: float = 2.0
    stream_prefix: str = "FLEET"
    subject_prefix: str = "fleet"
    dedup_window_s: float = 3600.0
    results_max_age_s: float = 7 * 24 * 3600.0

    # Delivery and retries.
    max_deliver: int = 5
    ack_wait_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0

    # Worker.
    worker_concurrency: int = 32
    drain_timeout_s: float = 20.0
    allow_hosts: tuple[str, ...] = ()
    fetch_timeout_s: float = 15.0
    connect_timeout_s: float = 5.0
    max_redirects: int = 5
    max_body_bytes: int = 5 * 1024 * 1024
    max_links: int = 1000
    user_agent: str = "fleet/0.1 (+https://github.com/fleet-scraper/fleet)"

    # Rendering (Playwright + Chromium) for pages whose content JavaScript builds.
    render: str = "auto"  # never | auto | always
    chromium_path: str | None = None  # None: Debian's chromium-headless-shell or chromium
    render_concurrency: int = 4  # pages open at once in a worker's browser
    render_timeout_s: float = 30.0
    render_settle_max_s: float = 5.0  # cap on waiting for a quiet DOM with no fetch pending
    render_context_pages: int = 100  # pages per browser context before it is recycled
    # Browser restarted when its process tree uses more (PSS: shared pages counted once).
    browser_max_rss_mb: int = 1024
    # Old-space cap of Playwright's driver (node): its heap otherwise grows lazily by
    # ~80 MB over the first few thousand pages. A rendered page's HTML must fit well within.
    render_driver_heap_mb: int = 256
    # Abort images, fonts and media while rendering: faster on image-heavy pages (see
    # docs/benchmarks.md), off by default so pages render as a visitor sees them.
    render_block_media: bool = False

    # Indexer and sinks.
    sink: str = DEFAULT_SINK
    meili_api_key: str | None = dataclasses.field(default=None, repr=False)
    meili_index: str = "pages"
    meili_task_timeout_s: float = 60.0
    indexer_batch_size: int = 200
    indexer_batch_wait_s: float = 0.5
    sink_retry_max_s: float = 30.0
    # Read-only SQLite connections (threads) for searches of `fleet serve`/`fleet search`.
    sqlite_readers: int = 4
    # FTS5 detail of a new SQLite index: full (fast ranking) or column (~10% cheaper
    # indexing, much slower ranking of long pages; docs/benchmarks.md).
    sqlite_fts_detail: str = "full"

    # Supervisor: scales workers on the workers' consumer lag.
    supervisor_backend: str = "docker"  # docker | local
    supervisor_min: int = 1
    supervisor_max: int = 8
    supervisor_target_lag: int = 200  # URLs (pending + unacked) one worker should carry
    supervisor_activation_lag: int = 1  # lag that wakes the fleet up from zero workers
    supervisor_max_step: int = 4  # most workers added or removed in one decision
    supervisor_cooldown_s: float = 60.0  # lag stays low this long before scaling down
    supervisor_interval_s: float = 5.0
    supervisor_stop_grace_s: float = 30.0  # SIGTERM → SIGKILL for a removed worker
    supervisor_port: int = 8080  # /health and /metrics
    supervisor_worker_service: str = "worker"  # compose service used as the template
    supervisor_project: str | None = None  # compose project; None: the supervisor's own
    supervisor_worker_image: str | None = None  # workers from this image when none to copy
    supervisor_worker_network: str | None = None  # network of those workers

    # `fleet serve`: the HTTP API, the MCP endpoint and the dashboard.
    api_host: str = "127.0.0.1"
    api_port: int = 8000  # 0 picks a free port (tests)
    # Bearer key for every /api/* and /mcp request; unset: loopback only, no auth.
    api_key: str | None = dataclasses.field(default=None, repr=False)
    # A second key that opens only the reads (GET /api/*, MCP search/get_page/fleet_status).
    api_read_key: str | None = dataclasses.field(default=None, repr=False)
    # The supervisor's base URL (http://supervisor:8080) for the dashboard's workers panel.
    supervisor_url: str | None = None

    # `fleet run`.
    run_timeout_s: float = 3600.0

    # Logs and metrics (traces are configured by the standard OTEL_* variables).
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 0  # Prometheus /metrics of a worker or indexer; 0 = off

    @property
    def nats_server(self) -> str:
        return self.nats_url or DEFAULT_NATS_URL

    @property
    def urls_stream(self) -> str:
        return f"{self.stream_prefix}_URLS"

    @property
    def results_stream(self) -> str:
        return f"{self.stream_prefix}_RESULTS"

    @property
    def dlq_stream(self) -> str:
        return f"{self.stream_prefix}_DLQ"

    @property
    def render_bucket(self) -> str:
        """JetStream KV bucket of the learned per-domain render decisions."""
        return f"{self.stream_prefix}_RENDER"

    @property
    def urls_subject(self) -> str:
        return f"{self.subject_prefix}.urls"

    @property
    def results_subject(self) -> str:
        return f"{self.subject_prefix}.results"

    @property
    def dlq_subject(self) -> str:
        return f"{self.subject_prefix}.dlq"

    def replace(self, **overrides: Any) -> Settings:
        """Apply CLI flags: a flag given (not None) wins over the environment."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **given)
        new.validate()
        return new

    def to_env(self) -> dict[str, str]:
        """The FLEET_* variables that rebuild these settings in a child process."""
        env: dict[str, str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[ENV_PREFIX + field.name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(name, raw, hints[field.name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = {
            "max_deliver": self.max_deliver,
            "ack_wait_s": self.ack_wait_s,
            "worker_concurrency": self.worker_concurrency,
            "indexer_batch_size": self.indexer_batch_size,
            "sqlite_readers": self.sqlite_readers,
            "max_body_bytes": self.max_body_bytes,
            "fetch_timeout_s": self.fetch_timeout_s,
            "render_concurrency": self.render_concurrency,
            "render_timeout_s": self.render_timeout_s,
            "render_context_pages": self.render_context_pages,
            "browser_max_rss_mb": self.browser_max_rss_mb,
            "render_driver_heap_mb": self.render_driver_heap_mb,
            "supervisor_max": self.supervisor_max,
            "supervisor_target_lag": self.supervisor_target_lag,
            "supervisor_activation_lag": self.supervisor_activation_lag,
            "supervisor_max_step": self.supervisor_max_step,
            "supervisor_interval_s": self.supervisor_interval_s,
        }
        for key, value in positive.items():
            if value <= 0:
                raise SettingsError(
                    f"{ENV_PREFIX}{key.upper()} must be > 0 (got {value}); set a positive value"
                )
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(
                f"{ENV_PREFIX}METRICS_PORT must be a TCP port 1-65535, or 0 for no metrics "
                f"(got {self.metrics_port})"
            )
        if self.render not in ("never", "auto", "always"):
            raise SettingsError(
                f"{ENV_PREFIX}RENDER must be never, auto or always (got {self.render!r})"
            )
        if self.supervisor_backend not in ("docker", "local"):
            raise SettingsError(
                f"{ENV_PREFIX}SUPERVISOR_BACKEND must be docker or local "
                f"(got {self.supervisor_backend!r})"
            )
        if not 0 <= self.supervisor_min <= self.supervisor_max:
            raise SettingsError(
                f"{ENV_PREFIX}SUPERVISOR_MIN must be between 0 and {ENV_PREFIX}SUPERVISOR_MAX "
                f"(got min={self.supervisor_min}, max={self.supervisor_max})"
            )
        if not 1 <= self.supervisor_port <= 65535:
            raise SettingsError(
                f"{ENV_PREFIX}SUPERVISOR_PORT must be a TCP port 1-65535 "
                f"(got {self.supervisor_port})"
            )
        if not 0 <= self.api_port <= 65535:
            raise SettingsError(
                f"{ENV_PREFIX}API_PORT must be a TCP port 1-65535 (or 0 for any free port; "
                f"got {self.api_port})"
            )
        if self.api_read_key and not self.api_key:
            raise SettingsError(
                f"{ENV_PREFIX}API_READ_KEY is set but {ENV_PREFIX}API_KEY is not: a read-only "
                f"key makes sense only when writes need a key; set {ENV_PREFIX}API_KEY too"
            )
        for var, secret in (("API_KEY", self.api_key), ("API_READ_KEY", self.api_read_key)):
            if secret is not None and (not secret.strip() or any(c.isspace() for c in secret)):
                raise SettingsError(
                    f"{ENV_PREFIX}{var} must be a non-empty string without spaces "
                    "(e.g. the output of `openssl rand -hex 32`)"
                )
        if self.api_key and self.api_key == self.api_read_key:
            raise SettingsError(
                f"{ENV_PREFIX}API_READ_KEY must differ from {ENV_PREFIX}API_KEY "
                "(the read key must not open writes)"
            )
        if self.supervisor_url is not None and not self.supervisor_url.startswith(
            ("http://", "https://")
        ):
            raise SettingsError(
                f"{ENV_PREFIX}SUPERVISOR_URL must be an http(s):// URL such as "
                f"http://supervisor:8080 (got {self.supervisor_url!r})"
            )
        if self.sqlite_fts_detail not in ("column", "full"):
            raise SettingsError(
                f"{ENV_PREFIX}SQLITE_FTS_DETAIL must be column or full "
                f"(got {self.sqlite_fts_detail!r})"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(
                f"{ENV_PREFIX}LOG_FORMAT must be 'text' or 'json' (got {self.log_format!r})"
            )
        if not (
            self.sink.startswith("sqlite://")
            or self.sink.startswith("http://")
            or self.sink.startswith("https://")
        ):
            raise SettingsError(
                f"{ENV_PREFIX}SINK must be sqlite:///path/to/fleet.db or a Meilisearch URL "
                f"http(s)://host:7700 (got {self.sink!r})"
            )


def _parse(name: str, raw: str, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return _parse(name, raw, inner[0])
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        kind = getattr(hint, "__name__", str(hint))
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw
