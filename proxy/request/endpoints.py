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

from aiohttp import HttpVersion11, web

from ..observability.access_log import REQUEST_ID, REQUEST_ID_HEADER, printable, request_id_from
from .body import BodyRefused, content_codings
from .errors import json_error
from .upstream import BadHeader

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Decorator = Callable[[Handler], Handler]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


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
        except BadHeader as exc:
            response = json_error(400, str(exc), field=exc.field)
        except web.HTTPRequestEntityTooLarge as exc:
            response = json_error(413, f"request body too large: {exc.text}", field="body")
        except web.HTTPException as exc:
            if exc.status < 400:
                exc.headers[REQUEST_ID_HEADER] = request_id
                raise
            response = json_error(exc.status, exc.reason)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, printable(request.path))
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


def expect_continue(max_body: int) -> ExpectHandler:
    """The answer to a request's ``Expect`` header, before its body is read: ``100
    Continue``, or a JSON refusal instead (417 for another expectation, 413 for a declared
    body over ``max_body`` bytes, which the client then need not send at all)."""

    async def answer(request: web.Request) -> web.StreamResponse | None:
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no 100 Continue (RFC 9110 §10.1.1): ignored
        expect = ", ".join(request.headers.getall("Expect", ())).strip()
        refusal = None
        if expect.lower() != "100-continue":
            message = f"Expect {expect!r} is not supported (only 100-continue)"
            refusal = json_error(417, message, field="header:Expect")
        elif request.content_length is not None and request.content_length > max_body:
            message = f"request body too large: at most {max_body} bytes"
            refusal = json_error(413, message, field="body")
        if refusal is not None:
            request[REQUEST_ID] = request_id_from(request.headers.get(REQUEST_ID_HEADER))
            refusal.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
            return refusal
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of bytes_sent
        return None

    return answer


def answering_expect(routes: Iterable[web.RouteDef], handler: ExpectHandler) -> list[web.RouteDef]:
    """``routes`` with ``handler`` answering their ``Expect`` headers (aiohttp's own
    answers a 417 as plain text)."""
    return [
        web.RouteDef(r.method, r.path, r.handler, {**r.kwargs, "expect_handler": handler})
        for r in routes
    ]


def identity_bodies(handler: Handler) -> Handler:
    """``handler``, for routes that read bodies as sent: a coded body is a 415."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        if "Content-Encoding" in request.headers:
            try:
                coded = content_codings(request.headers.getall("Content-Encoding"))
            except BodyRefused as exc:
                return exc.response
            if coded:
                message = "this route takes its body uncompressed (no Content-Encoding)"
                response = json_error(415, message, field="header:Content-Encoding")
                response.headers["Accept-Encoding"] = "identity"
                return response
        return await handler(request)

    return answer
