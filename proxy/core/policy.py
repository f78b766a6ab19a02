"""What may be read from and written to the cache, decided as pure functions over headers."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class Directive(Enum):
    """What the client's request allows."""

    USE = "use"  # read, and write on a miss
    REFRESH = "refresh"  # Cache-Control: no-cache: skip the read, write the fresh answer
    BYPASS = "bypass"  # Cache-Control: no-store: neither read nor write


def _directives(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        name, _, arg = part.partition("=")
        if name.strip():
            out[name.strip().lower()] = arg.strip().strip('"')
    return out


def request_directive(headers: Mapping[str, str]) -> Directive:
    """The client's Cache-Control (and legacy Pragma) as a cache directive."""
    directives = _directives(headers.get("cache-control", ""))
    if "no-store" in directives:
        return Directive.BYPASS
    if "no-cache" in directives or directives.get("max-age") == "0":
        return Directive.REFRESH
    if not directives and "no-cache" in headers.get("pragma", "").lower():
        return Directive.REFRESH
    return Directive.USE


# Bodies that start like this are documents, not audio, whatever the label says.
_DOCUMENT_STARTS = (b"{", b"[", b"<")


def is_audio(media_type: str, head: bytes) -> bool:
    """Audio by its declared type; octet-stream only when its first bytes are not a document."""
    base = media_type.split(";", 1)[0].strip().lower()
    if base.startswith("audio/"):
        return True
    if base == "application/octet-stream":
        return not head.lstrip().startswith(_DOCUMENT_STARTS)
    return False


def refusal_before_body(
    *, status: int, headers: Mapping[str, str], max_entry_bytes: int
) -> str | None:
    """Why an upstream answer must not be stored, judged from its status and headers."""
    if status != 200:
        return "status"
    directives = _directives(headers.get("cache-control", ""))
    if "no-store" in directives or "private" in directives:
        return "upstream_no_store"
    if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
        return "content_encoding"
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_entry_bytes:
        return "too_large"
    return None


def refusal_after_body(
    *, headers: Mapping[str, str], body: bytes, complete: bool, max_entry_bytes: int
) -> str | None:
    """Why a finished upstream answer must not be stored, judged from its body."""
    if not complete:
        return "truncated"
    if not body:
        return "empty"
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != len(body):
        return "truncated"
    if len(body) > max_entry_bytes:
        return "too_large"
    if not is_audio(headers.get("content-type", ""), body[:64]):
        return "not_audio"
    return None
