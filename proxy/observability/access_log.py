"""One log line per request: request id, route, cache result, status, bytes, duration.

The request id is the client's ``X-Request-ID`` when it looks like one (so a trace can be
followed across services), otherwise a fresh one; it is returned on every answer. The text
of the speech is personal data as often as not: it is logged only at DEBUG level.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..core.outcomes import CacheStatus

log = logging.getLogger("proxy.access")

REQUEST_ID_HEADER = "X-Request-ID"
# What the processor tells the log line about a request.
ROUTE = web.RequestKey("tts_route", str)
TEXT = web.RequestKey("tts_text", str)
REQUEST_ID = web.RequestKey("request_id", str)
# A request id we echo must not smuggle anything into logs or headers.
_SANE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

# Fresh ids: 32 hex digits, a random per-process half and a counter (uuid4 per request
# showed up in profiles of the hit path).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))


def printable(text: str) -> str:
    """``text`` with every space and unprintable character (line breaks, controls, lone
    surrogates, Unicode separators) percent-encoded, so that what a client sent cannot
    begin a log line of its own or pass for another field of one."""
    if text.isprintable() and " " not in text:
        return text  # the usual path: nothing to do
    return "".join(
        c if c.isprintable() and c != " " else quote(c.encode("utf-8", "surrogatepass"))
        for c in text
    )


def request_id_from(header: str | None) -> str:
    """The client's request id when it is sane, else a new one."""
    if header is not None and _SANE_ID.fullmatch(header):
        return header
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


_RESULT_OF_X_CACHE = {"HIT": "hit", "BYPASS": "bypass", "STALE": "stale"}


def cache_result(status: int, headers: Any) -> str:
    """hit, miss, coalesced, stale, bypass, error or other, from what the proxy answered."""
    x_cache = headers.get("X-Cache")
    if x_cache == "MISS":
        parsed = CacheStatus.parse(headers.get("Cache-Status", ""))
        return str(parsed.result) if parsed is not None else "miss"
    result = _RESULT_OF_X_CACHE.get(x_cache)
    if result is not None:
        return result
    return "error" if status >= 400 else "other"


def access_fields(
    request: web.BaseRequest, response: web.StreamResponse, seconds: float
) -> dict[str, Any]:
    """The structured fields of one request's line, once its answer has been sent."""
    fields: dict[str, Any] = {
        "request_id": request.get(REQUEST_ID, ""),
        "method": request.method,
        "path": printable(request.path),
        "route": request.get(ROUTE, ""),
        # An answer may know its result (a prepared hit), sparing its headers a lookup.
        "result": getattr(response, "access_result", None)
        or cache_result(response.status, response.headers),
        "status": response.status,
        # As on the wire (headers and chunk framing included), like nginx's $bytes_sent.
        "bytes_sent": response.body_length,
        "content_length": response.content_length,
        "duration_ms": round(seconds * 1000, 2),
        "remote": request.remote or "",
    }
    if log.isEnabledFor(logging.DEBUG) and TEXT in request:
        fields["text"] = request[TEXT]
    return fields


def _line(fields: dict[str, Any]) -> str:
    route = f" route={fields['route']}" if fields["route"] else ""
    text = f" text={fields['text']!r}" if "text" in fields else ""
    return (
        f"{fields['method']} {fields['path']} {fields['status']} {fields['result']}{route} "
        f"bytes={fields['bytes_sent']} {fields['duration_ms']}ms id={fields['request_id']}{text}"
    )


class AccessLine(AbstractAccessLogger):
    """aiohttp's access-log hook, called once the answer is sent (so sizes are final)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logger = self.logger
        # Checked per line, not once at start-up (aiohttp's ``enabled``): levels can change.
        if logger.isEnabledFor(logging.INFO):
            fields = access_fields(request, response, time)
            # The record is made here rather than by ``logger.info``, which would walk
            # aiohttp's stack to name the caller (always this line): about a fifth of the
            # line's cost on a hit.
            record = logger.makeRecord(
                logger.name, logging.INFO, __file__, 0, _line(fields), (), None,
                func="log", extra={"fields": fields},
            )  # fmt: skip
            logger.handle(record)


def runner_options(*, access_log: bool, idle_timeout: float) -> dict[str, Any]:
    """Keyword arguments for the ``web.AppRunner`` (or test server) serving the proxy."""
    return {
        "access_log_class": AccessLine,
        "access_log": log if access_log else None,
        # aiohttp closes a connection that has not completed a request this long after it
        # opened or after its last answer: the bound on slow-loris clients sending headers.
        "keepalive_timeout": idle_timeout,
    }


def tag(request: web.Request, response: web.StreamResponse) -> None:
    """Give an answer streamed by its handler the request's id, before it is prepared
    (:func:`proxy.request.endpoints.tagged` tags every other answer)."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
