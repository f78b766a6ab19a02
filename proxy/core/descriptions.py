"""Request descriptions: a TTS request written down as data, for admin lookups and prefetch.

Pure logic. A description names a route rule and gives what a client would send to it (the
JSON body, the query, the path), or just ``text`` plus ``params``; from it come the speech
request (hence the cache key) and the exact request the upstream would get on a miss.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

from .routes import InvalidSpeechRequest, RouteRule, SpeechRequest, find_rule

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
FIELDS = ("route", "body", "query", "path", "path_params", "text", "params", "headers")


class BadDescription(ValueError):
    """A description that names no usable request; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Described:
    """A described request: what determines its audio, and what goes upstream on a miss."""

    rule: RouteRule
    speech: SpeechRequest
    method: str
    path: str  # raw (percent-encoded) path below the upstream's base
    query: str
    headers: Mapping[str, str]
    body: bytes


def _where(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _as_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadDescription(field, f"expected a string, got {type(value).__name__}")
    return value


def _encode_pairs(value: Any, field: str) -> str:
    """A query or form: given as its text, or as a mapping of names to values."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.lstrip("?")
    if isinstance(value, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, item in value.items():
            items = item if isinstance(item, list) else [item]
            for one in items:
                if isinstance(one, bool) or not isinstance(one, str | int | float):
                    raise BadDescription(f"{field}.{name}", "expected a string or a number")
                pairs.append((str(name), str(one)))
        return urlencode(pairs)
    raise BadDescription(field, "expected a string or a mapping")


def _path(rule: RouteRule, raw: Mapping[str, Any], prefix: str) -> str:
    names = _PLACEHOLDER.findall(rule.path)
    path = raw.get("path")
    params = raw.get("path_params")
    if path is not None:
        path = _as_text(path, _where(prefix, "path"))
        if not path.startswith("/") or rule.match(rule.method, unquote(path)) is None:
            raise BadDescription(
                _where(prefix, "path"), f"path {path!r} is not served by route {rule.name!r}"
            )
        return path
    if not names:
        return rule.path
    field = _where(prefix, "path_params")
    if not isinstance(params, Mapping):
        raise BadDescription(
            field, f"route {rule.name!r} needs path_params {names} (or the whole path)"
        )
    out = rule.path
    for name in names:
        value = params.get(name)
        if not isinstance(value, str) or not value:
            raise BadDescription(f"{field}.{name}", "a non-empty string is required")
        out = out.replace("{" + name + "}", quote(value, safe=""))
    return out


def _body_and_query(rule: RouteRule, raw: Mapping[str, Any], prefix: str) -> tuple[str, Any]:
    """(query text, body value) with ``text``/``params`` folded in where the rule reads text."""
    query: Any = raw.get("query")
    body: Any = raw.get("body")
    text, params = raw.get("text"), raw.get("params")
    if text is None and params is None:
        return _encode_pairs(query, _where(prefix, "query")), body
    if params is not None and not isinstance(params, Mapping):
        raise BadDescription(_where(prefix, "params"), "expected a mapping")
    source = rule.text.source
    if text is None:
        # SSML instead of text (Google's input.ssml) is given among the params.
        if rule.ssml is None or not rule.ssml.holds(params or {}):
            raise BadDescription(_where(prefix, "text"), "required when params are given")
        fields: dict[str, Any] = dict(params or {})
    else:
        _as_text(text, _where(prefix, "text"))
        if source == "body" and body is None:
            if params:
                raise BadDescription(
                    _where(prefix, "params"),
                    f"route {rule.name!r} reads its whole body as the text: no params",
                )
            return _encode_pairs(query, _where(prefix, "query")), text
        try:
            fields = rule.text.placed(params or {}, text)
        except ValueError as exc:
            raise BadDescription(
                _where(prefix, f"params.{exc}"),
                f"expected an object: route {rule.name!r} reads the text at {rule.text.name!r}",
            ) from None
    if source == "json" and body is None:
        return _encode_pairs(query, _where(prefix, "query")), fields
    if source == "form" and body is None:
        return _encode_pairs(query, _where(prefix, "query")), fields
    if source == "query" and query is None:
        return _encode_pairs(fields, _where(prefix, "params")), body
    raise BadDescription(
        _where(prefix, "text"),
        f"text/params cannot be combined with {'body' if source != 'query' else 'query'} "
        f"for route {rule.name!r}; give one or the other",
    )


def describe(rules: Sequence[RouteRule], raw: Mapping[str, Any], *, prefix: str = "") -> Described:
    """The request a description stands for. Raises BadDescription naming the bad field."""
    unknown = sorted(set(map(str, raw)) - set(FIELDS))
    if unknown:
        raise BadDescription(
            _where(prefix, unknown[0]), f"unknown field(s) {unknown}; allowed: {list(FIELDS)}"
        )
    route = raw.get("route")
    by_name = {r.name: r for r in rules}
    if route is None:
        raise BadDescription(_where(prefix, "route"), f"required, one of {sorted(by_name)}")
    if not isinstance(route, str) or route not in by_name:
        raise BadDescription(
            _where(prefix, "route"), f"unknown route {route!r}; routes: {sorted(by_name)}"
        )
    rule = by_name[route]
    path = _path(rule, raw, prefix)
    query, body_value = _body_and_query(rule, raw, prefix)
    headers_raw = raw.get("headers") or {}
    if not isinstance(headers_raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers_raw.items()
    ):
        raise BadDescription(
            _where(prefix, "headers"), "expected a mapping of header names to strings"
        )
    headers = {k.lower(): v for k, v in headers_raw.items()}
    form = rule.text.source == "form"
    if rule.method == "GET":
        if body_value is not None:
            raise BadDescription(_where(prefix, "body"), f"route {rule.name!r} takes no body")
        body = b""
    elif form:
        body = _encode_pairs(body_value, _where(prefix, "body")).encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    elif isinstance(body_value, str):
        body = body_value.encode("utf-8", "surrogateescape")
        whole = rule.text.source == "body"  # an SSML document, as Azure takes it
        headers.setdefault("content-type", "application/ssml+xml" if whole else "application/json")
    elif isinstance(body_value, Mapping):
        body = json.dumps(body_value, ensure_ascii=False, separators=(",", ":")).encode()
        headers["content-type"] = "application/json"
    else:
        raise BadDescription(
            _where(prefix, "body"), f"route {rule.name!r} needs a JSON object (or its text)"
        )
    matched = find_rule([rule], rule.method, unquote(path))
    path_params = matched[1] if matched else {}
    try:
        speech = rule.describe(path_params=path_params, query=query, headers=headers, body=body)
    except InvalidSpeechRequest as exc:
        where = exc.field if exc.field.startswith(("json:", "query:", "form:", "path:")) else "body"
        raise BadDescription(_where(prefix, where), exc.message) from None
    if speech is None:
        raise BadDescription(
            _where(prefix, "body"), f"this request is never cached by route {rule.name!r}"
        )
    if speech.sse:
        raise BadDescription(
            _where(prefix, "body"),
            "speech events are the form of an answer, not another sound: describe the "
            "plain request (its entry answers both)",
        )
    return Described(rule, speech, rule.method, path, query, headers, body)
