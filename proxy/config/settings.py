"""Settings: one place that reads YAML and the environment, validates, and says what is wrong.

Precedence: built-in defaults < YAML file < environment (setting name upper-cased) <
command-line flags. Secrets come from the environment (or a ``*_FILE`` path), never YAML.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.clients import SDK_KEY_HEADERS, ClientKeys, KeyFileError, parse_keys
from ..core.packing import HAVE_FLAC, HAVE_ZSTD
from ..core.routes import RouteRule, RuleError, build_rules
from ..core.tenants import PolicyError, TenantPolicy, Tenants, parse_policies, parse_policy
from ..store.client import RedisUrlError, check_url

SEED_CONTENT_TYPE_TTLS: dict[str, int] = {
    "welcome_message": 7 * 86400,
    "common_responses": 3 * 86400,
    "error_messages": 7 * 86400,
    "hotel_location": 7 * 86400,
    "reservation_instructions": 3 * 86400,
    "room_options": 86400,
    "availability_response": 12 * 3600,
}
# Lower factor = more protected from cleanup (the seed protects welcome/common responses).
SEED_CONTENT_TYPE_FACTORS: dict[str, float] = {
    "welcome_message": 0.3,
    "common_responses": 0.5,
    "error_messages": 0.7,
    "hotel_location": 0.7,
}
CONTENT_TYPE_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")
_SECRETS = ("upstream_api_key", "admin_token", "audio_cache_key_secret")
AUTH_MODES = ("auto", "keys", "upstream", "none")
_LOOPBACK_HOSTS = ("localhost", "::1")


class ConfigError(ValueError):
    """A setting is invalid; the message names it and what is allowed."""


@dataclass(frozen=True)
class ContentTypeRule:
    """Texts matching ``pattern`` belong to ``content_type``."""

    pattern: re.Pattern[str]
    content_type: str


def _meta(
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
    doc: str = "",
) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "choices": choices, "doc": doc}


@dataclass(frozen=True)
class Settings:
    """Every setting of the proxy. Names starting ``audio_cache_`` are the seed's."""

    # Where the proxy listens and what it fronts.
    upstream_url: str | None = field(default=None, metadata=_meta(doc="TTS API base URL"))
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_meta(lo=0, hi=65535))
    routes: tuple[Any, ...] = ("openai", "elevenlabs", "get")
    # Redis: empty means start the embedded Valkey server.
    redis_url: str | None = None
    embedded_data_dir: str | None = None
    # A dead or hung Redis must cost little: short timeouts, then the breaker opens.
    redis_socket_timeout_seconds: float = field(default=1.0, metadata=_meta(lo=0.001))
    redis_connect_timeout_seconds: float = field(default=0.5, metadata=_meta(lo=0.001))
    redis_breaker_failures: int = field(default=5, metadata=_meta(lo=1))
    redis_breaker_reset_seconds: float = field(default=2.0, metadata=_meta(lo=0.01))
    # The seed's settings.
    audio_cache_enabled: bool = True
    audio_cache_ttl_seconds: int = field(default=86400, metadata=_meta(lo=1))
    audio_cache_max_size_mb: float = field(default=100.0, metadata=_meta(lo=0.001))
    audio_cache_max_entry_size_mb: float = field(default=10.0, metadata=_meta(lo=0.001))
    audio_cache_compression_enabled: bool = True
    audio_cache_compression_threshold_kb: float = field(default=100.0, metadata=_meta(lo=0))
    audio_cache_compression_level: int = field(default=6, metadata=_meta(lo=1, hi=9))
    # What we add on top of the seed.
    audio_cache_compression_codec: str = field(
        default="flac", metadata=_meta(choices=("zlib", "zstd", "flac"))
    )
    audio_cache_compression_min_saving_percent: float = field(
        default=5.0, metadata=_meta(lo=0, hi=100)
    )
    audio_cache_key_prefix: str = "ttsc"
    audio_cache_upstream_identity: str | None = None
    audio_cache_content_type_header: str = "X-Audio-Cache-Content-Type"
    audio_cache_content_type_ttls: Mapping[str, int] = field(
        default_factory=lambda: dict(SEED_CONTENT_TYPE_TTLS)
    )
    audio_cache_content_type_rules: tuple[ContentTypeRule, ...] = ()
    audio_cache_cleanup_threshold_percent: float = field(default=95.0, metadata=_meta(lo=1, hi=100))
    audio_cache_target_size_percent: float = field(default=80.0, metadata=_meta(lo=0, hi=100))
    audio_cache_cleanup_age_weight: float = field(default=0.7, metadata=_meta(lo=0, hi=1))
    audio_cache_cleanup_frequency_weight: float = field(default=0.3, metadata=_meta(lo=0, hi=1))
    # Age counted since the last hit beats the seed's since-creation on every cache size of
    # bench/hit_ratio.py; "created" restores the seed's exact behaviour.
    audio_cache_cleanup_age_basis: str = field(
        default="last_access", metadata=_meta(choices=("created", "last_access"))
    )
    audio_cache_cleanup_content_type_factors: Mapping[str, float] = field(
        default_factory=lambda: dict(SEED_CONTENT_TYPE_FACTORS)
    )
    audio_cache_sweep_interval_seconds: float = field(default=1.0, metadata=_meta(lo=0.05))
    audio_cache_stats_flush_seconds: float = field(default=1.0, metadata=_meta(lo=0.01))
    # In-process hot tier: decoded audio of the most requested entries, per process (MB;
    # 0 disables). Kept in step with deletes everywhere through Redis pub/sub.
    audio_cache_hot_tier_mb: float = field(default=32.0, metadata=_meta(lo=0))
    # Misses: single flight across replicas (a lock and a Redis Stream per key in flight).
    coalescing_enabled: bool = True
    coalescing_wait_seconds: float = field(default=30.0, metadata=_meta(lo=0.05, hi=3600))
    coalescing_lock_seconds: float = field(default=10.0, metadata=_meta(lo=0.05, hi=3600))
    # A miss whose clients all left still completes and is stored (false: it is cancelled).
    fill_continue_after_disconnect: bool = True
    # GET <prefix>/<key> serves a cached entry to players and browsers (Content-Location).
    audio_path_prefix: str = "/audio"
    # Upstream client.
    upstream_connect_timeout_seconds: float = field(default=5.0, metadata=_meta(lo=0.01))
    upstream_read_timeout_seconds: float = field(default=60.0, metadata=_meta(lo=0.01))
    upstream_total_timeout_seconds: float = field(default=300.0, metadata=_meta(lo=0.01))
    # Stale-if-error: keep entries this long past their TTL and serve them when the upstream
    # fails (connect error, timeout, 5xx) instead of the error. 0 turns it off.
    stale_if_error_seconds: int = field(default=0, metadata=_meta(lo=0, hi=30 * 86400))
    upstream_api_key_header: str = "Authorization"
    upstream_api_key_format: str = "Bearer {key}"
    max_request_body_kb: float = field(default=1024.0, metadata=_meta(lo=1))
    # Slow clients: a connection that has not sent a whole request (headers) this long after
    # opening or after its last answer is closed; a request body must arrive within
    # client_body_timeout_seconds (408 otherwise).
    client_idle_timeout_seconds: float = field(default=15.0, metadata=_meta(lo=0.1))
    client_body_timeout_seconds: float = field(default=10.0, metadata=_meta(lo=0.1))
    log_level: str = field(
        default="INFO", metadata=_meta(choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    )
    log_format: str = field(default="text", metadata=_meta(choices=("text", "json")))
    # One line per request (request id, route, result, status, bytes, duration).
    access_log: bool = True
    # The event loop of `serve`: asyncio's own, or uvloop (pip install uvloop).
    event_loop: str = field(default="asyncio", metadata=_meta(choices=("asyncio", "uvloop")))
    # Price per million characters for tts_proxy_estimated_cost_saved_total; keys
    # "<route>:<voice>", "<route>" or "default" (most specific wins).
    cost_per_million_characters: Mapping[str, float] = field(default_factory=dict)
    # Graceful shutdown (SIGTERM): /readyz answers 503 for shutdown_delay_seconds while
    # requests are still served (load balancers notice), then the listener closes and
    # in-flight requests and fills get shutdown_drain_seconds to finish.
    shutdown_delay_seconds: float = field(default=0.0, metadata=_meta(lo=0, hi=300))
    shutdown_drain_seconds: float = field(default=25.0, metadata=_meta(lo=0, hi=3600))
    # False: /readyz stays 200 ("degraded") while Redis is down, since requests fail open.
    readiness_requires_redis: bool = True
    # Admin API: a separate listener when admin_port is set (then /admin is not served on
    # the proxy's port at all).
    admin_port: int | None = field(default=None, metadata=_meta(lo=1, hi=65535))
    admin_host: str | None = None
    # Tenants: named by a request header, else by a hash of the client's API key header.
    tenant_header: str | None = None
    tenant_api_key_header: str | None = None
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)
    tenant_default_policy: TenantPolicy = field(default_factory=TenantPolicy)
    # Prefetch: background synthesis of listed requests, with bounded concurrency.
    prefetch_file: str | None = None
    prefetch_concurrency: int = field(default=4, metadata=_meta(lo=1, hi=64))
    prefetch_max_requests: int = field(default=1000, metadata=_meta(lo=1, hi=100_000))
    prefetch_keep_warm_interval_seconds: float = field(default=60.0, metadata=_meta(lo=0.05))
    prefetch_keep_warm_margin_seconds: float = field(default=3600.0, metadata=_meta(lo=0))
    # Who may use the proxy (README, "Security"): keys (a client keys file), upstream
    # (clients bring the upstream's credential; hits only for credentials it accepted
    # lately), none (behind a gateway that authenticates). auto: keys with a keys file,
    # none with an injected upstream key (loopback only), else upstream.
    client_auth: str = field(default="auto", metadata=_meta(choices=AUTH_MODES))
    client_keys_file: str | None = None
    # Headers a client key is read from; empty: Authorization and each SDK's own header.
    client_key_headers: tuple[str, ...] = ()
    credential_verify_seconds: float = field(default=300.0, metadata=_meta(lo=1, hi=86400))
    allow_anonymous_clients: bool = False
    # With an injected upstream key, what is forwarded besides the speech routes (globs).
    passthrough_paths: tuple[str, ...] = ()
    # A bare tenant header names the tenant only when the operator says it can be trusted.
    tenant_header_trusted: bool = False
    # Redis down: requests are let through (true) or refused with 503 (false) by limits.
    limits_fail_open: bool = True
    # Secrets: environment only.
    upstream_api_key: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    audio_cache_key_secret: str | None = field(default=None, repr=False)

    @property
    def rules(self) -> tuple[RouteRule, ...]:
        """The compiled route rules (validated when the settings were loaded)."""
        return build_rules(self.routes)

    @property
    def max_size_bytes(self) -> int:
        return int(self.audio_cache_max_size_mb * 1024 * 1024)

    @property
    def max_entry_bytes(self) -> int:
        return int(self.audio_cache_max_entry_size_mb * 1024 * 1024)

    @property
    def compression_threshold_bytes(self) -> int:
        return int(self.audio_cache_compression_threshold_kb * 1024)

    def ttl_for(self, content_type: str | None) -> int:
        """The seed's TTL table, then the default."""
        if content_type and content_type in self.audio_cache_content_type_ttls:
            return self.audio_cache_content_type_ttls[content_type]
        return self.audio_cache_ttl_seconds

    @property
    def tenancy(self) -> Tenants:
        """Who a request belongs to and the policies that apply."""
        return Tenants(
            header=self.tenant_header,
            api_key_header=self.tenant_api_key_header,
            policies=self.tenants,
            default=self.tenant_default_policy,
        )

    @property
    def auth_mode(self) -> str:
        """The client authentication in force, ``auto`` resolved."""
        if self.client_auth != "auto":
            return self.client_auth
        if self.client_keys_file:
            return "keys"
        return "none" if self.upstream_api_key else "upstream"

    @property
    def key_headers(self) -> tuple[str, ...]:
        """Where client keys and upstream credentials are read from, lower-cased."""
        return tuple(h.lower() for h in self.client_key_headers) or SDK_KEY_HEADERS

    @property
    def content_classes(self) -> frozenset[str]:
        """The content types a client may name: those the configuration knows."""
        return frozenset(
            {"default", *self.audio_cache_content_type_ttls,
             *self.audio_cache_cleanup_content_type_factors,
             *(r.content_type for r in self.audio_cache_content_type_rules)}
        )  # fmt: skip

    def classify(self, text: str) -> str | None:
        """The content type the YAML rules give this text, if any."""
        for rule in self.audio_cache_content_type_rules:
            if rule.pattern.search(text):
                return rule.content_type
        return None

    def public(self) -> dict[str, Any]:
        """The effective settings for display, secrets masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRETS:
                value = "***" if value else None
            elif f.name == "audio_cache_content_type_rules":
                value = [
                    {"pattern": r.pattern.pattern, "content_type": r.content_type} for r in value
                ]
            elif f.name == "tenants":
                value = {name: policy.to_json() for name, policy in value.items()}
            elif isinstance(value, TenantPolicy):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _number(name: str, value: Any, kind: type) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    meta = _FIELDS[name].metadata
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{name}: must be {bounds}, got {value!r}")
    return float(number) if kind is float else int(number)


def _content_type_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not CONTENT_TYPE_NAME.match(value):
        raise ConfigError(f"{name}: content type {value!r} must match {CONTENT_TYPE_NAME.pattern}")
    return value


def _coerce(name: str, value: Any) -> Any:
    """One raw value (from YAML, or a string from the environment) to its setting's type."""
    f = _FIELDS[name]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
    if isinstance(value, str) and not isinstance(default, str | None | bool | int | float):
        try:  # structured settings given as YAML/JSON text in the environment
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not valid YAML/JSON: {_yaml_problem(exc)}") from None
    if f.type in ("str | None", "int | None") and value in (None, ""):
        return None
    if f.type == "int | None":
        return _number(name, value, int)
    if f.type == "bool":
        return _bool(name, value)
    if f.type == "int":
        return _number(name, value, int)
    if f.type == "float":
        return _number(name, value, float)
    if f.type in ("str", "str | None"):
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        text = str(value)
        choices = f.metadata.get("choices") or ()
        if choices and text not in choices:
            raise ConfigError(f"{name}: must be one of {list(choices)}, got {text!r}")
        return text
    if name in ("client_key_headers", "passthrough_paths"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{name}: expected a list of strings")
        if name == "client_key_headers":
            for header in value:
                if not re.match(r"^[A-Za-z0-9-]{1,64}$", header):
                    raise ConfigError(f"{name}: expected HTTP header names, got {header!r}")
        elif any(not v.startswith("/") for v in value):
            raise ConfigError(f"{name}: each entry must be a path starting with /")
        return tuple(value)
    if name == "routes":
        if not isinstance(value, list) or not value:
            raise ConfigError("routes: expected a non-empty list of preset names or rules")
        try:
            build_rules(value)
        except RuleError as exc:
            raise ConfigError(f"routes: {exc}") from None
        return tuple(value)
    if name == "audio_cache_content_type_ttls":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping of content type to seconds")
        return {
            _content_type_name(name, k): int(_number("audio_cache_ttl_seconds", v, int))
            for k, v in value.items()
        }
    if name == "audio_cache_cleanup_content_type_factors":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping of content type to a factor")
        out: dict[str, float] = {}
        for k, v in value.items():
            factor = _number("audio_cache_cleanup_age_weight", v, float)
            out[_content_type_name(name, k)] = factor
        return out
    if name == "cost_per_million_characters":
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{name}: expected a mapping of route, route:voice or default to a price"
            )
        prices: dict[str, float] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"{name}.{k}: expected a price of at least 0, got {v!r}")
            prices[str(k)] = float(v)
        return prices
    if name in ("tenants", "tenant_default_policy"):
        try:
            return parse_policies(value) if name == "tenants" else parse_policy(value, name)
        except PolicyError as exc:
            raise ConfigError(str(exc)) from None
    if name == "audio_cache_content_type_rules":
        return tuple(_content_type_rule(i, item) for i, item in enumerate(value or []))
    raise ConfigError(f"{name}: cannot be set this way")  # pragma: no cover


