"""How admin routes read their input and refuse it: one style for every route.

Query parameters are checked strictly: an unknown one is a 400 naming it, so a typo such as
``?tennant=acme`` can never widen a purge to the whole cache. Each refusal is a
:class:`BadQuery`, answered as a 400 JSON naming the field by :func:`admin_errors`, which
also answers a failing store with 503 (admin routes never fail open).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from ..core.tenants import TENANT_ID
from ..request.errors import json_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class BadQuery(ValueError):
    """An admin request's input is refused; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once, none unknown."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            raise BadQuery(name, f"unknown query parameter {name!r}; allowed: {list(allowed)}")
        if name in out:
            raise BadQuery(name, f"query parameter {name!r} given more than once")
        out[name] = value
    return out


def tenant(value: str, field: str = "tenant") -> str:
    """A tenant id, as tenants are named everywhere."""
    if not TENANT_ID.match(value):
        raise BadQuery(field, f"{field} must match {TENANT_ID.pattern}")
    return value


def flag(value: str | None, field: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no, on/off); absent is false."""
    text = (value or "").strip().lower()
    if text not in _TRUE + _FALSE:
        raise BadQuery(field, f"{field}: expected true or false, got {value!r}")
    return text in _TRUE


def admin_errors(handler: Handler) -> Handler:
    """Bad input → 400 naming the field; a failing store → 503 (admin never fails open)."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadQuery as exc:
            return json_error(400, exc.message, field=exc.field)
        except (RedisError, OSError) as exc:
            return json_error(503, f"the cache store is unavailable: {exc}")

    return answer
