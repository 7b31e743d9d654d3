"""One Settings object for every role, built once (in the CLI) and passed down.

Values come from ``FLEET_*`` environment variables, then CLI flags override them.
Nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

from fleet.errors import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_SINK = "sqlite:///fleet.db"
ENV_PREFIX = "FLEET_"
# Where `fleet supervisor` runs workers (fleet/scaling/): containers on one engine, local
# processes, a Docker Swarm service, a Kubernetes Deployment.
SUPERVISOR_BACKENDS = ("docker", "local", "swarm", "kubernetes")


class SettingsError(ConfigError):
    """A setting has a value fleet cannot use; the message names the variable and the fix."""

    reason = "invalid_setting"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of every role, with its default; frozen, so a role cannot change it under another.

    Each field ``x`` is read from ``FLEET_X`` (``from_env``); units are in the names (``_s``,
    ``_mb``, ``_bytes``). Build it with ``from_env`` or ``replace``, which validate;
    constructing it directly does not.
    """

    # NATS. None means "not configured": `fleet run` then starts a private server. Several
    # servers of one cluster, comma-separated, are a seed list (`nats_servers`).
    nats_url: str | None = None
    nats_connect_timeout_s: float = 2.0
    # A server lost without closing the connection (machine gone, network cut) is left after
    # this many seconds x 3 unanswered pings; nats-py's default (120 s x 2) is minutes.
    nats_ping_interval_s: float = 10.0
    stream_prefix: str = "FLEET"
    subject_prefix: str = "fleet"
    dedup_window_s: float = 3600.0
    results_max_age_s: float = 7 * 24 * 3600.0
    # Copies of every stream and KV bucket fleet creates: 1 on one server, 3 on a cluster.
    stream_replicas: int = 1
    # Server tags the replicas must be placed on (`server_tags` of the nats-servers).
    stream_placement_tags: tuple[str, ...] = ()

    # Delivery and retries.
    max_deliver: int = 5
    ack_wait_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # How often the sweep (run by the indexer, fleet/sweep.py) dead-letters URLs the server
    # will not deliver again: their last allowed attempt ended without an answer.
    sweep_interval_s: float = 15.0

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

    # Politeness, fleet-wide per host (scheme + host + port). 0 means no limit.
    robots: str = "obey"  # obey | ignore robots.txt
    robots_ttl_s: float = 24 * 3600.0  # a fetched robots.txt is trusted this long
    robots_retry_s: float = 60.0  # first retry of an unreachable robots.txt (doubles, 1 h cap)
    host_concurrency: int = 2  # most requests in flight to one host, whole fleet
    host_delay_s: float = 1.0  # least time between the starts of two requests to one host
    host_delay_max_s: float = 30.0  # cap on Crawl-delay and on the adaptive slow-down
    host_rules: str = ""  # per-host overrides, see parse_host_rules
    worker_parked_max: int = 1000  # URLs one worker holds while their host's turn comes
    worker_park_max_s: float = 30.0  # longer waits go back to the stream, scheduled
    # Crawls: URLs of the seen-set a worker remembers as seen (saves frontier round trips;
    # the seen-set itself is in JetStream, this only bounds the worker's memory).
    crawl_seen_cache: int = 200_000

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
    # Chromium loads no images while rendering: fleet extracts text, and decoding images
    # was ~10 % of a render's CPU (docs/benchmarks.md). False renders pages with them.
    render_block_media: bool = True
    # Auto mode's learning per domain (docs/architecture.md, "Rendering"): sample renders
    # of an undecided domain, fleet-wide (at most this many in flight; they decide it).
    render_samples: int = 3
    # A borderline page of an undecided domain waits this long for the decision, then is
    # rendered anyway: a domain that needs rendering still gets every page rendered.
    render_learn_hold_s: float = 10.0

    # Indexer and sinks.
    sink: str = DEFAULT_SINK
    meili_api_key: str | None = dataclasses.field(default=None, repr=False)
    meili_index: str = "pages"
    meili_task_timeout_s: float = 60.0
    # `fleet backup`: Meilisearch's --dump-dir as seen from where it runs (a shared volume);
    # when set, the dump is copied into the backup directory. How long a dump may take.
    meili_dump_dir: str | None = None
    meili_dump_timeout_s: float = 3600.0
    indexer_batch_size: int = 200
    indexer_batch_wait_s: float = 0.5
    sink_retry_max_s: float = 30.0
    # Read-only SQLite connections (threads) for searches of `fleet serve`/`fleet search`.
    sqlite_readers: int = 4
    # FTS5 detail of a new SQLite index: full (fast ranking) or column (~10% cheaper
    # indexing, much slower ranking of long pages; docs/benchmarks.md).
    sqlite_fts_detail: str = "full"

    # Supervisor: scales workers on the workers' consumer lag.
    supervisor_backend: str = "docker"  # docker | local | swarm | kubernetes
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
    supervisor_service: str = "fleet_worker"  # swarm: the workers' service (stack_service)
    supervisor_deployment: str = "worker"  # kubernetes: the workers' Deployment
    supervisor_namespace: str | None = None  # kubernetes: its namespace; None: the pod's own

    # `fleet serve`: the HTTP API, the MCP endpoint and the dashboard.
    api_host: str = "127.0.0.1"
    api_port: int = 8000  # 0 picks a free port (tests)
    # Server processes sharing the port (SO_REUSEPORT): one event loop is bound by the GIL,
    # so a second process uses a second core.
    api_workers: int = 1
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
    def nats_servers(self) -> tuple[str, ...]:
        """The seed list to connect to: every URL of ``nats_url`` (comma-separated), or the
        local default when not configured. The client learns the cluster's other servers."""
        if not self.nats_url:
            return (DEFAULT_NATS_URL,)
        return tuple(part.strip() for part in self.nats_url.split(",") if part.strip())

    @property
    def nats_server(self) -> str:
        """One NATS URL: ``nats_url`` when it is a single URL (or the local default when not
        configured); the first seed of a list. Connect with ``nats_servers`` to fail over."""
        return self.nats_servers[0]

    @property
    def urls_stream(self) -> str:
        """JetStream stream of the URL tasks (a work queue the workers consume)."""
        return f"{self.stream_prefix}_URLS"

    @property
    def results_stream(self) -> str:
        """JetStream stream of the scraped pages, consumed by the indexer."""
        return f"{self.stream_prefix}_RESULTS"

    @property
    def dlq_stream(self) -> str:
        """JetStream stream of the dead letters of both stages."""
        return f"{self.stream_prefix}_DLQ"

    @property
    def render_bucket(self) -> str:
        """JetStream KV bucket of the learned per-domain render decisions."""
        return f"{self.stream_prefix}_RENDER"

    @property
    def render_samples_bucket(self) -> str:
        """JetStream KV bucket of auto mode's sample renders of undecided domains (claims)."""
        return f"{self.stream_prefix}_RENDER_SAMPLES"

    @property
    def skipped_stream(self) -> str:
        """Stream of URLs not fetched on purpose (scope, cancelled, robots...), one each."""
        return f"{self.stream_prefix}_SKIPPED"

    @property
    def hosts_bucket(self) -> str:
        """JetStream KV bucket of the fleet-wide per-host limiter state (memory storage)."""
        return f"{self.stream_prefix}_HOSTS"

    @property
    def robots_bucket(self) -> str:
        """JetStream KV bucket of cached robots.txt files, one key per origin."""
        return f"{self.stream_prefix}_ROBOTS_TXT"

    @property
    def frontier_stream(self) -> str:
        """Crawls' seen-sets: one message per (crawl, URL), first writer wins."""
        return f"{self.stream_prefix}_FRONTIER"

    @property
    def crawl_stream(self) -> str:
        """Crawls' counted events (queued, fetched, skipped...) and held depth layers."""
        return f"{self.stream_prefix}_CRAWL"

    @property
    def crawls_bucket(self) -> str:
        """JetStream KV bucket of the crawl jobs (spec and state), one key per crawl."""
        return f"{self.stream_prefix}_CRAWLS"

    def crawl_cap_stream(self, crawl: str) -> str:
        """The ``--max-pages`` stream of one crawl: its message limit is the cap."""
        return f"{self.stream_prefix}_CAP_{crawl}"

    @property
    def urls_subject(self) -> str:
        """Subject the URL tasks are published on."""
        return f"{self.subject_prefix}.urls"

    @property
    def results_subject(self) -> str:
        """Subject the workers publish scraped pages on."""
        return f"{self.subject_prefix}.results"

    @property
    def dlq_subject(self) -> str:
        """Prefix of the dead-letter subjects (``.worker`` or ``.indexer`` is appended)."""
        return f"{self.subject_prefix}.dlq"

    @property
    def deferred_subject(self) -> str:
        """Prefix of the scheduled messages that bring a deferred URL back (in FLEET_URLS)."""
        return f"{self.urls_subject}.later"

    @property
    def skipped_subject(self) -> str:
        """Prefix of the skipped-URL records (``.<reason>`` is appended)."""
        return f"{self.subject_prefix}.skipped"

    @property
    def host_rule_list(self) -> tuple[HostRule, ...]:
        """``host_rules`` parsed (validated when the settings were built)."""
        return parse_host_rules(self.host_rules)

    @property
    def frontier_subject(self) -> str:
        """Prefix of the crawls' seen-set subjects (``.<crawl>.<url hash>``)."""
        return f"{self.subject_prefix}.frontier"

    @property
    def crawl_subject(self) -> str:
        """Prefix of the crawls' event subjects."""
        return f"{self.subject_prefix}.crawl"

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
        """Read ``FLEET_<FIELD>`` variables from ``env`` (empty counts as unset), then validate.

        Raises ``SettingsError`` naming the variable when a value does not parse or is out of range.
        """
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

    def _validate_politeness(self) -> None:
        """The robots.txt mode, per-host limits and host rules."""
        if self.robots not in ("obey", "ignore"):
            raise SettingsError(f"{ENV_PREFIX}ROBOTS must be obey or ignore (got {self.robots!r})")
        at_least_zero = {
            "host_concurrency": self.host_concurrency,
            "host_delay_s": self.host_delay_s,
            "worker_parked_max": self.worker_parked_max,
            "worker_park_max_s": self.worker_park_max_s,
        }
        for key, value in at_least_zero.items():
            if value < 0:
                raise SettingsError(
                    f"{ENV_PREFIX}{key.upper()} must be >= 0 (got {value}); 0 means no limit"
                )
        for key, value in {
            "robots_ttl_s": self.robots_ttl_s,
            "robots_retry_s": self.robots_retry_s,
            "host_delay_max_s": self.host_delay_max_s,
        }.items():
            if value <= 0:
                raise SettingsError(
                    f"{ENV_PREFIX}{key.upper()} must be > 0 (got {value}); set a positive value"
                )
        if self.host_delay_s > self.host_delay_max_s:
            raise SettingsError(
                f"{ENV_PREFIX}HOST_DELAY_S ({self.host_delay_s:g}) is above "
                f"{ENV_PREFIX}HOST_DELAY_MAX_S ({self.host_delay_max_s:g}); raise the cap"
            )
        parse_host_rules(self.host_rules)

    def _validate_replicas(self) -> None:
        """``stream_replicas``: what a JetStream cluster can hold."""
        if not 1 <= self.stream_replicas <= 5:
            raise SettingsError(
                f"{ENV_PREFIX}STREAM_REPLICAS must be 1 to 5 (got {self.stream_replicas}); "
                "use 1 on a single nats-server, 3 (or 5) on a JetStream cluster of at least "
                "that many servers"
            )

    def _validate_api(self) -> None:
        """`fleet serve`: its port and keys."""
        if not 0 <= self.api_port <= 65535:
            raise SettingsError(
                f"{ENV_PREFIX}API_PORT must be a TCP port 1-65535 (or 0 for any free port; "
                f"got {self.api_port})"
            )
        if not 1 <= self.api_workers <= 64:
            raise SettingsError(
                f"{ENV_PREFIX}API_WORKERS must be 1 to 64 server processes (about one per "
                f"core; got {self.api_workers})"
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

    def validate(self) -> None:
        """Raise ``SettingsError`` for an unusable value; the message names the variable and fix."""
        positive = {
            "max_deliver": self.max_deliver,
            "ack_wait_s": self.ack_wait_s,
            "sweep_interval_s": self.sweep_interval_s,
            "meili_dump_timeout_s": self.meili_dump_timeout_s,
            "nats_ping_interval_s": self.nats_ping_interval_s,
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
            "render_samples": self.render_samples,
            "supervisor_max": self.supervisor_max,
            "supervisor_target_lag": self.supervisor_target_lag,
            "supervisor_activation_lag": self.supervisor_activation_lag,
            "supervisor_max_step": self.supervisor_max_step,
            "supervisor_interval_s": self.supervisor_interval_s,
            "crawl_seen_cache": self.crawl_seen_cache,
        }
        for key, value in positive.items():
            if value <= 0:
                raise SettingsError(
                    f"{ENV_PREFIX}{key.upper()} must be > 0 (got {value}); set a positive value"
                )
        self._validate_replicas()
        self._validate_nats_url()
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(
                f"{ENV_PREFIX}METRICS_PORT must be a TCP port 1-65535, or 0 for no metrics "
                f"(got {self.metrics_port})"
            )
        if self.render not in ("never", "auto", "always"):
            raise SettingsError(
                f"{ENV_PREFIX}RENDER must be never, auto or always (got {self.render!r})"
            )
        self._validate_politeness()
        if self.supervisor_backend not in SUPERVISOR_BACKENDS:
            raise SettingsError(
                f"{ENV_PREFIX}SUPERVISOR_BACKEND must be one of {', '.join(SUPERVISOR_BACKENDS)} "
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
        self._validate_api()
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

    def _validate_nats_url(self) -> None:
        if self.nats_url is None:
            return
        seeds = self.nats_servers
        if not seeds:
            raise SettingsError(
                f"{ENV_PREFIX}NATS_URL is empty; set nats://host:4222, or several servers "
                "of one cluster comma-separated (nats://a:4222,nats://b:4222)"
            )
        websocket = set()
        for seed in seeds:
            # No scheme: nats-py reads host:port as nats://host:port.
            scheme, sep, _ = seed.partition("://")
            if sep and scheme not in _NATS_SCHEMES:
                # Only the scheme is shown: the URL may carry a password.
                raise SettingsError(
                    f"{ENV_PREFIX}NATS_URL: every server must be a URL like nats://host:4222 "
                    f"(schemes {', '.join(_NATS_SCHEMES)}); got one with scheme {scheme[:10]!r}"
                )
            websocket.add(scheme in ("ws", "wss"))
        if len(websocket) > 1:
            raise SettingsError(
                f"{ENV_PREFIX}NATS_URL mixes websocket (ws://, wss://) and nats:// servers; "
                "list servers of one kind"
            )


_NATS_SCHEMES: tuple[str, ...] = ("nats", "tls", "ws", "wss")


@dataclasses.dataclass(frozen=True)
class HostRule:
    """One ``FLEET_HOST_RULES`` entry: limits for the hosts its pattern matches.

    Fields left None fall back to the global settings (``host_concurrency``,
    ``host_delay_s``, ``robots``).
    """

    pattern: str
    concurrency: int | None = None
    delay_s: float | None = None
    robots: str | None = None

    def matches(self, host: str, port: int) -> bool:
        """True for ``host:port`` (host lowercase, IPv6 in brackets)."""
        name, want_port = split_host_pattern(self.pattern)
        if want_port is not None and want_port != port:
            return False
        if name == "*":
            return True
        if name.startswith("*."):
            return host.endswith(name[1:])
        return host == name


def split_host_pattern(pattern: str) -> tuple[str, int | None]:
    """``host:port`` → (host, port); no port (or a bare IPv6 address) → (host, None)."""
    head, sep, tail = pattern.rpartition(":")
    if sep and tail.isdigit() and (head.endswith("]") or ":" not in head):
        return head, int(tail)
    return pattern, None


_RULE_KEYS = ("concurrency", "delay_s", "robots")


def parse_host_rules(text: str) -> tuple[HostRule, ...]:
    """Parse ``FLEET_HOST_RULES``: rules separated by ``;``, each a host pattern then
    ``key=value`` fields, e.g. ``*.intranet.lan concurrency=8 delay_s=0 robots=ignore``.

    Patterns: ``host``, ``host:port``, ``*.domain`` (any subdomain of domain), ``*``; with
    a port the rule matches that port only. The first matching rule wins.
    """
    rules: list[HostRule] = []
    for chunk in text.split(";"):
        words = chunk.split()
        if not words:
            continue
        pattern, fields = words[0].lower(), words[1:]
        where = f"{ENV_PREFIX}HOST_RULES rule {chunk.strip()!r}"
        if "=" in pattern or not pattern:
            raise SettingsError(
                f"{where} must start with a host pattern (host, host:port, *.domain)"
            )
        values: dict[str, Any] = {}
        for field in fields:
            key, sep, raw = field.partition("=")
            if not sep or key not in _RULE_KEYS:
                raise SettingsError(
                    f"{where}: {field!r} is not one of {', '.join(k + '=' for k in _RULE_KEYS)}"
                )
            try:
                if key == "concurrency":
                    values[key] = int(raw)
                elif key == "delay_s":
                    values[key] = float(raw)
                else:
                    values[key] = raw
            except ValueError:
                raise SettingsError(f"{where}: {field!r} is not a number") from None
            if key == "robots" and raw not in ("obey", "ignore"):
                raise SettingsError(f"{where}: robots must be obey or ignore")
            if key != "robots" and values[key] < 0:
                raise SettingsError(f"{where}: {key} must be >= 0 (0 means no limit)")
        rules.append(HostRule(pattern=pattern, **values))
    return tuple(rules)


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
