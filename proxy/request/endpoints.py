"""How every answer leaves the proxy: tagged with its request id, errors as JSON.

Each route's handler is wrapped here, once, when the routes are built. aiohttp
middlewares and an ``on_response_prepare`` signal would do the same around every request,
but on the hit path those layers cost about a sixth of the throughput (bench/hit_path;
README, "Hits").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from ..observability.access_log import REQUEST_ID, REQUEST_ID_HEADER, request_id_from
from .errors import json_error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Decorator = Callable[[Handler], Handler]


def tagged(handler: Handler) -> Handler:
    """``handler`` with a request id (the client's, or a new one) that its answer carries,
    and every error answered as JSON naming the problem, never a stack trace.

    An answer the handler streams itself is tagged by the handler before it is prepared
    (:func:`proxy.observability.access_log.tag`)."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID] = request_id
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge as exc:
            response = json_error(413, f"request body too large: {exc.text}", field="body")
        except web.HTTPException as exc:
            if exc.status < 400:
                exc.headers[REQUEST_ID_HEADER] = request_id
                raise
            response = json_error(exc.status, exc.reason)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = json_error(500, "internal error in the caching proxy")
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response

    return answer


def wrapped(routes: Iterable[web.RouteDef], *decorators: Decorator) -> list[web.RouteDef]:
    """``routes`` with each handler wrapped by ``decorators`` (the first one outermost)."""
    out = []
    for route in routes:
        handler = route.handler
        for decorate in reversed(decorators):
            handler = decorate(handler)
        out.append(web.RouteDef(route.method, route.path, handler, route.kwargs))
    return out
