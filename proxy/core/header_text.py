"""Which header names and values an answer can carry as they are (pure).

What aiohttp refuses in a header (RFC 9110 §5.5, RFC 9112 §4): control characters, CR and
LF among them, but tab. A CR or LF would end the header early and start one of the
sender's choosing; a ":" in a name would move the start of its value. The hit path writes
stored headers below aiohttp (:mod:`proxy.request.prepared_hit`), and the store's reader
(:mod:`proxy.store.schema`) refuses an entry holding such a header, so both hold them to
this one definition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FORBIDDEN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
FORBIDDEN_NAME = re.compile(r"[\x00-\x1f\x7f:]")


def unwritable(headers: Sequence[tuple[str, str]]) -> str | None:
    """The name of the first header that cannot be written as it is, or None."""
    # One scan of all names and one of all values; the loop only runs to name the culprit.
    names = "".join([name for name, _ in headers])
    values = "".join([value for _, value in headers])
    if not (FORBIDDEN_NAME.search(names) or FORBIDDEN_VALUE.search(values)):
        return None
    for name, value in headers:
        if FORBIDDEN_NAME.search(name) or FORBIDDEN_VALUE.search(value):
            return name
    return None  # pragma: no cover - the joined scans found one
