"""What became of a request, as data: its result, and the one place ``Cache-Status`` is built.

``Cache-Status`` (RFC 9211) is what clients, logs and tests read to know whether audio came
from the cache. It is built here from a :class:`CacheStatus` and parsed back here, so no
other module writes or reads it by substring. ``X-Cache`` is derived from the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

CACHE_NAME = "tts-cache"


class Result(StrEnum):
    """A speech request's result, as the request metrics and the access log label it."""

    HIT = "hit"
    MISS = "miss"
    COALESCED = "coalesced"  # answered by another request's upstream call
    STALE = "stale"  # an expired copy, because the upstream failed
    BYPASS = "bypass"  # not looked up: passed through
    PARTIAL = "partial"  # joined from pieces: some cached, some synthesized


class Forward(StrEnum):
    """Why the request went forward to the upstream (RFC 9211 ``fwd``)."""

    MISS = "miss"
    REQUEST = "request"  # the client asked for a fresh answer (no-cache)
    BYPASS = "bypass"  # the cache was not consulted
    STALE = "stale"  # the stored copy had expired
    PARTIAL = "partial"  # some pieces of the answer were stored, the rest went forward


@dataclass(frozen=True, slots=True)
class CacheStatus:
    """One ``Cache-Status`` member of this cache."""

    hit: bool = False
    ttl: int | None = None
    fwd: Forward | None = None
    fwd_status: int | None = None
    collapsed: bool = False
    stored: bool = False
    detail: str | None = None

    def render(self) -> str:
        parts = [CACHE_NAME]
        if self.hit:
            parts.append("hit")
        if self.fwd is not None:
            parts.append(f"fwd={self.fwd}")
        if self.fwd_status is not None:
            parts.append(f"fwd-status={self.fwd_status}")
        if self.collapsed:
            parts.append("collapsed")
        if self.stored:
            parts.append("stored")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.detail is not None:
            parts.append(f"detail={self.detail}")
        return "; ".join(parts)

    def but(self, **changes: object) -> CacheStatus:
        """This status with some parameters changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def x_cache(self) -> str:
        """The ``X-Cache`` value that goes with it."""
        if self.hit:
            return "HIT"
        if self.fwd is Forward.STALE:
            return "STALE"
        if self.fwd is Forward.BYPASS:
            return "BYPASS"
        if self.fwd is Forward.PARTIAL:
            return "PARTIAL"
        return "MISS"

    @property
    def result(self) -> Result:
        if self.hit:
            return Result.HIT
        if self.fwd is Forward.STALE:
            return Result.STALE
        if self.fwd is Forward.BYPASS:
            return Result.BYPASS
        if self.fwd is Forward.PARTIAL:
            return Result.PARTIAL
        return Result.COALESCED if self.collapsed else Result.MISS

    @classmethod
    def parse(cls, value: str) -> CacheStatus | None:
        """This cache's member of a ``Cache-Status`` header, or None without one."""
        for member in value.split(","):
            name, _, params = member.strip().partition(";")
            if name.strip() != CACHE_NAME:
                continue
            fields: dict[str, object] = {}
            for param in params.split(";"):
                key, _, raw = param.strip().partition("=")
                if key == "hit":
                    fields["hit"] = True
                elif key in ("collapsed", "stored"):
                    fields[key] = True
                elif key == "fwd" and raw in Forward._value2member_map_:
                    fields["fwd"] = Forward(raw)
                elif key in ("ttl", "fwd-status") and raw.isdigit():
                    fields["ttl" if key == "ttl" else "fwd_status"] = int(raw)
                elif key == "detail" and raw:
                    fields["detail"] = raw
            return cls(**fields)  # type: ignore[arg-type]
        return None


HIT = CacheStatus(hit=True)


def segments_status(pieces: int, hits: int) -> CacheStatus:
    """An answer joined from ``pieces`` pieces, ``hits`` of them stored: a hit when all
    were, a miss when none was, else ``fwd=partial``. The detail is an RFC 8941 token,
    e.g. ``pieces-3-hits-2``."""
    detail = f"pieces-{pieces}-hits-{hits}"
    if hits == pieces:
        return CacheStatus(hit=True, detail=detail)
    return CacheStatus(fwd=Forward.PARTIAL if hits else Forward.MISS, detail=detail)
