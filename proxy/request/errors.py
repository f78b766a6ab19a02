"""Errors as JSON: every refusal names what went wrong and, where one is to blame, the field."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(
    status: int, message: str, *, field: str | None = None, **extra: Any
) -> web.Response:
    """A JSON error body: what went wrong and, where one is to blame, which field."""
    error: dict[str, Any] = {"message": message, "status": status}
    if field is not None:
        error["field"] = field
    error.update(extra)
    return web.json_response({"error": error}, status=status)