def _content_type_rule(index: int, item: Any) -> ContentTypeRule:
    where = f"audio_cache_content_type_rules[{index}]"
    if not isinstance(item, Mapping) or set(item) != {"pattern", "content_type"}:
        raise ConfigError(f"{where}: expected {{pattern: REGEX, content_type: NAME}}")
    try:
        pattern = re.compile(str(item["pattern"]), re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{where}.pattern: invalid regex: {exc}") from None
    return ContentTypeRule(
        pattern, _content_type_name(f"{where}.content_type", item["content_type"])
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {_yaml_problem(exc)}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of settings")
    return document


def _secret(name: str, env: Mapping[str, str]) -> str | None:
    value = env.get(name.upper())
    path = env.get(f"{name.upper()}_FILE")
    if value is None and path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name.upper()}_FILE: cannot read {path}: {exc.strerror}") from None
    return value or None


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the YAML file, then the environment, then explicit overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        document = _read_yaml(Path(path))
        for name, value in document.items():
            if name in _SECRETS:
                raise ConfigError(
                    f"{name}: secrets are never read from YAML; set {name.upper()} "
                    f"or {name.upper()}_FILE in the environment"
                )
            if name not in _FIELDS:
                raise ConfigError(f"{name}: unknown setting (see config/default.yaml)")
            raw[name] = value
    for name in _FIELDS:
        if name not in _SECRETS and name.upper() in env:
            raw[name] = env[name.upper()]
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values = {name: _coerce(name, value) for name, value in raw.items()}
    for name in _SECRETS:
        values[name] = _secret(name, env)
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def _check_consistency(s: Settings) -> None:
    if s.audio_cache_compression_codec == "flac" and not HAVE_FLAC:
        raise ConfigError(
            "audio_cache_compression_codec: flac needs the 'soundfile' package, or use zlib"
        )
    if s.audio_cache_compression_codec == "zstd" and not HAVE_ZSTD:
        raise ConfigError(
            "audio_cache_compression_codec: zstd needs the 'zstandard' package "
            "(pip install 'tts-cache-proxy[zstd]'), or use zlib"
        )
    if s.audio_cache_target_size_percent >= s.audio_cache_cleanup_threshold_percent:
        raise ConfigError(
            "audio_cache_target_size_percent: must be below audio_cache_cleanup_threshold_percent"
        )
    if s.upstream_url is not None and not re.match(r"^https?://[^/\s]+", s.upstream_url):
        raise ConfigError(
            f"upstream_url: expected http(s)://host[:port][/path], got {s.upstream_url!r}"
        )
    if s.redis_url is not None and not re.match(
        r"^(redis|rediss|unix|redis\+cluster|rediss\+cluster)://", s.redis_url
    ):
        raise ConfigError(
            "redis_url: expected redis://, rediss://, unix:// or redis+cluster:// URL, "
            f"got {s.redis_url!r}"
        )
    if s.redis_url is not None:
        try:
            check_url(s.redis_url)
        except RedisUrlError as exc:
            raise ConfigError(str(exc)) from None
    if not re.match(r"^(/[A-Za-z0-9_.~-]+)+$", s.audio_path_prefix):
        raise ConfigError(
            f"audio_path_prefix: expected a path like /audio, got {s.audio_path_prefix!r}"
        )
    for name in ("tenant_header", "tenant_api_key_header"):
        value = getattr(s, name)
        if value is not None and not re.match(r"^[A-Za-z0-9-]{1,64}$", value):
            raise ConfigError(f"{name}: expected an HTTP header name, got {value!r}")
    if s.admin_port is not None and s.admin_port == s.port:
        raise ConfigError("admin_port: must differ from port (or be null to serve /admin on it)")
    if s.prefetch_file is not None:
        from ..core.prefetch_items import ItemError, load_file

        try:
            load_file(s.prefetch_file, s.rules, limit=s.prefetch_max_requests)
        except ItemError as exc:
            raise ConfigError(f"prefetch_file: {exc}") from None
    _check_client_auth(s)
    if not re.match(r"^[A-Za-z0-9_.-]{1,32}$", s.audio_cache_key_prefix):
        raise ConfigError("audio_cache_key_prefix: 1-32 characters of A-Z a-z 0-9 _ . -")


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener on ``host``."""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def load_client_keys(path: str) -> ClientKeys:
    """The client keys file at ``path``; ConfigError naming the bad entry and field."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"client_keys_file: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"client_keys_file {path}: not valid YAML: {_yaml_problem(exc)}"
        ) from None
    try:
        return parse_keys(document, source=f"client_keys_file {path}")
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


def _check_client_auth(s: Settings) -> None:
    mode = s.auth_mode
    if mode == "keys":
        if not s.client_keys_file:
            raise ConfigError(
                "client_keys_file: client_auth keys needs a keys file (CLIENT_KEYS_FILE)"
            )
        load_client_keys(s.client_keys_file)
    if mode == "upstream" and s.upstream_api_key:
        raise ConfigError(
            "client_auth: upstream forwards each client's own credential, and UPSTREAM_API_KEY "
            "would replace it: use client_auth keys (with CLIENT_KEYS_FILE) or none"
        )
    if (
        mode == "none"
        and s.upstream_api_key
        and not is_loopback(s.host)
        and not s.allow_anonymous_clients
    ):
        raise ConfigError(
            f"client_auth: none with UPSTREAM_API_KEY on host {s.host} lets anyone who reaches "
            "the port synthesize on your account: use client_auth keys with CLIENT_KEYS_FILE, "
            "or set allow_anonymous_clients: true if a gateway in front authenticates"
        )
