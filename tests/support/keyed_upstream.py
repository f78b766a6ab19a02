"""A loopback upstream that, like a real TTS API, answers only the keys it knows.

It wraps :class:`LoopbackUpstream`: every request's headers are recorded, and one whose
``Authorization: Bearer <key>`` (or ``xi-api-key``) is not in ``valid`` gets a 401 in
OpenAI's error shape, counted in ``refused``; the others reach the usual handlers, counted
in ``calls``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from .loopback_upstream import LoopbackUpstream
from .servers import served


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class KeyedUpstream(LoopbackUpstream):
    """A loopback TTS upstream that checks each request's key against ``valid``."""

    def __init__(self, valid: Iterable[str] = ()) -> None:
        super().__init__()
        self.valid = set(valid)
        self.refused = 0
        self.seen: list[dict[str, str]] = []  # every request's headers, refused ones too

    @property
    def total(self) -> int:
        """Every request that reached this upstream, answered or refused."""
        return len(self.seen)

    def presented(self, headers: Any) -> str | None:
        auth = headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return str(auth[7:].strip())
        value = headers.get("xi-api-key")
        return None if value is None else str(value)

    def app(self) -> web.Application:
        @web.middleware
        async def check(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append(dict(request.headers))
            if self.presented(request.headers) not in self.valid:
                self.refused += 1
                await request.read()
                body = {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
                return web.json_response(body, status=401)
            response: web.StreamResponse = await handler(request)
            return response

        app = super().app()
        app.middlewares.append(check)
        return app


@asynccontextmanager
async def keyed_upstream(valid: Iterable[str]) -> AsyncIterator[tuple[KeyedUpstream, str]]:
    """A :class:`KeyedUpstream` on 127.0.0.1: (the upstream, its base URL)."""
    fake = KeyedUpstream(valid)
    async with served(fake.app()) as url:
        yield fake, url
