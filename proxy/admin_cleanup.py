"""``POST /admin/audio-cache/cleanup``: run the size-based cleanup now and say what it did.

Query: ``force=true`` cleans even below the threshold; ``target_percent=N`` (0 <= N < 100)
overrides ``audio_cache_target_size_percent`` for this run.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from .cleanup import run_cleanup
from .processor import json_error

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _parse(request: web.Request) -> tuple[bool, float | None] | web.Response:
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


def setup(app: web.Application, *, admin_token: str | None = None) -> None:
    """Register the cleanup route (before any catch-all route). With ``admin_token`` set,
    callers must send ``Authorization: Bearer <token>``."""

    async def cleanup(request: web.Request) -> web.Response:
        if admin_token is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {admin_token}".encode()):
                return json_error(401, "admin token required: Authorization: Bearer <token>")
        parsed = _parse(request)
        if isinstance(parsed, web.Response):
            return parsed
        force, target = parsed
        report = await run_cleanup(request.app, force=force, target_percent=target)
        status = 409 if report.result == "locked" else 200
        return web.json_response(report.to_json(), status=status)

    app.router.add_post("/admin/audio-cache/cleanup", cleanup)
