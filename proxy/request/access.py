"""Access: who is calling, what they may do, and whether their budget lets them in.

The stage before every other. ``client_auth`` chooses how callers are known:

- ``keys``: a proxy key from the client keys file, presented as ``Authorization: Bearer``
  or in the header the client's SDK uses; no key or a wrong one is a 401 and nothing goes
  upstream. The proxy key is never forwarded; the upstream key is injected.
- ``upstream``: the client's own upstream credential is forwarded; the cache answers only
  credentials the upstream accepted lately (:mod:`proxy.store.credentials`). RFC 9111
  §3.5: a shared cache must not reuse an answer to an authorized request for another one
  unless the upstream would serve it too.
- ``none``: anyone who reaches the port (a gateway in front authenticates).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from redis.exceptions import RedisError

from ..config.settings import ConfigError, Settings, load_client_keys
from ..core.clients import ClientKey, ClientKeys, credential_digest, presented_key
from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from ..store.credentials import Credentials
from ..store.guard import CacheUnavailable
from ..store.limits import Budget, Guard, Limits, unguarded

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
# Credentials whose digest is kept (a replica sees a few; a flood of new ones just resets).
_REMEMBERED = 1024
_GONE = (-1, -1)  # the keys file's stamp while it cannot be read


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from, as far as the proxy can tell."""

    name: str  # for usage and metrics: the key's name, or "anonymous"
    key: ClientKey | None = None
    tenant: str | None = None  # the tenant an authenticated source names
    credential: str | None = None  # digest of the upstream credential (upstream mode)
    may_classify: bool = True
    may_refresh: bool = True

    @property
    def scope(self) -> tuple[Any, ...]:
        """What of the caller changes how a request is described (for fingerprints)."""
        return (self.tenant, self.may_classify)


