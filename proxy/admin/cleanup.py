"""``POST /admin/audio-cache/cleanup``: run the size-based cleanup now and say what it did.

Query: ``force=true`` cleans even below the threshold; ``target_percent=N`` (0 <= N < 100)
overrides ``audio_cache_target_size_percent`` for this run; ``tenant=ID`` enforces that
tenant's quota now instead (cleans its entries down to the target share of its quota).
Who may call it is :mod:`proxy.admin.auth`'s business, as for every /admin route.
"""

from __future__ import annotations

from aiohttp import web

from ..background.cleanup import CLEANER, run_cleanup
from ..state import SETTINGS, home
from .params import BadQuery, flag, query
from .params import tenant as valid_tenant

_PARAMS = ("force", "target_percent", "tenant")


def _target(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        target = float(raw)
    except ValueError:
        target = -1.0
    if not 0 <= target < 100:
        raise BadQuery(
            "target_percent", f"target_percent: expected a number from 0 to below 100, got {raw!r}"
        )
    return target


async def cleanup(request: web.Request) -> web.Response:
    params = query(request, _PARAMS)
    force = flag(params.get("force"), "force")
    target = _target(params.get("target_percent"))
    app = home(request.app)
    if "tenant" in params:
        tenant = valid_tenant(params["tenant"])
        quota = app[SETTINGS].tenancy.quota_bytes(tenant)
        if quota is None:
            raise BadQuery("tenant", f"tenant {tenant!r} has no quota_mb")
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
