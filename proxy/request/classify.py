"""Classify: which route a request is for, what it asks for, whose it is and its cache key.

The first stage of every request. A request is either refused here (bad input, as a JSON
error), bypassed (not speech, ``no-store``, a disabled tenant), or described as a
:class:`Speech` with its key. A repeated request is recognised by its fingerprint and skips
JSON parsing, text normalization, header checks and hashing (most of a hot hit's time).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config.settings import CONTENT_TYPE_NAME, Settings
from ..core.keys import CacheKey, cache_key
from ..core.policy import Directive, request_directive
from ..core.routes import InvalidSpeechRequest, RouteRule, SpeechRequest, find_rule
from ..core.tenants import BadTenant
from ..observability.access_log import ROUTE, TEXT
from .errors import json_error
from .savings import RouteMetrics, Savings
from .upstream import UnsafePath, check_path

# Requests already described, by fingerprint. Small bodies only.
_KNOWN_ENTRIES = 4096
_KNOWN_MAX_BODY = 8192
_UNSEEN = object()


@dataclass(frozen=True, slots=True)
class Described:
    """A request described before: everything its fingerprint decides."""

    speech: SpeechRequest
    tenant: str
    content_class: str | None  # the client's class header, None without one
    key: CacheKey
    metrics: RouteMetrics


@dataclass(frozen=True, slots=True)
class Bypass:
    """Not for the cache: forward as it is (``body`` is None when not read yet)."""

    body: bytes | None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Speech:
    """A speech request the cache may answer."""

    rule: RouteRule
    described: Described
    body: bytes
    query: str
    directive: Directive
    seen_before: bool  # described from the fingerprint memo


Classified = Speech | Bypass | web.Response


class Classifier:
    """Turns requests into :class:`Speech`, :class:`Bypass` or a JSON refusal."""

    def __init__(self, settings: Settings, identity: str, savings: Savings) -> None:
        self.settings = settings
        self.rules = settings.rules
        self.tenants = settings.tenancy
        self.identity = identity
        self.savings = savings
        self._class_header = settings.audio_cache_content_type_header.lower()
        # Paths seen before, by method and raw path: their rule (None: not cacheable),
        # and they passed check_path.
        self._routed: dict[tuple[str, str], Any] = {}
        self._known: dict[tuple[Any, ...], Described] = {}
        # Bodies up to this size are taken from the buffer when complete, without
        # request.read()'s loop (and never above the app's client_max_size).
        self._small_body = min(_KNOWN_MAX_BODY, int(settings.max_request_body_kb * 1024))
        # Per route, the request headers its fingerprint covers: all that describing it,
        # checking its class and finding its tenant read.
        self._read_headers = {
            rule.name: tuple(
                dict.fromkeys(
                    h.lower()
                    for h in (
                        "content-type",
                        *rule.headers,
                        self._class_header,
                        self.tenants.header or "",
                        self.tenants.api_key_header or "",
                    )
                    if h
                )
            )
            for rule in self.rules
        }

    def key_for(self, speech: SpeechRequest, namespace: str = "") -> CacheKey:
        return cache_key(
            upstream=self.identity,
            route=speech.route,
            text=speech.text,
            params=speech.params,
            namespace=namespace,
        )

    def route(self, request: web.Request) -> Any:
        """``(rule, path parameters)``, None for no rule, or a refusal of the path."""
        raw_path = request.rel_url.raw_path
        routed = self._routed.get((request.method, raw_path), _UNSEEN)
        if routed is _UNSEEN:
            try:
                check_path(raw_path)  # without building the upstream URL
            except UnsafePath as exc:
                return json_error(400, str(exc), field="path")
            routed = find_rule(self.rules, request.method, request.path)
            if len(self._routed) >= _KNOWN_ENTRIES:
                del self._routed[next(iter(self._routed))]
            self._routed[(request.method, raw_path)] = routed
        return routed

    async def classify(self, request: web.Request) -> Classified:
        routed = self.route(request)
        if isinstance(routed, web.Response):
            return routed
        if routed is None or not self.settings.audio_cache_enabled:
            return Bypass(None)
        rule, path_params = routed
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        query = request.rel_url.raw_query_string
        headers = request.headers  # case-insensitive: no lower-cased copy on the hit path
        # Everything that describing the request reads, so that equal fingerprints describe
        # equally: the body, the query and every value of each header that matters.
        fingerprint = (
            rule.name,
            request.path,
            query,
            body,
            *[tuple(headers.getall(h, ())) for h in self._read_headers[rule.name]],
        )
        described = self._known.get(fingerprint)
        lowered: dict[str, str] = {}
        if described is None:
            lowered = {k.lower(): v for k, v in headers.items()}
            try:
                speech = rule.describe(
                    path_params=path_params, query=query, headers=lowered, body=body
                )
            except InvalidSpeechRequest as exc:
                return json_error(400, exc.message, field=exc.field)
            if speech is None:
                return Bypass(body, "uncacheable")
        else:
            speech = described.speech
        request[ROUTE] = rule.name
        request[TEXT] = speech.text
        directive = Directive.USE
        if "cache-control" in headers or "pragma" in headers:
            directive = request_directive(
                {
                    "cache-control": ", ".join(headers.getall("cache-control", ())),
                    "pragma": ", ".join(headers.getall("pragma", ())),
                }
            )
        if directive is Directive.BYPASS:
            return Bypass(body, "no-store")
        if described is not None:
            return Speech(rule, described, body, query, directive, seen_before=True)
        # Checked once per distinct request: these headers are part of the fingerprint.
        content_class = headers.get(self._class_header)
        if content_class is not None and not CONTENT_TYPE_NAME.match(content_class):
            name = self.settings.audio_cache_content_type_header
            return json_error(
                400, f"{name} must match {CONTENT_TYPE_NAME.pattern}", field=f"header:{name}"
            )
        try:
            tenant = self.tenants.identify(lowered)
        except BadTenant as exc:
            return json_error(400, exc.message, field=exc.field)
        if not self.tenants.policy(tenant).enabled:
            return Bypass(body, "tenant-disabled")
        key = self.key_for(speech, self.tenants.namespace(tenant))
        described = Described(
            speech, tenant, content_class, key, self.savings.of(rule.name, speech.voice)
        )
        if len(body) <= _KNOWN_MAX_BODY:
            if len(self._known) >= _KNOWN_ENTRIES:
                del self._known[next(iter(self._known))]
            self._known[fingerprint] = described
        return Speech(rule, described, body, query, directive, seen_before=False)

    async def _body(self, request: web.Request) -> bytes | web.Response:
        content = request.content
        length = request.content_length
        if content.is_eof() and length is not None and length <= self._small_body:
            return content.read_nowait()  # the usual small body, all there already
        limit = self.settings.client_body_timeout_seconds
        try:
            async with asyncio.timeout(limit):
                return await request.read()
        except TimeoutError:
            message = f"the request body did not arrive within {limit} s"
            return json_error(408, message, field="body")
