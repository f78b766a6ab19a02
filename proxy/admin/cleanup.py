"""``POST /admin/audio-cache/cleanup``: run the size-based cleanup now and say what it did.

Query: ``force=true`` cleans even below the threshold; ``target_percent=N`` (0 <= N < 100)
overrides ``audio_cache_target_size_percent`` for this run; ``tenant=ID`` enforces that
tenant's quota now instead (cleans its entries down to the target share of its quota).
Who may call it is :mod:`proxy.admin.auth`'s business, as for every /admin route.
"""

from __future__ import annotations

from aiohttp import web

from ..background.cleanup import CLEANER, run_cleanup
from ..core.tenants import TENANT_ID
from ..request.errors import json_error
from ..state import SETTINGS, home

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_PARAMS = ("force", "target_percent", "tenant")


def _parse(request: web.Request) -> tuple[bool, float | None] | web.Response:
    for name in request.query:
        if name not in _PARAMS:
            return json_error(
                400, f"unknown query parameter {name!r}; allowed: {list(_PARAMS)}", field=name
            )
    raw_force = request.query.get("force", "false").strip().lower()
    if raw_force not in _TRUE + _FALSE:
        return json_error(400, f"force: expected true or false, got {raw_force!r}", field="force")
    raw_target = request.query.get("target_percent")
    target: float | None = None
    if raw_target is not None:
        try:
            target = float(raw_target)
        except ValueError:
            target = None
        if target is None or not 0 <= target < 100:
            return json_error(
                400,
                f"target_percent: expected a number from 0 to below 100, got {raw_target!r}",
                field="target_percent",
            )
    return raw_force in _TRUE, target


async def cleanup(request: web.Request) -> web.Response:
    parsed = _parse(request)
    if isinstance(parsed, web.Response):
        return parsed
    force, target = parsed
    app = home(request.app)
    tenant = request.query.get("tenant")
    if tenant is not None:
        if not TENANT_ID.match(tenant):
            return json_error(400, f"tenant must match {TENANT_ID.pattern}", field="tenant")
        quota = app[SETTINGS].tenancy.quota_bytes(tenant)
        if quota is None:
            return json_error(400, f"tenant {tenant!r} has no quota_mb", field="tenant")
        cleaner = app[CLEANER]
        report = await cleaner.clean(
            target_bytes=cleaner.quota_target(quota), tenant=tenant, trigger="admin"
        )
    else:
        report = await run_cleanup(app, force=force, target_percent=target)
    status = 409 if report.result == "locked" else 200
    return web.json_response(report.to_json(), status=status)


def routes() -> list[web.RouteDef]:
    """The cleanup route."""
    return [web.post("/admin/audio-cache/cleanup", cleanup)]
