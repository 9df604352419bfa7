"""Configuration: loaded once from TOML, validated, with environment overrides.

Errors name the file and the field (``config/example.toml: policy.reservation must be one
of strict, estimate, none``). Secrets come only from the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.core.money import AmountError, parse_usd
from proxy.core.pricing import Family, PriceTable, family_from_toml, most_expensive
from proxy.core.vocabulary import Policy


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace_s: float = 30.0
    # on SIGTERM, readiness answers 503 at once and the listener stays open this long (the
    # load balancer sees the pod leave), before open requests get shutdown_grace_s to finish
    drain_delay_s: float = 5.0
    # how members reach the proxy ("https://claude-proxy.example.com"): refusals name the usage
    # page under it; "" = the host the request came to
    public_url: str = ""
    header_timeout_s: float = 30.0  # a request's line and headers must arrive within this
    body_timeout_s: float = 120.0  # and its body within this
    keepalive_timeout_s: float = 75.0  # an idle kept-alive connection is closed after this
    # what one connection may hold of a request's line and headers (431 beyond), and what every
    # connection may hold of them at once in this process
    max_header_bytes: int = 64 * 1024
    max_header_bytes_total: int = 32 * 1024 * 1024
    # open connections in all (0: three quarters of the process's open-files limit) and from
    # one client address (0: a quarter of that, at least 64; raise it when many members come
    # through one address, a NAT or a load balancer); over either, a new connection is
    # answered 503 and closed
    max_connections: int = 0
    max_connections_per_client: int = 0
    # a stream's write to a member who stopped reading: after this, the member counts as gone
    write_timeout_s: float = 60.0
    # decoded compressed request bodies held at once in this process (a 413's cousin: a
    # retryable 429 beyond, so that small gzip bodies cannot add up to gigabytes)
    max_decoded_bytes_in_flight: int = 256 * 1024 * 1024
    # serve /metrics on this port of its own (0: on the members' port, as the probes)
    metrics_port: int = 0


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    key_prefix: str = "eup"
    # a Redis slower than this counts as unavailable (the whole call, its retries included)
    timeout_s: float = 2.0
    # each try: the client tries a call three times at most (two retries), so a third
    socket_timeout_s: float = 2.0 / 3
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    url: str = "https://api.anthropic.com"
    api_key_env: str = "UPSTREAM_API_KEY"
    api_key: str = ""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    max_connections: int = 4096
    # an org's upstream_credential must name a variable starting with this (and never one of
    # the proxy's own secrets): the operator decides which variables hold orgs' keys
    credential_prefix: str = "UPSTREAM_API_KEY_"
    # requests of one org in flight upstream at once (0: half of max_connections), so that
    # no org can hold the connections every other org needs
    max_connections_per_org: int = 0


def allowed_credential(upstream: UpstreamConfig, name: str) -> bool:
    """Whether an org may name ``name`` as its upstream credential."""
    return (
        name.startswith(upstream.credential_prefix)
        and len(name) > len(upstream.credential_prefix)
        and name not in PROXY_VARIABLES
        and name != upstream.api_key_env
    )


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    reservation: str = Policy.ESTIMATE
    fail_mode: str = "closed"
    reservation_ttl_s: int = 900
    # how long a finished request's record stays in Redis for replays: redis-py's retries
    # (seconds), a restarted worker's journal (minutes); past it a replay is checked against
    # the durable ledger, or refused and counted (docs/operations.md, "Replays")
    replay_window_s: int = 3600
    # how long a check API request id keeps its idempotency (Stripe keeps 24 h): first-party
    # backends retry on schedules of their own
    check_id_window_s: int = 86400
    journal_dir: str = "journal"
    # record each request in flight in the journal (a killed worker's requests are charged
    # from it); false: they are not, and a killed worker's requests in flight are charged
    # nothing (their reservations are reclaimed after reservation_ttl_s)
    journal_in_flight: bool = True
    # under fail_open, only a key this process checked in Redis within this many seconds is let
    # through (a bounded local cache): a made-up key is refused even while Redis is down
    fail_open_known_s: int = 3600


SESSION_WINDOW_S = 18000  # 5 hours
WEEKLY_WINDOW_S = 604800  # 7 days


@dataclass(frozen=True, slots=True)
class TierConfig:
    name: str
    session_allowance: int  # nano-USD of API-equivalent cost
    weekly_allowance: int
    session_window_s: int = SESSION_WINDOW_S
    weekly_window_s: int = WEEKLY_WINDOW_S


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    provider: str = "auto-approve"
    webhook_url: str = ""
    webhook_timeout_s: float = 10.0
    webhook_attempts: int = 3


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    database_url: str = "postgresql://127.0.0.1:5432/extra_usage"
    close_after_s: int = 86400
    # the ledger sink's /metrics and /healthz (0: not served; --metrics-port overrides)
    metrics_port: int = 0


@dataclass(frozen=True, slots=True)
class NotificationsConfig:
    webhook_url: str = ""  # new extra-usage requests are announced here (empty: not announced)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    # OTLP/HTTP traces endpoint ("http://otel-collector:4318/v1/traces"); "" = no traces
    otlp_endpoint: str = ""
    service_name: str = "extra-usage-proxy"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    org_labels: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    redis: RedisConfig
    upstream: UpstreamConfig
    policy: PolicyConfig
    tiers: dict[str, TierConfig]
    payments: PaymentsConfig
    ledger: LedgerConfig
    metrics: MetricsConfig
    prices: PriceTable
    notifications: NotificationsConfig = NotificationsConfig()
    tracing: TracingConfig = TracingConfig()
    operator_token: str = ""
    service_token: str = ""
    source: str = "<defaults>"
    extra: dict[str, Any] = field(default_factory=dict)


RESERVATION_POLICIES = Policy.ALL
PUBLIC_URL = re.compile(r"^https?://[A-Za-z0-9.\-:\[\]]+(/[\w./-]*)?\Z")
ENV_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{3,63}\Z")
# the proxy's own secrets and endpoints: never an org's upstream credential
PROXY_VARIABLES = frozenset(
    {"OPERATOR_TOKEN", "SERVICE_TOKEN", "DATABASE_URL", "REDIS_URL", "UPSTREAM_URL"}
)
# the defaults, stated once: the dataclasses above; the loader falls back on these
_SERVER = ServerConfig()
_REDIS = RedisConfig()
_UPSTREAM = UpstreamConfig()
_POLICY = PolicyConfig()
_PAYMENTS = PaymentsConfig()
_LEDGER = LedgerConfig()
_METRICS = MetricsConfig()
_NOTIFICATIONS = NotificationsConfig()
_TRACING = TracingConfig()

FAIL_MODES = ("closed", "open")
PAYMENT_PROVIDERS = ("auto-approve", "webhook")


class _Reader:
    """Reads one TOML table, checking types and remembering which keys it consumed."""

    def __init__(self, source: str, path: str, table: Mapping[str, Any]) -> None:
        self.source, self.path, self.table = source, path, table
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where(key)} {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"must be {_kind_name(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {_kind_name(kinds)} (got {value!r})")
        return value

    def positive(self, key: str, default: float, *, integer: bool = False) -> Any:
        value = self.get(key, int if integer else (int, float), default)
        if value <= 0:
            raise self.fail(key, f"must be greater than 0 (got {value!r})")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def usd(self, key: str, default: str | None) -> int:
        self.used.add(key)
        value = self.table.get(key, default)
        if value is None:
            raise self.fail(key, "is required")
        try:
            return parse_usd(value, field=self.where(key))
        except AmountError as exc:
            raise ConfigError(f"{self.source}: {exc}") from exc

    def done(self) -> None:
        unknown = set(self.table) - self.used
        if unknown:
            raise self.fail(sorted(unknown)[0], "is not a known field")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        dict: "a table",
        list: "a list",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _override(env: Mapping[str, str], name: str, value: str) -> str:
    """The environment wins over the file, for endpoints and secrets."""
    return env.get(name) or value


def _section(source: str, doc: Mapping[str, Any], name: str) -> _Reader:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {name} must be a table")
    return _Reader(source, name, value)


_DEFAULT_TIERS = {
    "standard": {"session_allowance": "4.00", "weekly_allowance": "40.00"},
    "premium": {"session_allowance": "20.00", "weekly_allowance": "200.00"},
}


def load_default_prices() -> dict[str, Any]:
    text = resources.files("proxy.defaults").joinpath("prices.toml").read_text("utf-8")
    prices: dict[str, Any] = tomllib.loads(text)["prices"]
    return prices


def parse_config(
    doc: Mapping[str, Any], source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed TOML document and apply the environment overrides."""
    env = secret_files(os.environ if env is None else env)
    known = {
        "server",
        "redis",
        "upstream",
        "policy",
        "tiers",
        "payments",
        "ledger",
        "prices",
        "pricing",
        "metrics",
        "notifications",
        "tracing",
    }
    for key in doc:
        if key not in known:
            raise ConfigError(f"{source}: {key} is not a known section")

    r = _section(source, doc, "server")
    server = ServerConfig(
        host=r.get("host", str, _SERVER.host),
        port=r.get("port", int, _SERVER.port),
        max_body_bytes=r.positive("max_body_bytes", _SERVER.max_body_bytes, integer=True),
        shutdown_grace_s=float(r.positive("shutdown_grace_s", _SERVER.shutdown_grace_s)),
        drain_delay_s=float(r.get("drain_delay_s", (int, float), _SERVER.drain_delay_s)),
        public_url=r.get("public_url", str, _SERVER.public_url).rstrip("/"),
        header_timeout_s=float(r.positive("header_timeout_s", _SERVER.header_timeout_s)),
        body_timeout_s=float(r.positive("body_timeout_s", _SERVER.body_timeout_s)),
        keepalive_timeout_s=float(r.positive("keepalive_timeout_s", _SERVER.keepalive_timeout_s)),
        max_header_bytes=r.positive("max_header_bytes", _SERVER.max_header_bytes, integer=True),
        max_header_bytes_total=r.positive(
            "max_header_bytes_total", _SERVER.max_header_bytes_total, integer=True
        ),
        max_connections_per_client=r.get(
            "max_connections_per_client", int, _SERVER.max_connections_per_client
        ),
        max_connections=r.get("max_connections", int, _SERVER.max_connections),
        write_timeout_s=float(r.positive("write_timeout_s", _SERVER.write_timeout_s)),
        max_decoded_bytes_in_flight=r.positive(
            "max_decoded_bytes_in_flight", _SERVER.max_decoded_bytes_in_flight, integer=True
        ),
        metrics_port=r.get("metrics_port", int, _SERVER.metrics_port),
    )
    for name in ("max_connections", "max_connections_per_client"):
        if getattr(server, name) < 0:
            raise r.fail(name, "must be 0 (derived: see config/example.toml) or more")
    if not 0 <= server.metrics_port <= 65535 or (
        server.metrics_port and server.metrics_port == server.port
    ):
        raise r.fail("metrics_port", "must be 0 or a port other than server.port")
    if server.public_url and not PUBLIC_URL.match(server.public_url):
        raise r.fail("public_url", f"must be an http(s) URL or empty (got {server.public_url!r})")
    if not 0 <= server.port <= 65535:
        raise r.fail("port", f"must be between 0 and 65535 (got {server.port})")
    r.done()

    r = _section(source, doc, "redis")
    redis = RedisConfig(
        url=_override(env, "REDIS_URL", r.get("url", str, _REDIS.url)),
        cluster=r.get("cluster", bool, _REDIS.cluster),
        key_prefix=r.get("key_prefix", str, _REDIS.key_prefix),
        timeout_s=float(r.positive("timeout_s", _REDIS.timeout_s)),
        max_connections=r.positive("max_connections", _REDIS.max_connections, integer=True),
    )
    _check_url(r, "url", redis.url, ("redis", "rediss", "unix"), "REDIS_URL")
    # each try gets a third of the budget unless set (the client tries three times at most)
    per_try = float(r.positive("socket_timeout_s", redis.timeout_s / 3))
    redis = replace(redis, socket_timeout_s=per_try)
    if not redis.key_prefix or any(c in redis.key_prefix for c in "{}: "):
        raise r.fail("key_prefix", "must be a non-empty word without braces, colons or spaces")
    r.done()

    r = _section(source, doc, "upstream")
    api_key_env = r.get("api_key_env", str, _UPSTREAM.api_key_env)
    upstream = UpstreamConfig(
        url=_override(env, "UPSTREAM_URL", r.get("url", str, _UPSTREAM.url)).rstrip("/"),
        api_key_env=api_key_env,
        api_key=env.get("UPSTREAM_API_KEY") or env.get(api_key_env, ""),
        connect_timeout_s=float(r.positive("connect_timeout_s", _UPSTREAM.connect_timeout_s)),
        read_timeout_s=float(r.positive("read_timeout_s", _UPSTREAM.read_timeout_s)),
        max_connections=r.positive("max_connections", _UPSTREAM.max_connections, integer=True),
        credential_prefix=r.get("credential_prefix", str, _UPSTREAM.credential_prefix),
        max_connections_per_org=r.get(
            "max_connections_per_org", int, _UPSTREAM.max_connections_per_org
        ),
    )
    if upstream.max_connections_per_org < 0:
        raise r.fail("max_connections_per_org", "must be 0 (half of max_connections) or more")
    if not upstream.max_connections_per_org:
        upstream = replace(upstream, max_connections_per_org=max(1, upstream.max_connections // 2))
    if not ENV_PREFIX.match(upstream.credential_prefix):
        raise r.fail(
            "credential_prefix",
            "must be the start of a variable name: letters, digits and _, at least 4 "
            f"(got {upstream.credential_prefix!r})",
        )
    parts = urlsplit(upstream.url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise r.fail(
            "url", f"must be an http:// or https:// URL with a host (got {upstream.url!r})"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise r.fail("url", f"has an invalid port (got {upstream.url!r})") from None
    r.done()

    r = _section(source, doc, "policy")
    policy = PolicyConfig(
        reservation=r.choice("reservation", RESERVATION_POLICIES, _POLICY.reservation),
        fail_mode=r.choice("fail_mode", FAIL_MODES, _POLICY.fail_mode),
        reservation_ttl_s=r.positive("reservation_ttl_s", _POLICY.reservation_ttl_s, integer=True),
        replay_window_s=r.positive("replay_window_s", _POLICY.replay_window_s, integer=True),
        check_id_window_s=r.positive("check_id_window_s", _POLICY.check_id_window_s, integer=True),
        journal_dir=r.get("journal_dir", str, _POLICY.journal_dir),
        journal_in_flight=r.get("journal_in_flight", bool, _POLICY.journal_in_flight),
        fail_open_known_s=r.positive("fail_open_known_s", _POLICY.fail_open_known_s, integer=True),
    )
    if "op_retention_s" in r.table:
        raise r.fail("op_retention_s", "was replaced by replay_window_s (seconds)")
    if policy.reservation_ttl_s <= upstream.read_timeout_s:
        raise r.fail(
            "reservation_ttl_s",
            "must be longer than upstream.read_timeout_s "
            f"({policy.reservation_ttl_s} <= {upstream.read_timeout_s:g})",
        )
    r.done()

    tiers_doc = doc.get("tiers", _DEFAULT_TIERS)
    if not isinstance(tiers_doc, dict) or not tiers_doc:
        raise ConfigError(f"{source}: tiers must be a table of at least one tier")
    tiers: dict[str, TierConfig] = {}
    for name, raw in tiers_doc.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: tiers.{name} must be a table")
        if not name.isidentifier() or "|" in name:
            raise ConfigError(f"{source}: tiers.{name} is not a valid tier name")
        t = _Reader(source, f"tiers.{name}", raw)
        defaults = _DEFAULT_TIERS.get(name, {})
        tiers[name] = TierConfig(
            name=name,
            session_allowance=t.usd("session_allowance", defaults.get("session_allowance")),
            weekly_allowance=t.usd("weekly_allowance", defaults.get("weekly_allowance")),
            session_window_s=t.positive("session_window_s", SESSION_WINDOW_S, integer=True),
            weekly_window_s=t.positive("weekly_window_s", WEEKLY_WINDOW_S, integer=True),
        )
        t.done()

    r = _section(source, doc, "payments")
    payments = PaymentsConfig(
        provider=r.choice("provider", PAYMENT_PROVIDERS, _PAYMENTS.provider),
        webhook_url=r.get("webhook_url", str, _PAYMENTS.webhook_url),
        webhook_timeout_s=float(r.positive("webhook_timeout_s", _PAYMENTS.webhook_timeout_s)),
        webhook_attempts=r.positive("webhook_attempts", _PAYMENTS.webhook_attempts, integer=True),
    )
    if payments.provider == "webhook" and not payments.webhook_url.startswith(
        ("http://", "https://")
    ):
        raise r.fail("webhook_url", 'must be an http(s) URL when provider is "webhook"')
    r.done()

    r = _section(source, doc, "ledger")
    ledger = LedgerConfig(
        database_url=_override(
            env,
            "DATABASE_URL",
            r.get("database_url", str, _LEDGER.database_url),
        ),
        close_after_s=r.positive("close_after_s", _LEDGER.close_after_s, integer=True),
        metrics_port=r.get("metrics_port", int, _LEDGER.metrics_port),
    )
    _check_url(r, "database_url", ledger.database_url, ("postgresql", "postgres"), "DATABASE_URL")
    r.done()

    r = _section(source, doc, "metrics")
    metrics = MetricsConfig(org_labels=r.get("org_labels", bool, _METRICS.org_labels))
    r.done()

    r = _section(source, doc, "notifications")
    notifications = NotificationsConfig(
        webhook_url=r.get("webhook_url", str, _NOTIFICATIONS.webhook_url)
    )
    if notifications.webhook_url and not notifications.webhook_url.startswith(
        ("http://", "https://")
    ):
        raise r.fail("webhook_url", "must be an http(s) URL or empty")
    r.done()

    r = _section(source, doc, "tracing")
    tracing = TracingConfig(
        otlp_endpoint=r.get("otlp_endpoint", str, _TRACING.otlp_endpoint),
        service_name=r.get("service_name", str, _TRACING.service_name),
    )
    if tracing.otlp_endpoint:
        _check_url(r, "otlp_endpoint", tracing.otlp_endpoint, ("http", "https"), "-")
    r.done()

    prices = _prices(source, doc)
    return Config(
        server=server,
        redis=redis,
        upstream=upstream,
        policy=policy,
        tiers=tiers,
        payments=payments,
        ledger=ledger,
        metrics=metrics,
        prices=prices,
        notifications=notifications,
        tracing=tracing,
        operator_token=env.get("OPERATOR_TOKEN", ""),
        service_token=env.get("SERVICE_TOKEN", ""),
        source=source,
    )


def _prices(source: str, doc: Mapping[str, Any]) -> PriceTable:
    raw: dict[str, Any] = dict(load_default_prices())
    overrides = doc.get("prices", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: prices must be a table of model families")
    raw.update(overrides)
    families: dict[str, Family] = {}
    for name, table in raw.items():
        where = f"prices.{name}" if name.isidentifier() else f'prices."{name}"'
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {where} must be a table")
        try:
            families[name] = family_from_toml(name, table, where)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    r = _section(source, doc, "pricing")
    unknown = r.get("unknown_model", str, "") or most_expensive(families)
    if unknown not in families:
        raise r.fail("unknown_model", f"must name a family of the price table (got {unknown!r})")
    r.done()
    return PriceTable(families, unknown)


# the variables that may come from a file (NAME_FILE): the proxy's own secrets and
# endpoints, and the orgs' upstream credentials (UPSTREAM_API_KEY_*)
SECRET_VARIABLES = PROXY_VARIABLES | {"UPSTREAM_API_KEY", "EUP_SECRETS_KEY"}
SECRET_PREFIX = "UPSTREAM_API_KEY_"


def secret_files(env: Mapping[str, str]) -> dict[str, str]:
    """The environment with every secret that comes from a file: ``NAME_FILE`` (a path, as a
    Kubernetes secret mounted as a file) gives ``NAME`` when ``NAME`` itself is not set, for
    the proxy's secrets and the orgs' upstream credentials; the file's content without its
    final newline."""
    out = dict(env)
    for key, path in env.items():
        name = key.removesuffix("_FILE")
        if name == key or out.get(name):
            continue
        if name not in SECRET_VARIABLES and not name.startswith(SECRET_PREFIX):
            continue
        try:
            out[name] = Path(path).read_text("utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path!r} ({exc.strerror})") from exc
    return out


def _check_url(r: _Reader, key: str, url: str, schemes: tuple[str, ...], env: str) -> None:
    """A URL the process will connect to: a known scheme and a host (or a socket path)."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise r.fail(
            key,
            f"must be a URL such as {schemes[0]}://host:port (schemes: {', '.join(schemes)}; "
            f"{env} overrides it) — got {url[:80]!r}",
        )


def missing_secrets(config: Config) -> list[str]:
    """What ``serve`` will run without: each a warning line (the proxy still starts)."""
    out = []
    if not config.upstream.api_key:
        env = config.upstream.api_key_env
        named = "UPSTREAM_API_KEY" + (f" (or {env})" if env != "UPSTREAM_API_KEY" else "")
        out.append(
            f"{named} is not set: only orgs with an upstream_credential of their own can be served"
        )
    if not config.operator_token:
        out.append("OPERATOR_TOKEN is not set: no one can provision organizations")
    if not config.service_token:
        out.append("SERVICE_TOKEN is not set: the check API refuses every call")
    return out


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate a TOML file (None: the built-in defaults)."""
    if path is None:
        return parse_config({}, "<defaults>", env)
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return parse_config(doc, str(p), env)
