"""Reading settings: defaults < YAML file < environment < explicit overrides.

Secrets come from the environment (or a ``*_FILE`` path), never YAML. Every problem is
collected, each naming its setting (nested ones by path, ``tenants.acme.quota_mb``), and
raised together. YAML values keep their YAML type (a quoted "8080" is not a port); the
environment is text by nature, so its values are parsed, strictly.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..core.routes import PRESETS, RuleError, build_rules
from ..core.segments import compile_patterns
from ..core.tenants import TENANT_ID, PolicyError, TenantPolicy, parse_policy
from .checks import run_checks
from .errors import ConfigError, ConfigErrors, raise_all
from .files import read_yaml, yaml_problem
from .model import CONTENT_TYPE_NAME, FIELDS, SECRETS, ContentTypeRule, Settings, default_of

log = logging.getLogger("proxy.config")

_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_ENV_INT = re.compile(r"^[+-]?[0-9]+$")
_ENV_TRUE = ("1", "true", "yes", "on")
_ENV_FALSE = ("0", "false", "no", "off")
_POLICY_KEYS = tuple(f.name for f in dataclasses.fields(TenantPolicy))
# Environment names that share a setting's first word but are not settings: secret files
# are known names; these are other programs' (Kubernetes service links name a Service
# "redis" REDIS_PORT, REDIS_SERVICE_HOST, REDIS_PORT_6379_TCP_ADDR...), and OpenTelemetry's
# OTEL_* variables, read by its SDK (OTEL_ENABLED is the proxy's setting otel_enabled).
_FOREIGN_ENV = re.compile(
    r"^(PROMETHEUS_MULTIPROC_DIR|OTEL_(?!ENABLED$)[A-Z0-9_]+"
    r"|[A-Z0-9_]+_SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?"
    r"|[A-Z0-9_]+_PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)


def env_name(setting: str) -> str:
    """The environment variable of a setting."""
    return setting.upper()


def _did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _env_names() -> set[str]:
    names = {env_name(n) for n in FIELDS}
    names |= {f"{env_name(n)}_FILE" for n in SECRETS}
    return names


def _env_prefixes() -> tuple[str, ...]:
    """The first word of every setting with more than one: AUDIO_, UPSTREAM_, REDIS_..."""
    return tuple(sorted({env_name(n).split("_")[0] + "_" for n in FIELDS if "_" in n}))


def unknown_env_warnings(env: Mapping[str, str]) -> list[str]:
    """A warning for each environment name that looks like a setting but is none."""
    known = _env_names()
    prefixes = _env_prefixes()
    out = []
    for name in sorted(env):
        if name in known or not name.startswith(prefixes) or _FOREIGN_ENV.match(name):
            continue
        out.append(f"{name}: not a setting, ignored{_did_you_mean(name, known)}")
    return out


# --- one value to its setting's type -------------------------------------------------


class _Env(str):
    """A value from the environment: text to parse, not a YAML string."""


def _bounds(name: str, number: float, value: Any, lo: Any, hi: Any) -> None:
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{name}: must be {bounds}, got {value!r}")


def _number(name: str, value: Any, kind: type, *, lo: Any = None, hi: Any = None) -> Any:
    """An int or float: environment text parsed, anything else already of the right type."""
    number: float
    if isinstance(value, _Env):
        text = value.strip()
        if kind is int and _ENV_INT.match(text):
            number = int(text)
        elif kind is float:
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"{name}: expected float, got {str(value)!r}") from None
            if not math.isfinite(number):
                raise ConfigError(f"{name}: expected a finite number, got {str(value)!r}")
        else:
            raise ConfigError(f"{name}: expected int, got {str(value)!r}")
    elif isinstance(value, bool) or not isinstance(value, int | float):
        hint = " (a string: unquote it)" if isinstance(value, str) and _numeric(value) else ""
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}{hint}")
    elif kind is int and isinstance(value, float):
        raise ConfigError(f"{name}: expected int (a whole number), got {value!r}")
    else:
        number = value
    _bounds(name, number, value, lo, hi)
    return float(number) if kind is float else int(number)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _Env):
        word = value.strip().lower()
        if word in _ENV_TRUE or word in _ENV_FALSE:
            return word in _ENV_TRUE
        raise ConfigError(f"{name}: expected true or false, got {str(value)!r}")
    raise ConfigError(f"{name}: expected true or false (unquoted), got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    """One raw value (from YAML, an override, or ``_Env`` text) to its setting's type."""
    f = FIELDS[name]
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    if isinstance(value, _Env) and not isinstance(default_of(f), str | None | bool | int | float):
        try:  # structured settings given as YAML/JSON text in the environment
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not valid YAML/JSON: {yaml_problem(exc)}") from None
    if f.type in ("str | None", "int | None") and value in (None, ""):
        return None
    if f.type == "bool":
        return _bool(name, value)
    if f.type in ("int", "int | None"):
        return _number(name, value, int, lo=lo, hi=hi)
    if f.type == "float":
        return _number(name, value, float, lo=lo, hi=hi)
    if f.type in ("str", "str | None"):
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, int | float) else ""
            raise ConfigError(f"{name}: expected a string, got {value!r}{hint}")
        choices = f.metadata.get("choices") or ()
        if choices and value not in choices:
            raise ConfigError(
                f"{name}: must be one of {list(choices)}, got {str(value)!r}"
                + _did_you_mean(value, choices)
            )
        return str(value)
    return _STRUCTURED[name](name, value)


