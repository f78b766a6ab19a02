"""Classify: which route a request is for, what it asks for, whose it is and its cache key.

The first stage of every request. A request is either refused here (bad input, as a JSON
error), bypassed (not speech, ``no-store``, a disabled tenant), or described as a
:class:`Speech` with its key. A repeated request is recognised by its fingerprint and skips
JSON parsing, text normalization, header checks and hashing (most of a hot hit's time).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config.settings import Settings
from ..core.keys import CacheKey, cache_key
from ..core.policy import Directive, request_directive
from ..core.routes import InvalidSpeechRequest, RouteRule, SpeechRequest, find_rule
from ..core.tenants import BadTenant, TenantRefused
from ..observability.access_log import ROUTE, TEXT
from .access import Caller
from .body import BodyReader
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
    speech_route: bool = True  # False: no rule claims the path


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
        self._classes = settings.content_classes
        # Mixed into isolated tenants' key namespaces, so their keys cannot be computed
        # offline from a guessed sentence (set once the store is open).
        self.key_secret = b""
        # Paths seen before, by method and raw path: their rule (None: not cacheable),
        # and they passed check_path.
        self._routed: dict[tuple[str, str], Any] = {}
        self._known: dict[tuple[Any, ...], Described] = {}
        # Bodies up to _KNOWN_MAX_BODY are taken from the buffer when complete, without
        # request.read()'s loop (and never above the app's client_max_size).
        self._body = BodyReader(
            int(settings.max_request_body_kb * 1024),
            settings.client_body_timeout_seconds,
            small_body=_KNOWN_MAX_BODY,
        )
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
        if namespace and self.key_secret:
            mac = hmac.new(self.key_secret, namespace.encode(), hashlib.sha256).hexdigest()
            namespace = f"{namespace}:{mac[:32]}"
        return cache_key(
            upstream=self.identity,
            route=speech.route,
            text=speech.text,
            params=speech.params,
            namespace=namespace,
            normalize=speech.normalize,
        )

    def route(self, request: web.Request) -> Any:
        """``(rule, path parameters)``, None for no rule, or a refusal of the path."""
        raw_path = request.rel_url.raw_path
        routed = self._routed.get((request.method, raw_path), _UNSEEN)
        if routed is _UNSEEN:
            try:
                check_path(raw_path)  # without building the upstream URL
            except UnsafePath as exc:
                return json_error(exc.status, str(exc), field="path")
            routed = find_rule(self.rules, request.method, request.path)
            if len(self._routed) >= _KNOWN_ENTRIES:
                del self._routed[next(iter(self._routed))]
            self._routed[(request.method, raw_path)] = routed
        return routed

    async def classify(self, request: web.Request, caller: Caller) -> Classified:
        routed = self.route(request)
        if routed is not None and not isinstance(routed, tuple):  # a refusal (see handle)
            refusal: web.Response = routed
            return refusal
        if routed is None:
            return Bypass(None, speech_route=False)
        if not self.settings.audio_cache_enabled:
            return Bypass(None)
        rule, path_params = routed
        body = await self._body(request)
        if not isinstance(body, bytes):
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
            caller.scope,
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
        if directive is Directive.REFRESH and not caller.may_refresh:
            directive = Directive.USE  # only callers allowed to may make the cache pay again
        if described is not None:
            return Speech(rule, described, body, query, directive, seen_before=True)
        # Checked once per distinct request: these headers are part of the fingerprint.
        content_class = headers.get(self._class_header) if caller.may_classify else None
        if content_class is not None and content_class not in self._classes:
            name = self.settings.audio_cache_content_type_header
            return json_error(
                400,
                f"{name} must be one of the configured content types: {sorted(self._classes)}",
                field=f"header:{name}",
            )
        try:
            tenant = self.tenant_of(lowered, caller)
        except BadTenant as exc:
            status = 403 if isinstance(exc, TenantRefused) else 400
            return json_error(status, exc.message, field=exc.field)
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

    def tenant_of(self, headers: dict[str, str], caller: Caller) -> str:
        """The request's tenant, from an authenticated source: the caller's key, a tenant
        header the operator trusts, or the hash of the client's API key header."""
        header = self.tenants.header
        claimed = headers.get(header.lower()) if header else None
        if caller.tenant is not None:
            if claimed is not None and claimed.strip() != caller.tenant:
                raise TenantRefused(
                    f"header:{header}", "the tenant header does not match your key's tenant"
                )
            return caller.tenant
        if claimed is not None:
            if not self.settings.tenant_header_trusted:
                raise TenantRefused(
                    f"header:{header}",
                    f"{header} is not trusted here: the tenant comes from your client key "
                    "(the operator sets tenant_header_trusted only behind a gateway)",
                )
            return self.tenants.check_id(claimed.strip(), field=f"header:{header}")
        return self.tenants.identify(
            {k: v for k, v in headers.items() if k != (header or "").lower()}
        )