def openai_error(
    status: int, message: str, *, code: str, kind: str = "invalid_request_error"
) -> web.Response:
    """An error in the shape OpenAI's SDKs read (and most other TTS SDKs tolerate)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


class Access:
    """Authenticates callers and keeps them within their limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mode = settings.auth_mode
        self.headers = settings.key_headers
        self.keys = ClientKeys()
        self._keys_stamp: tuple[int, int] | None = None
        if self.mode == "keys" and settings.client_keys_file:
            self.reload()
        self.secret = (settings.audio_cache_key_secret or "").encode()
        self._digests: dict[str, str] = {}
        self._request_counters: dict[str, Any] = {}
        self.limits: Limits | None = None
        self.credentials: Credentials | None = None
        self.injected_key = bool(settings.upstream_api_key)
        self.tenants = settings.tenancy

    def attach(self, redis: Any, secret: bytes, guard: Guard = unguarded) -> None:
        """Connect the shared state once the store is open; ``guard`` is the cache
        service's circuit breaker, so that a store known to be down costs no timeout."""
        prefix = self.settings.audio_cache_key_prefix
        self.secret = secret
        self._digests.clear()  # made with the secret in force before
        self.limits = Limits(redis, prefix, guard=guard)
        if self.mode == "upstream":
            seconds = self.settings.credential_verify_seconds
            self.credentials = Credentials(redis, prefix, seconds, guard=guard)

    # -- the keys file -----------------------------------------------------------------

    def reload(self) -> bool:
        """Read the keys file again; on an error keep the keys in force. True if changed."""
        path = self.settings.client_keys_file
        if path is None:
            return False
        try:
            stat = os.stat(path)
        except OSError as exc:
            log.error("client keys not reloaded, the previous %d stay: %s", len(self.keys), exc)
            return False
        # Taken before reading: a write during the read changes it, and is read next time.
        # A broken file is not read again (nor logged again) until it changes.
        self._keys_stamp = (stat.st_mtime_ns, stat.st_size)
        try:
            keys = load_client_keys(path)
        except ConfigError as exc:
            log.error("client keys not reloaded, the previous %d stay: %s", len(self.keys), exc)
            return False
        self.keys = keys
        log.info("client keys loaded: %d", len(keys))
        return True

    def reload_if_changed(self) -> bool:
        """:meth:`reload` when the file changed since it was last read."""
        path = self.settings.client_keys_file
        if self.mode != "keys" or path is None:
            return False
        try:
            stat = os.stat(path)
        except OSError as exc:
            if self._keys_stamp != _GONE:  # said once, not on every look
                self._keys_stamp = _GONE
                log.error(
                    "client keys file unreadable, the %d loaded stay: %s", len(self.keys), exc
                )
            return False
        if (stat.st_mtime_ns, stat.st_size) == self._keys_stamp:
            return False
        return self.reload()

    # -- who is calling ----------------------------------------------------------------

    def identify(self, request: web.Request) -> Caller | web.Response:
        """The caller, or a 401 when ``keys`` are required and none fits."""
        if self.mode == "none":
            return Caller(ANONYMOUS)
        if self.mode == "upstream":
            return Caller(ANONYMOUS, credential=self._credential(request.headers))
        key = self.keys.find(presented_key(request.headers, self.headers))
        if key is None:
            METRICS.client_refusals.labels("invalid_key").inc()
            sent = presented_key(request.headers, self.headers) is not None
            message = (
                "Incorrect API key provided for this proxy."
                if sent
                else "You didn't provide an API key for this proxy. Send it as "
                "'Authorization: Bearer <key>' or in your SDK's API key header."
            )
            return openai_error(401, message, code="invalid_api_key")
        return Caller(
            key.name,
            key=key,
            tenant=key.tenant,
            may_classify=key.may_classify,
            may_refresh=key.may_refresh,
        )

    def _credential(self, headers: Any) -> str:
        """A digest of every credential header the request carries ("" for none)."""
        parts = "\n".join([f"{name}:{headers[name]}" for name in self.headers if name in headers])
        # The same few credentials come back on every request: hash each once.
        digest = self._digests.get(parts)
        if digest is None:
            digest = credential_digest(parts, self.secret)
            if len(self._digests) >= _REMEMBERED:
                self._digests.clear()
            self._digests[parts] = digest
        return digest

    def forwarded(self, headers: Any) -> CIMultiDict[str]:
        """The request headers that may go upstream: never a proxy key."""
        out = CIMultiDict(headers)
        if self.mode == "keys":
            for name in self.headers:
                out.popall(name, None)
        return out

    def may_forward(self, path: str) -> bool:
        """Whether a request no speech rule claims may be passed through: always, unless
        the proxy injects its own upstream key; then only the paths the operator lists."""
        if not self.injected_key:
            return True
        return any(fnmatch.fnmatchcase(path, glob) for glob in self.settings.passthrough_paths)

    # -- limits ------------------------------------------------------------------------

    def _budgets(self, caller: Caller, tenant: str, budget: Budget) -> list[tuple[str, int]]:
        """(who, limit) pairs that apply to this caller for ``budget``."""
        out: list[tuple[str, int]] = []
        field = (
            "requests_per_minute"
            if budget is Budget.REQUESTS_PER_MINUTE
            else "upstream_characters_per_day"
        )
        if caller.key is not None:
            limit = getattr(caller.key, field)
            if limit is not None:
                out.append((f"key:{caller.key.name}", limit))
        if tenant:
            limit = getattr(self.tenants.policy(tenant), field)
            if limit is not None:
                out.append((f"tenant:{tenant}", limit))
        return out

    def limited(self, caller: Caller, tenant: str = "") -> bool:
        """Whether any per-minute limit applies (only then does :meth:`admit` need the
        store); counts the request either way."""
        counter = self._request_counters.get(caller.name)
        if counter is None:  # labels() takes a lock: looked up once per client
            counter = self._request_counters[caller.name] = METRICS.client_requests.labels(
                caller.name
            )
        TALLY.add(counter)
        if caller.key is None and not tenant:
            return False
        return bool(self._budgets(caller, tenant, Budget.REQUESTS_PER_MINUTE))

    async def admit(self, caller: Caller, tenant: str = "") -> web.Response | None:
        """Take one request from the caller's per-minute limits: a 429 when over (after
        :meth:`limited` said some apply)."""
        return await self._take(caller, tenant, Budget.REQUESTS_PER_MINUTE, 1)

    async def charge(self, caller: Caller, tenant: str, characters: int) -> web.Response | None:
        """Count characters about to be sent upstream: a 429 when over the daily limit."""
        return await self._take(caller, tenant, Budget.UPSTREAM_CHARACTERS_PER_DAY, characters)

    def sent(self, caller: Caller, characters: int) -> None:
        """Characters charged did go upstream (this request leads its fill)."""
        METRICS.client_upstream_characters.labels(caller.name).inc(characters)

    async def refund(self, caller: Caller, tenant: str, characters: int) -> None:
        """Give back characters charged for a miss another request's call answered."""
        budgets = self._budgets(caller, tenant, Budget.UPSTREAM_CHARACTERS_PER_DAY)
        if self.limits is None or not budgets:
            return
        try:
            for who, _ in budgets:
                await self.limits.give_back(who, Budget.UPSTREAM_CHARACTERS_PER_DAY, characters)
        except RedisError:
            pass  # the budget stays charged: errs on the side of the limit

    async def _take(
        self, caller: Caller, tenant: str, budget: Budget, amount: int
    ) -> web.Response | None:
        budgets = self._budgets(caller, tenant, budget)
        if not budgets:
            return None
        if self.limits is None:
            return None
        taken: list[str] = []
        try:
            for who, limit in budgets:
                verdict = await self.limits.take(who, budget, amount, limit)
                if not verdict.allowed:
                    for done in taken:  # what was taken from the other budget goes back
                        await self.limits.give_back(done, budget, amount)
                    return self._over(budget, who, verdict.limit, verdict.retry_after_seconds)
                taken.append(who)
        except RedisError as exc:
            if self.settings.limits_fail_open:
                if not isinstance(exc, CacheUnavailable):  # an open breaker is logged apart
                    log.warning("limits not checked, the store is unavailable: %s", exc)
                return None
            METRICS.client_refusals.labels("limits_unavailable").inc()
            return openai_error(
                503,
                "Usage limits cannot be checked right now; try again shortly.",
                code="limits_unavailable",
                kind="server_error",
            )
        return None

    def _over(self, budget: Budget, who: str, limit: int, retry_after: int) -> web.Response:
        if budget is Budget.REQUESTS_PER_MINUTE:
            reason, what = "rate_limit", f"{limit} requests per minute"
        else:
            reason, what = "character_limit", f"{limit} upstream characters per day"
        METRICS.client_refusals.labels(reason).inc()
        response = openai_error(
            429,
            f"Rate limit reached for {who}: {what}. Retry after {retry_after} s.",
            code="rate_limit_exceeded",
            kind="requests",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response

    # -- upstream credentials ----------------------------------------------------------

    def verified_here(self, caller: Caller) -> bool:
        """:meth:`verified` when this replica can tell without the store (the hit path's
        usual case: outside upstream mode, or a verdict less than a second old)."""
        credentials = self.credentials
        if credentials is None or caller.credential is None:
            return True
        return credentials.verified_here(caller.credential)

    async def verified(self, caller: Caller) -> bool:
        """Whether the cache may answer this caller (always, outside upstream mode)."""
        if self.credentials is None or caller.credential is None:
            return True
        try:
            return await self.credentials.verified(caller.credential)
        except RedisError:
            return False  # unknown: the request goes upstream with its own credential

    async def upstream_answered(self, credential: str | None, status: int) -> None:
        """What the upstream's answer says of the credential that was sent with it."""
        if self.credentials is None or credential is None:
            return
        try:
            if status in (401, 403):
                await self.credentials.refused(credential)
            elif 200 <= status < 300:
                await self.credentials.accepted(credential)
        except CacheUnavailable:
            pass  # the breaker is open: said once, by the store's own log
        except RedisError as exc:
            log.warning("credential verdict not kept, the store is unavailable: %s", exc)

    async def usage(self) -> dict[str, Any]:
        """Each key's and tenant's usage in the current windows, where a limit applies
        (a budget without a limit is not counted: its use is null)."""
        assert self.limits is not None
        entries: list[dict[str, Any]] = []
        subjects: list[tuple[str, str, int | None, int | None]] = [
            ("key", k.name, k.requests_per_minute, k.upstream_characters_per_day) for k in self.keys
        ]
        subjects += [
            ("tenant", name, p.requests_per_minute, p.upstream_characters_per_day)
            for name, p in self.tenants.policies.items()
        ]
        limits = self.limits

        async def used(who: str, budget: Budget, limit: int | None) -> int | None:
            # Only limited budgets are counted (no Redis call otherwise): null, not a 0.
            return None if limit is None else await limits.used(who, budget)

        for kind, name, rpm, cpd in subjects:
            who = f"{kind}:{name}"
            entries.append(
                {
                    kind: name,
                    "requests_this_minute": await used(who, Budget.REQUESTS_PER_MINUTE, rpm),
                    "requests_per_minute": rpm,
                    "upstream_characters_today": await used(
                        who, Budget.UPSTREAM_CHARACTERS_PER_DAY, cpd
                    ),
                    "upstream_characters_per_day": cpd,
                }
            )
        return {
            "client_auth": self.mode,
            "keys": [e for e in entries if "key" in e],
            "tenants": [e for e in entries if "tenant" in e],
        }