def _collect(problems: list[str], fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list of strings, got {value!r}")
    return value


def _header_list(name: str, value: Any) -> tuple[str, ...]:
    problems: list[str] = []
    for i, item in enumerate(_strings(name, value)):
        if not isinstance(item, str) or not _HEADER_NAME.match(item):
            problems.append(f"{name}[{i}]: expected an HTTP header name, got {item!r}")
    raise_all(problems)
    return tuple(value)


def _path_list(name: str, value: Any) -> tuple[str, ...]:
    problems: list[str] = []
    for i, item in enumerate(_strings(name, value)):
        if not isinstance(item, str) or not item.startswith("/"):
            problems.append(f"{name}[{i}]: expected a path (glob) starting with /, got {item!r}")
    raise_all(problems)
    return tuple(value)


_ROUTE_FIELD = re.compile(r"^(?:unknown )?route field(?:\(s\))? \[?'([a-z_]+)'")


def _routes(name: str, value: Any) -> tuple[Any, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{name}: expected a non-empty list of preset names or rules")
    problems = []
    for i, item in enumerate(value):
        try:
            build_rules([item])
        except RuleError as exc:
            message = str(exc)
            field = _ROUTE_FIELD.match(message)
            where = f"{name}[{i}]" + (f".{field.group(1)}" if field else "")
            hint = _did_you_mean(item, PRESETS) if isinstance(item, str) else ""
            problems.append(f"{where}: {message}{hint}")
    raise_all(problems)
    try:
        build_rules(value)
    except RuleError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return tuple(value)


def _content_type(where: str, key: Any) -> str:
    if not isinstance(key, str) or not CONTENT_TYPE_NAME.match(key):
        raise ConfigError(f"{where}: content type {key!r} must match {CONTENT_TYPE_NAME.pattern}")
    return key


def _table(name: str, value: Any, what: str, item: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping of {what}, got {value!r}")
    problems: list[str] = []
    out = {}
    for key, raw in value.items():
        parsed = _collect(problems, item, f"{name}.{key}", key, raw)
        if parsed is not None:
            out[str(key)] = parsed
    raise_all(problems)
    return out


def _ttls(name: str, value: Any) -> dict[str, int]:
    lo = FIELDS["audio_cache_ttl_seconds"].metadata["lo"]

    def one(where: str, key: Any, seconds: Any) -> int:
        _content_type(name, key)
        return int(_number(where, seconds, int, lo=lo))

    return _table(name, value, "content type to seconds", one)


def _factors(name: str, value: Any) -> dict[str, float]:
    def one(where: str, key: Any, factor: Any) -> float:
        _content_type(name, key)
        return float(_number(where, factor, float, lo=0, hi=1))

    return _table(name, value, "content type to a factor", one)


def _prices(name: str, value: Any) -> dict[str, float]:
    def one(where: str, key: Any, price: Any) -> float:
        return float(_number(where, price, float, lo=0))

    return _table(name, value, "route, route:voice or default to a price", one)


def _policy(where: str, raw: Any) -> TenantPolicy:
    if isinstance(raw, Mapping):
        unknown = [str(k) for k in raw if str(k) not in _POLICY_KEYS]
        if unknown:
            raise ConfigErrors(
                f"{where}.{key}: unknown key{_did_you_mean(key, _POLICY_KEYS)} "
                f"(allowed: {', '.join(_POLICY_KEYS)})"
                for key in unknown
            )
    try:
        return parse_policy(raw, where)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def _tenants(name: str, value: Any) -> dict[str, TenantPolicy]:
    if value is None:
        return {}

    def one(where: str, tenant: Any, raw: Any) -> TenantPolicy:
        if not isinstance(tenant, str) or not TENANT_ID.match(tenant):
            raise ConfigError(f"{name}: tenant id {tenant!r} must match {TENANT_ID.pattern}")
        return _policy(where, raw)

    return _table(name, value, "tenant id to policy", one)


def _content_type_rules(name: str, value: Any) -> tuple[ContentTypeRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{name}: expected a list of {{pattern: REGEX, content_type: NAME}}")
    problems: list[str] = []
    rules = [_collect(problems, _content_type_rule, f"{name}[{i}]", r) for i, r in enumerate(value)]
    raise_all(problems)
    return tuple(rules)


def _content_type_rule(where: str, item: Any) -> ContentTypeRule:
    if not isinstance(item, Mapping) or set(item) != {"pattern", "content_type"}:
        raise ConfigError(f"{where}: expected {{pattern: REGEX, content_type: NAME}}")
    try:
        pattern = re.compile(str(item["pattern"]), re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{where}.pattern: invalid regex: {exc}") from None
    return ContentTypeRule(pattern, _content_type(f"{where}.content_type", item["content_type"]))


def _segment_patterns(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name}: expected a list of regular expressions")
    try:
        compile_patterns(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return tuple(value)


_STRUCTURED: dict[str, Any] = {
    "routes": _routes,
    "segment_no_cache_patterns": _segment_patterns,
    "client_key_headers": _header_list,
    "passthrough_paths": _path_list,
    "audio_cache_content_type_ttls": _ttls,
    "audio_cache_cleanup_content_type_factors": _factors,
    "cost_per_million_characters": _prices,
    "tenants": _tenants,
    "tenant_default_policy": _policy,
    "audio_cache_content_type_rules": _content_type_rules,
}


# --- files and the environment -------------------------------------------------------


def _secret(name: str, env: Mapping[str, str]) -> str | None:
    value = env.get(env_name(name))
    path = env.get(f"{env_name(name)}_FILE")
    if value is None and path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{env_name(name)}_FILE: cannot read {path}: {exc.strerror}"
            ) from None
    return value or None


def _unknown(name: str) -> str:
    return f"{name}: unknown setting{_did_you_mean(name, FIELDS)} (see config/default.yaml)"


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> Settings:
    """Defaults, then the YAML file, then the environment, then explicit overrides.

    Raises :class:`ConfigErrors` listing every problem. Environment names that look like
    settings but are none are appended to ``warnings`` when given, else logged.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    # Every layer's values are checked, also those a later layer replaces: a mistake in the
    # file is reported even while the environment happens to override it.
    layers: list[tuple[str, Any]] = []
    if path is not None:
        for name, value in (_collect(problems, read_yaml, Path(path)) or {}).items():
            name = str(name)
            if name in SECRETS:
                problems.append(
                    f"{name}: secrets are never read from YAML; set {env_name(name)} "
                    f"or {env_name(name)}_FILE in the environment"
                )
            elif name not in FIELDS:
                problems.append(_unknown(name))
            else:
                layers.append((name, value))
    for name in FIELDS:
        if name not in SECRETS and env_name(name) in env:
            layers.append((name, _Env(env[env_name(name)])))
    for name, value in (overrides or {}).items():
        if name not in FIELDS:
            problems.append(_unknown(name))
        elif value is not None:
            layers.append((name, value))
    values: dict[str, Any] = {}
    failed: set[str] = set()
    for name, value in layers:
        try:
            values[name] = _coerce(name, value)
        except ConfigError as exc:
            failed.add(name)
            source = f" (from {env_name(name)})" if isinstance(value, _Env) else ""
            problems.extend(problem + source for problem in exc.problems)
    for name in SECRETS:
        values[name] = _collect(problems, _secret, name, env)
    settings = Settings(**values)
    problems.extend(run_checks(settings, failed))
    found = unknown_env_warnings(env)
    if warnings is not None:
        warnings.extend(found)
    else:
        for warning in found:
            log.warning("environment: %s", warning)
    raise_all(problems)
    return settings
