"""The aiohttp application: the route table and the small routes (health, metrics).

What starts and stops with it is :mod:`proxy.runtime`.
"""

from __future__ import annotations

import contextlib
import logging
import os

from aiohttp import web
from prometheus_async.aio.web import server_stats
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from .admin import routes as admin
from .admin.auth import admin_only
from .admin.params import admin_errors
from .background.maintenance import refresh_gauges
from .config.settings import Settings
from .observability import tracing
from .observability.metrics import METRICS, MULTIPROCESS_DIR, multiprocess_exposition
from .request.endpoints import (
    answering_expect,
    expect_continue,
    identity_bodies,
    tagged,
    wrapped,
)
from .runtime import lifecycle
from .state import DRAINING, HOME, PROCESSOR, REDIS, REDIS_URL, SERVICE, SETTINGS

log = logging.getLogger(__name__)

__all__ = [
    "DRAINING",
    "PROCESSOR",
    "REDIS",
    "SERVICE",
    "SETTINGS",
    "create_admin_app",
    "create_app",
]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    problems: list[str] = []
    if app[DRAINING]:
        problems.append("shutting down")
    if not app[SETTINGS].upstream_url:
        problems.append("no upstream configured")
    breaker = app[SERVICE].breaker
    METRICS.redis_circuit_open.set(1 if breaker.is_open else 0)
    store: list[str] = []
    try:
        await app[REDIS].ping()
    except (RedisError, OSError) as exc:
        store.append(f"redis unreachable: {exc}")
    if breaker.is_open:
        store.append(f"redis circuit {breaker.state.value}: serving from the upstream")
    # Behind a load balancer a shared store's outage must not take every replica out at
    # once: with readiness_requires_redis false the proxy stays ready and fails open.
    if app[SETTINGS].readiness_requires_redis:
        problems += store
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    if store:
        return web.json_response({"status": "degraded", "problems": store})
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.StreamResponse:
    # On a Redis error the gauges keep their last value; the error counter tells the story.
    with contextlib.suppress(RedisError, OSError):
        await refresh_gauges(request.app[SERVICE])
    if MULTIPROCESS_DIR in os.environ:  # serve --workers: every worker's numbers, combined
        return web.Response(
            body=multiprocess_exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
    return await server_stats(request)


async def _speech(request: web.Request) -> web.StreamResponse:
    return await request.app[PROCESSOR].handle(request)


async def _audio_by_key(request: web.Request) -> web.StreamResponse:
    return await request.app[PROCESSOR].serve_by_key(request)


# The catch-all route: every path, line breaks included (".*" stops at one, and such a
# path would get aiohttp's plain-text 404 rather than the proxy's JSON 400).
_ANY_PATH = "/{tail:[\\s\\S]*}"


def _application(settings: Settings) -> web.Application:
    # Request bodies arrive as sent: proxy.request.body decodes them, bounded, or refuses.
    return web.Application(
        client_max_size=int(settings.max_request_body_kb * 1024),
        handler_args={"auto_decompress": False},
    )


def create_app(settings: Settings, *, redis_url: str) -> web.Application:
    """The proxy as an aiohttp application, talking to Redis at ``redis_url``. The admin
    routes are on it unless ``admin_port`` is set (then see :func:`create_admin_app`)."""
    # No middlewares: every handler is wrapped once, here (see proxy.request.endpoints).
    tracing.configure(settings)
    app = _application(settings)
    app[SETTINGS] = settings
    app[REDIS_URL] = redis_url
    app[DRAINING] = []
    app.cleanup_ctx.append(lifecycle)
    if settings.admin_port is None:
        admin_routes = wrapped(
            admin.routes(), admin_only(settings.admin_token), admin_errors, identity_bodies
        )
    else:
        admin_routes = admin.fence()
    audio_route = settings.audio_path_prefix + "/{key}"
    routes = [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        *admin_routes,
        web.get(audio_route, tracing.serving(_audio_by_key, lambda _: audio_route)),  # and HEAD
        web.route("*", _ANY_PATH, tracing.serving(_speech, tracing.rule_route(settings.rules))),
    ]
    expect = expect_continue(int(settings.max_request_body_kb * 1024))
    app.add_routes(answering_expect(wrapped(routes, tagged), expect))
    return app


def create_admin_app(proxy: web.Application) -> web.Application:
    """The admin routes alone, for a separate listener (``admin_port``), working on the
    state of ``proxy`` (which must be started first). Every path on it is guarded."""
    settings = proxy[SETTINGS]
    app = _application(settings)
    app[HOME] = proxy
    routes = [*admin.routes(), web.route("*", _ANY_PATH, admin.not_found)]
    wrappers = (tagged, admin_only(settings.admin_token), admin_errors, identity_bodies)
    expect = expect_continue(int(settings.max_request_body_kb * 1024))
    app.add_routes(answering_expect(wrapped(routes, *wrappers), expect))
    return app
