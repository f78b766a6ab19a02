"""The admin API under /admin: stats, purges, lookups and prefetch (cleanup is its own module).

Every route sits behind :mod:`proxy.admin.auth` and reads its input through
:mod:`proxy.admin.params` (one way of refusing it, for every route). Nothing under /admin
is ever forwarded upstream: unknown admin paths answer 404 (or 405) here. On a Redis
failure admin routes answer 503; they never fail open.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ..background.cleanup import CLEANER
from ..core.descriptions import BadDescription, describe
from ..core.keys import CacheKey
from ..core.prefetch_items import ItemError, parse_items
from ..request.errors import json_error
from ..state import PREFETCHER, PROCESSOR, SERVICE, SETTINGS, home
from ..store.service import EntryInfo
from . import cleanup as admin_cleanup
from . import openapi
from .params import BadQuery
from .params import query as query_params
from .params import tenant as tenant_param
from .stats import ReplicaCounts, build_stats

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_JOB_ID_LENGTH = 16
# DELETE /admin/audio-cache/entries: query parameter -> the store's selector dimension.
SELECTORS = {
    "voice": "voice",
    "model": "model",
    "tenant": "tenant",
    "content_type": "class",
    "route": "route",
}
_LOOKUP_PARAMS = ("key", "route", "body", "query", "path", "headers", "tenant")


# -- stats -----------------------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    query_params(request, ())
    app = home(request.app)
    service = app[SERVICE]
    totals = await service.totals()
    prefetcher = app[PREFETCHER]
    body = build_stats(
        totals,
        settings=app[SETTINGS],
        replica=ReplicaCounts(
            started_ms=service.started_ms,
            now_ms=int(time.time() * 1000),
            hits=service.session_hits,
            misses=service.session_misses,
        ),
        cleanup_history=await app[CLEANER].history(),
        prefetch={
            "jobs_running": prefetcher.running,
            "keep_warm_entries": len(prefetcher.keep_warm),
        },
    )
    return web.json_response(body)


async def usage(request: web.Request) -> web.Response:
    """GET /admin/audio-cache/usage: each limited key's and tenant's use of its limits."""
    query_params(request, ())
    return web.json_response(await home(request.app)[PROCESSOR].access.usage())


# -- purges ----------------------------------------------------------------------------


async def clear(request: web.Request) -> web.Response:
    """DELETE /admin/audio-cache: every entry under this cache's prefix (or one tenant's)."""
    query = query_params(request, ("tenant",))
    service = home(request.app)[SERVICE]
    if "tenant" in query:
        tenant = tenant_param(query["tenant"])
        removed, freed = await service.purge(tenant=tenant)
        return web.json_response({"deleted": removed, "bytes_freed": freed, "tenant": tenant})
    removed, freed = await service.purge()
    return web.json_response({"deleted": removed, "bytes_freed": freed})


async def purge_by_selector(request: web.Request) -> web.Response:
    """DELETE /admin/audio-cache/entries?voice=&model=&tenant=&content_type=&route="""
    query = query_params(request, tuple(SELECTORS))
    if not query:
        raise BadQuery(
            "voice",
            f"give at least one selector of {list(SELECTORS)} "
            "(DELETE /admin/audio-cache clears everything)",
        )
    for name, value in query.items():
        if not value or len(value) > 256:
            raise BadQuery(name, f"{name}: a non-empty value of at most 256 characters")
    if "tenant" in query:
        tenant_param(query["tenant"])
    selector = {SELECTORS[name]: value for name, value in query.items()}
    removed, freed = await home(request.app)[SERVICE].purge_matching(selector)
    return web.json_response({"deleted": removed, "bytes_freed": freed, "selector": query})


# -- one entry ---------------------------------------------------------------------------


def _entry_key(request: web.Request) -> CacheKey:
    """The key named by ``key=``, or computed from a request description."""
    query = query_params(request, _LOOKUP_PARAMS)
    if "key" in query:
        extra = sorted(set(query) - {"key"})
        if extra:
            raise BadQuery(extra[0], "give either key or a request description (route=...)")
        key = CacheKey.parse(query["key"])
        if key is None:
            raise BadQuery("key", "key: 64 lowercase hex characters (X-Audio-Cache-Key)")
        return key
    if "route" not in query:
        raise BadQuery("key", "give key=<64 hex> or a request description: route= and body=/query=")
    processor = home(request.app)[PROCESSOR]
    description: dict[str, Any] = {
        name: query[name] for name in ("route", "body", "query", "path") if name in query
    }
    if "headers" in query:
        try:
            description["headers"] = json.loads(query["headers"])
        except ValueError:
            raise BadQuery("headers", "headers: a JSON object of header names to values") from None
    tenant = tenant_param(query["tenant"]) if "tenant" in query else ""
    try:
        described = describe(processor.rules, description)
    except BadDescription as exc:
        raise BadQuery(exc.field, exc.message) from None
    return processor.key_for(described.speech, processor.tenants.namespace(tenant))


def _entry_json(info: EntryInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "stored_size": info.stored_size,
        "codec": info.codec,
        "media_type": info.media_type,
        "created_ms": info.created_ms,
        "expires_ms": info.expires_ms,
        "ttl_seconds": round(info.ttl_ms / 1000, 3),
        "hits": info.hits,
        "last_access_ms": info.last_access_ms,
        "content_type": info.content_class,
        "tenant": info.tenant,
        "route": info.route,
        "voice": info.voice,
        "model": info.model,
    }


def _absent(key: CacheKey) -> web.Response:
    return json_error(404, "no cached entry for this key", field="key", key=key.hex)


async def get_entry(request: web.Request) -> web.Response:
    """GET /admin/audio-cache/entry: metadata only; TTL, hits and recency stay untouched."""
    key = _entry_key(request)
    info = await home(request.app)[SERVICE].info(key)
    if info is None:
        return _absent(key)
    return web.json_response(_entry_json(info))


async def delete_entry(request: web.Request) -> web.Response:
    key = _entry_key(request)
    if not await home(request.app)[SERVICE].delete(key):
        return _absent(key)
    return web.json_response({"deleted": 1, "key": key.hex})


# -- prefetch ----------------------------------------------------------------------------


async def start_prefetch(request: web.Request) -> web.Response:
    query_params(request, ())
    app = home(request.app)
    raw = await request.read()
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return json_error(400, 'the body must be JSON: {"requests": [...]}', field="body")
    if not isinstance(document, Mapping) or set(document) != {"requests"}:
        return json_error(400, "the body must be an object with only 'requests'", field="body")
    processor = app[PROCESSOR]
    try:
        items = parse_items(
            document["requests"], processor.rules, limit=app[SETTINGS].prefetch_max_requests
        )
    except ItemError as exc:
        return json_error(400, exc.message, field=exc.field)
    job = app[PREFETCHER].submit(items, source="admin")
    location = f"/admin/audio-cache/prefetch/{job.id}"
    return web.json_response(
        {"job": job.id, "total": job.total, "status_url": location},
        status=202,
        headers={"Location": location},
    )


async def prefetch_status(request: web.Request) -> web.Response:
    query_params(request, ())
    job_id = request.match_info["job"]
    if len(job_id) != _JOB_ID_LENGTH or not all(c in "0123456789abcdef" for c in job_id):
        return json_error(400, "job: 16 lowercase hex characters", field="job")
    progress = await home(request.app)[PREFETCHER].progress(job_id)
    if progress is None:
        return json_error(404, "no such prefetch job (jobs are kept for a day)", field="job")
    return web.json_response(progress)


# -- registration ------------------------------------------------------------------------


async def not_found(request: web.Request) -> web.Response:
    """Unknown admin paths (and wrong methods) are answered here, never forwarded."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        fenced = any(inspect.unwrap(route.handler) is not_found for route in resource)
        if resource.canonical.startswith("/admin") and not fenced:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        response = json_error(405, f"method {request.method} not allowed", allowed=sorted(allowed))
        response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
    return json_error(404, f"no admin route {request.path}", field="path")


def routes() -> list[web.RouteDef]:
    """Every admin route, the fence included (registered before any catch-all route)."""
    return [
        web.get("/admin/audio-cache/stats", stats, allow_head=False),
        web.get("/admin/audio-cache/usage", usage, allow_head=False),
        web.delete("/admin/audio-cache", clear),
        web.get("/admin/audio-cache/entry", get_entry, allow_head=False),
        web.delete("/admin/audio-cache/entry", delete_entry),
        web.delete("/admin/audio-cache/entries", purge_by_selector),
        web.post("/admin/audio-cache/prefetch", start_prefetch),
        web.get("/admin/audio-cache/prefetch/{job}", prefetch_status, allow_head=False),
        *admin_cleanup.routes(),
        web.get("/admin/openapi.json", openapi.serve, allow_head=False),
        *fence(),
    ]


def fence() -> list[web.RouteDef]:
    """Every other /admin path is answered here, so none is ever forwarded upstream."""
    return [web.route("*", "/admin", not_found), web.route("*", "/admin/{tail:.*}", not_found)]
