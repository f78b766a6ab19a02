"""Who may call /admin: one check in front of every admin route.

With an admin token configured, callers send ``Authorization: Bearer <token>`` (compared in
constant time): none → 401, a wrong one → 403. Without a token, only loopback clients are
answered (403 otherwise). The client is the TCP peer as aiohttp reports it
(``request.remote``); ``X-Forwarded-For`` and friends are never believed here, since any
client can send them.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..request.errors import json_error

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(remote: str | None) -> bool:
    """A loopback peer: 127.0.0.0/8, ::1 or an IPv4-mapped loopback address."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(sent: str, expected: str) -> bool:
    try:
        given = sent.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, expected.encode("utf-8"))


def refusal(request: web.Request, admin_token: str | None) -> web.Response | None:
    """The answer refusing this admin request, or None when it may proceed."""
    if admin_token is None:
        if is_loopback(request.remote):
            return None
        return json_error(
            403,
            "no admin token is configured, so the admin API answers loopback clients only; "
            "set ADMIN_TOKEN (or ADMIN_TOKEN_FILE) to call it from elsewhere",
            field="header:Authorization",
        )
    header = request.headers.get("Authorization")
    token = bearer_token(header) if header is not None else None
    if token is None:
        response = json_error(
            401, "admin token required: Authorization: Bearer <token>", field="header:Authorization"
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="tts-cache-proxy admin"'
        return response
    if not token_matches(token, admin_token):
        return json_error(403, "the admin token is not valid", field="header:Authorization")
    return None


def admin_only(admin_token: str | None) -> Callable[[Handler], Handler]:
    """Wraps an admin handler so that only callers :func:`refusal` lets through reach it."""
    if admin_token is None:
        log.warning(
            "no admin token configured (ADMIN_TOKEN / ADMIN_TOKEN_FILE): "
            "the admin API answers loopback clients only"
        )

    def guarded(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guard(request: web.Request) -> web.StreamResponse:
            refused = refusal(request, admin_token)
            if refused is not None:
                return refused
            return await handler(request)

        return guard

    return guarded
