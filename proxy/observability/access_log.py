"""One log line per request: request id, route, cache result, status, bytes, duration.

The request id is the client's ``X-Request-ID`` when it looks like one (so a trace can be
followed across services), otherwise a fresh one; it is returned on every answer. The text
of the speech is personal data as often as not: it is logged only at DEBUG level.

Each line is still one ``logging`` record through the configured handlers, with the time
its answer was sent, but only its raw values are taken when it is sent: its records are
made and formatted with the rest of their batch (every 20 ms), and each stream handler's
lines are written in one write by a thread (see :class:`_Lines` for why only the write).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
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
        # round(x, 2) costs a tenth of the line; the same to the hundredth of a millisecond.
        "duration_ms": round(seconds * 100_000) / 100,
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


# Formatted text waiting for the writer thread, in order: (handler, text, its last record).
Texts = collections.deque[tuple[logging.StreamHandler[Any], str, logging.LogRecord]]

# How long a line waits for others to join its batch: a bound on how late it is written,
# and what lets a busy proxy format a batch at once and write it in one system call.
BATCH_SECONDS = 0.02
BATCH_LINES = 64  # formatted at once, so that the loop pauses well under a millisecond


class _Lines:
    """The access lines of the batch being gathered, and the thread that writes the
    batches made of them.

    A line is gathered on the event loop (a tuple on a list). Every ``BATCH_LINES`` lines,
    and by a timer ``BATCH_SECONDS`` after a batch starts, the loop makes and formats the
    records, at once; what is meant for plain stream handlers goes to a thread as one text
    per handler, which it writes (a stalled reader of stderr does not stall the proxy).
    The records stay off the thread on purpose: a Python thread that formats takes the
    interpreter lock each time the loop lets it go (every socket send), and on a busy
    machine the loop then waits for a thread the system has not scheduled (bench/hit_path:
    such a thread cost 7-12 us of CPU per hit and the loop's own CPU hardly fell; see
    docs/performance.md).
    """

    def __init__(self) -> None:
        self.items: list[tuple[logging.Logger, float, dict[str, Any]]] = []
        self.texts: Texts = collections.deque()
        self.lock = threading.Lock()  # one writer at a time: the thread or flush()
        self.wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.pid = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # the one whose timer is set
        self.timer: asyncio.TimerHandle | None = None

    def add(self, item: tuple[logging.Logger, float, dict[str, Any]]) -> None:
        items = self.items
        items.append(item)
        if len(items) >= BATCH_LINES:
            self._format()  # a bound on how long the loop pauses for it
        # One timer at a time; it dies with its loop (tests run one loop after another).
        if self.timer is None or self.loop is None or self.loop.is_closed():
            try:
                self.loop = loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to end the batch: written at once
                self.flush()
                return
            self.timer = loop.call_later(BATCH_SECONDS, self.end_batch)

    def _format(self) -> None:
        items, self.items = self.items, []
        if items:
            _dispatch(items, self.texts)

    def end_batch(self) -> None:
        """Make and format the batch's records, and have the thread write what the batch
        formatted (woken once a batch: each wake costs more than a line)."""
        self.timer = None
        self._format()
        if self.texts:
            if self.pid != os.getpid():  # first batch, or a forked child: start (again) here
                self.pid = os.getpid()
                self.wake = queue.SimpleQueue()
                threading.Thread(target=self._run, name="access-log", daemon=True).start()
            self.wake.put(None)

    def _run(self) -> None:
        wake = self.wake
        while True:
            wake.get()
            self.write()

    def write(self) -> None:
        """Write the texts waiting for the thread, in order."""
        texts = self.texts
        with self.lock:
            while texts:
                handler, text, record = texts.popleft()
                with handler.lock or contextlib.nullcontext():
                    try:
                        handler.stream.write(text)
                        handler.flush()
                    except Exception:
                        handler.handleError(record)

    def flush(self) -> None:
        """Write every waiting line now (also called at exit, and by tests)."""
        self._format()
        self.write()


_Format = Callable[[logging.LogRecord], str]


# A line written without its record: from the time its answer was sent and its message.
_Line = Callable[[float, str], str]


class _Route:
    """Where the records of one logger go, worked out once a batch: its plain stream
    handlers (each with its formatting and the lines of the batch) and the others."""

    def __init__(self, logger: logging.Logger) -> None:
        self.filtered = bool(logger.filters)
        self.streams: list[tuple[logging.StreamHandler[Any], _Format, _Line | None, list[str]]] = []
        self.others: list[logging.Handler] = []
        template = _template(logger)
        current: logging.Logger | None = logger
        while current is not None:  # as Logger.callHandlers walks them
            for handler in current.handlers:
                if handler.level > logging.INFO:
                    continue
                if type(handler) is logging.StreamHandler:
                    fast = None if handler.filters else _prepared(handler, template)
                    self.streams.append((handler, _formatting(handler), fast, []))
                else:
                    self.others.append(handler)
            current = current.parent if current.propagate else None
        # Records are made only for what needs one: a filter, another handler, a formatter
        # of its own.
        self.records = self.filtered or bool(self.others) or any(s[2] is None for s in self.streams)


def _dispatch(items: list[tuple[logging.Logger, float, dict[str, Any]]], texts: Texts) -> None:
    """Each item's record through its logger's handlers, as ``logger.handle`` would, except
    that the lines meant for a plain stream handler are formatted here and joined, for
    ``texts``."""
    routes: dict[logging.Logger, _Route] = {}
    for logger, created, fields in items:
        route = routes.get(logger)
        if route is None:
            route = routes[logger] = _Route(logger)
        if logger.disabled:
            continue
        message = _line(fields)
        record = _record(logger, created, fields, message) if route.records else None
        if record is not None and route.filtered and not logger.filter(record):
            continue
        for handler, form, fast, lines in route.streams:
            try:
                if fast is not None:
                    lines.append(fast(created, message) + handler.terminator)
                    continue
                assert record is not None
                if not handler.filters or handler.filter(record):
                    lines.append(form(record) + handler.terminator)
            except Exception:
                handler.handleError(record or _record(logger, created, fields, message))
        if record is not None:
            for other in route.others:
                other.handle(record)
    for logger, route in routes.items():
        for handler, _, _, lines in route.streams:
            if lines:
                # Only for handleError, should the write fail.
                last = _record(logger, time.time(), {}, lines[-1])
                texts.append((handler, "".join(lines), last))


# What an access record holds that varies from line to line; the rest is the template's.
_VARYING = frozenset(("asctime", "message", "msg", "created", "msecs", "relativeCreated"))
_FIELD = re.compile(r"%\((\w+)\)")


def _default_clock(handler: logging.Handler) -> logging.Formatter | None:
    """The handler's formatter when it is logging's own with its default clock."""
    formatter = handler.formatter or logging._defaultFormatter  # type: ignore[attr-defined]
    plain = (
        type(formatter) is logging.Formatter
        and type(formatter._style) is logging.PercentStyle
        and not formatter._style._defaults  # type: ignore[attr-defined]
        and not formatter.datefmt
        and formatter.converter is time.localtime
        and formatter.default_msec_format == "%s,%03d"
    )
    return formatter if plain else None


def _prepared(handler: logging.Handler, template: dict[str, Any]) -> _Line | None:
    """The text ``handler.format`` would give an access record, made without the record:
    for logging's own formatter with its default clock, when its format reads nothing but
    the template's attributes and the ones that vary (a record per line cost a fifth of
    the line). The date and time of a second is formatted once for all its lines."""
    formatter = _default_clock(handler)
    if formatter is None:
        return None
    fmt = formatter._style._fmt
    assert fmt is not None
    names = set(_FIELD.findall(fmt))
    if not names <= _VARYING | template.keys():
        return None
    fixed = {name: template[name] for name in names - _VARYING}
    clock = formatter.default_time_format
    second = -1
    stamp = ""

    def line(created: float, message: str) -> str:
        nonlocal second, stamp
        now = int(created)
        if now != second:
            second, stamp = now, time.strftime(clock, time.localtime(now))
        msecs = int((created - now) * 1000)
        values = {
            **fixed,
            "asctime": f"{stamp},{msecs:03d}",
            "message": message,
            "msg": message,
            "created": created,
            "msecs": msecs + 0.0,
            "relativeCreated": (created - _STARTED) * 1000,
        }
        return fmt % values

    return line


def _formatting(handler: logging.Handler) -> _Format:
    """``handler.format``, or the same text made faster for logging's own formatter with its
    default clock: the date and time of a second is formatted once for all its lines."""
    formatter = _default_clock(handler)
    if formatter is None:
        return handler.format
    if not formatter.usesTime():
        return formatter.format
    clock = formatter.default_time_format
    second = -1
    stamp = ""

    def form(record: logging.LogRecord) -> str:
        nonlocal second, stamp
        now = int(record.created)
        if now != second:
            second, stamp = now, time.strftime(clock, time.localtime(now))
        # What Formatter.format does for a record with no exception or stack.
        record.message = record.msg
        record.asctime = f"{stamp},{int(record.msecs):03d}"
        return formatter.formatMessage(record)

    return form


_TEMPLATES: dict[str, dict[str, Any]] = {}
_STARTED: float = getattr(logging, "_startTime", time.time())  # what relativeCreated counts from


def _template(logger: logging.Logger) -> dict[str, Any]:
    """The attributes every access record of ``logger`` shares, made once by ``makeRecord``
    (what the records' own constructor would spend most of a line's time on)."""
    template = _TEMPLATES.get(logger.name)
    if template is None:
        made = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "", (), None, func="log")
        template = _TEMPLATES[logger.name] = dict(made.__dict__)
    return template


def _record(
    logger: logging.Logger, created: float, fields: dict[str, Any], message: str
) -> logging.LogRecord:
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(_template(logger))
    # When the answer was sent, not when the line was written.
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    record.relativeCreated = (created - _STARTED) * 1000
    record.msg = message
    record.fields = fields
    return record


_LINES = _Lines()
flush = _LINES.flush
atexit.register(flush)


class AccessLine(AbstractAccessLogger):
    """aiohttp's access-log hook, called once the answer is sent (so sizes are final)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logger = self.logger
        # Checked per line, not once at start-up (aiohttp's ``enabled``): levels can change.
        if logger.isEnabledFor(logging.INFO):
            # The record is made with its batch rather than by ``logger.info``, which would
            # walk aiohttp's stack to name the caller (always this line).
            _LINES.add((logger, _now(), access_fields(request, response, time)))


def known_line(logger: logging.Logger, fields: dict[str, Any], text: str) -> None:
    """The line of an answer written without a request object (a known hit:
    proxy.request.known_hits), with the fields :func:`access_fields` gives."""
    if logger.isEnabledFor(logging.INFO):
        if log.isEnabledFor(logging.DEBUG):
            fields["text"] = text
        _LINES.add((logger, _now(), fields))


_now = time.time


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
