"""Typed keys of the application's shared state (settings, store, request path, prefetch).

The types are imported for the type checker only, so that any module may import these keys
without importing the parts they name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .background.prefetch import Prefetcher
    from .config.settings import Settings
    from .request.processor import AudioProcessor
    from .store.service import AudioCacheService

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
REDIS_URL: web.AppKey[str] = web.AppKey("redis_url")
REDIS: web.AppKey[Any] = web.AppKey("redis")
SERVICE: web.AppKey[AudioCacheService] = web.AppKey("service")
PROCESSOR: web.AppKey[AudioProcessor] = web.AppKey("processor")
PREFETCHER: web.AppKey[Prefetcher] = web.AppKey("prefetcher")
DRAINING: web.AppKey[list[Any]] = web.AppKey("draining")
# On a separate admin listener: the proxy application whose state the admin routes use.
HOME: web.AppKey[web.Application] = web.AppKey("home")


def home(app: web.Application) -> web.Application:
    """The application holding the proxy's state (itself, unless it is the admin app)."""
    return app.get(HOME, app)
