"""Pass-through: forward a request the cache does not serve and stream the answer back.

The request body is read whole first, like a speech request's (within
``client_body_timeout_seconds``, at most ``max_request_body_kb``, decoded): a client that
stalls or sends too much is answered before the upstream is called at all.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from ..core.outcomes import CacheStatus, Forward
from ..observability.access_log import tag
from ..observability.metrics import METRICS
from .access import Access, Caller
from .body import BodyReader
from .errors import json_error
from .upstream import HOP_BY_HOP, BadHeader, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


class PassThrough:
    """Forwards to the upstream and streams its answer back, storing nothing."""

    def __init__(self, upstream: UpstreamClient, access: Access) -> None:
        self.upstream = upstream
        self.access = access
        settings = access.settings
        self.read_body = BodyReader(
            int(settings.max_request_body_kb * 1024), settings.client_body_timeout_seconds
        )

    async def __call__(
        self,
        request: web.Request,
        body: bytes | None,
        caller: Caller,
        *,
        detail: str | None = None,
    ) -> web.StreamResponse:
        started = time.perf_counter()
        if body is None and request.body_exists:
            read = await self.read_body(request)
            if isinstance(read, web.Response):
                return read
            body = read
        try:
            headers = self.upstream.outgoing_headers(
                self.access.forwarded(request.headers), identity=False
            )
        except BadHeader as exc:
            return json_error(400, str(exc), field=exc.field)
        try:
            upstream = await self.upstream.request(
                request.method, request.rel_url.raw_path, request.rel_url.raw_query_string,
                headers, body,
            )  # fmt: skip
        except UpstreamError as exc:
            METRICS.upstream_errors.labels(exc.kind).inc()
            return json_error(exc.status, exc.message, upstream_error=exc.kind)
        await self.access.upstream_answered(caller.credential, upstream.status)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                response.headers.add(name, value)
        if upstream.content_length is not None and "chunked" not in upstream.headers.get(
            "Transfer-Encoding", ""
        ):
            response.content_length = upstream.content_length
        status = CacheStatus(fwd=Forward.BYPASS, detail=detail)
        response.headers["Cache-Status"] = status.render()
        response.headers["X-Cache"] = status.x_cache
        tag(request, response)
        await response.prepare(request)
        try:
            async with upstream:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
        except Exception as exc:
            log.warning("pass-through cut short: %r", exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        route = "passthrough" if detail is None else "bypass"
        METRICS.requests.labels(route, "bypass").observe(time.perf_counter() - started)
        return response
