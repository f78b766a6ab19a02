"""Request bodies: read within a time limit, bounded in size, and decoded.

Every body the proxy forwards or keys on is read here, whole, before anything goes
upstream: a client that stalls gets a 408, one that sends too much a 413, and the upstream
is never called for either. aiohttp's own decoding of request bodies is switched off for
the proxy (``auto_decompress``, see :func:`proxy.app.create_app`) so that the codings are
decided in one place: gzip and deflate are decoded (the key is then the same as for the
plain body, and the body goes upstream without ``Content-Encoding``), others are a 415.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import json_error

ACCEPTED_CODINGS = "gzip, deflate"
_GZIP = frozenset({"gzip", "x-gzip"})
_DECODED = _GZIP | {"deflate"}
_MAX_CODINGS = 4  # layers of coding on one body; each is bounded in size anyway
_ENCODING_FIELD = "header:Content-Encoding"


class BodyRefused(Exception):
    """A body that cannot be used, and the JSON answer saying why."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


def content_codings(values: list[str]) -> list[str]:
    """The codings of ``Content-Encoding`` in the order they were applied, ``identity``
    left out. Raises :class:`BodyRefused` (415) for one the proxy cannot decode."""
    codings = [c.strip().lower() for v in values for c in v.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    unknown = [c for c in codings if c not in _DECODED]
    if unknown or len(codings) > _MAX_CODINGS:
        what = f"Content-Encoding {unknown[0]!r}" if unknown else "so many content codings"
        response = json_error(
            415,
            f"{what} is not supported: send the body as it is, or as {ACCEPTED_CODINGS}",
            field=_ENCODING_FIELD,
        )
        response.headers["Accept-Encoding"] = ACCEPTED_CODINGS  # RFC 7694
        raise BodyRefused(response)
    return codings


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(
        json_error(413, f"request body too large: at most {limit} bytes once decoded", field="body")
    )


def _not_coded(coding: str, why: str) -> BodyRefused:
    return BodyRefused(json_error(400, f"the body is not valid {coding} data: {why}", field="body"))


def decode(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` with one content coding undone, never more than ``limit`` bytes of it
    held: a small body that inflates without end (a zip bomb) stops there, as a 413."""
    if not body:
        return body
    if coding in _GZIP:
        wbits = 16 + zlib.MAX_WBITS
    else:
        # "deflate" means zlib-wrapped (RFC 9110 §8.4.1.2), but some clients send it raw.
        wbits = zlib.MAX_WBITS if body[0] & 0x0F == 8 else -zlib.MAX_WBITS
    out = bytearray()
    data = body
    while data:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise _not_coded(coding, str(exc)) from None
        if len(out) > limit:
            raise _too_large(limit)
        if not inflater.eof:
            raise _not_coded(coding, "it ends before its end")
        data = inflater.unused_data
        if data and coding not in _GZIP:
            raise _not_coded(coding, "there is data after its end")
        # gzip: a further member follows (RFC 1952 §2.2), each one consuming input.
    return bytes(out)


class BodyReader:
    """Reads request bodies for the proxy's routes (speech and pass-through alike)."""

    def __init__(self, max_bytes: int, timeout: float, *, small_body: int = 0) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.small_body = min(small_body, max_bytes)

    async def __call__(self, request: web.Request) -> bytes | web.Response:
        """The decoded body, or the JSON answer refusing it (408, 413, 415 or 400)."""
        if not request.body_exists:
            return b""  # a Content-Encoding on no body at all changes nothing
        content = request.content
        length = request.content_length
        if (
            content.is_eof()
            and length is not None
            and length <= self.small_body
            and "Content-Encoding" not in request.headers
        ):
            return content.read_nowait()  # the usual small body, all there already
        try:
            return await self.read(request)
        except BodyRefused as exc:
            return exc.response

    async def read(self, request: web.Request) -> bytes:
        """The whole body, decoded; raises :class:`BodyRefused`."""
        values = request.headers.getall("Content-Encoding", ())
        codings = content_codings(values) if values else []
        try:
            async with asyncio.timeout(self.timeout):
                body = await request.read()
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout} s"
            raise BodyRefused(json_error(408, message, field="body")) from None
        except web.HTTPRequestEntityTooLarge:
            message = f"request body too large: at most {self.max_bytes} bytes"
            raise BodyRefused(json_error(413, message, field="body")) from None
        except (ConnectionError, EOFError, web.RequestPayloadError, HttpProcessingError) as exc:
            # Cut short, or framed wrongly (a bad chunk): there is no body to use.
            message = f"the request body could not be read: {exc}"
            raise BodyRefused(json_error(400, message, field="body")) from None
        for coding in reversed(codings):
            body = decode(body, coding, self.max_bytes)
        return body
