"""Typed keys of the application's shared state (settings, store, request path, prefetch)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .background.prefetch import Prefetcher
from .config.settings import Settings
from .request.processor import AudioProcessor
from .store.service import AudioCacheService

SETTINGS = web.AppKey("settings", Settings)
REDIS_URL = web.AppKey("redis_url", str)
REDIS: web.AppKey[Any] = web.AppKey("redis")
SERVICE = web.AppKey("service", AudioCacheService)
PROCESSOR = web.AppKey("processor", AudioProcessor)
PREFETCHER = web.AppKey("prefetcher", Prefetcher)
DRAINING = web.AppKey("draining", list)
# On a separate admin listener: the proxy application whose state the admin routes use.
HOME = web.AppKey("home", web.Application)


def home(app: web.Application) -> web.Application:
    """The application holding the proxy's state (itself, unless it is the admin app)."""
    return app.get(HOME, app)
