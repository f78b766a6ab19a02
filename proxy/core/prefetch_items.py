"""What to prefetch: a list of request descriptions, from the admin API or a YAML file.

Pure logic (plus reading the file). Each item is a request description (see
:mod:`proxy.core.descriptions`) with the content type, the tenant and whether to keep it warm.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .descriptions import FIELDS, BadDescription, Described, describe
from .routes import RouteRule
from .tenants import TENANT_ID

ITEM_FIELDS = (*FIELDS, "content_type", "tenant", "keep_warm")
_CONTENT_TYPE_PATTERN = r"^[a-z0-9_][a-z0-9_.-]{0,63}$"


class ItemError(ValueError):
    """A prefetch item that cannot be used; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class PrefetchItem:
    """One request to have in the cache."""

    described: Described
    content_class: str | None
    tenant: str
    keep_warm: bool


def parse_item(raw: Any, rules: Sequence[RouteRule], *, where: str) -> PrefetchItem:
    """One item; raises ItemError naming the bad field (e.g. ``requests[3].body``)."""
    if not isinstance(raw, Mapping):
        raise ItemError(where, "expected an object describing one request")
    unknown = sorted(set(map(str, raw)) - set(ITEM_FIELDS))
    if unknown:
        raise ItemError(
            f"{where}.{unknown[0]}", f"unknown field(s) {unknown}; allowed: {list(ITEM_FIELDS)}"
        )
    content_class = raw.get("content_type")
    if content_class is not None and (
        not isinstance(content_class, str) or not re.match(_CONTENT_TYPE_PATTERN, content_class)
    ):
        raise ItemError(f"{where}.content_type", f"must match {_CONTENT_TYPE_PATTERN}")
    tenant = raw.get("tenant") or ""
    if not isinstance(tenant, str) or (tenant and not TENANT_ID.match(tenant)):
        raise ItemError(f"{where}.tenant", f"must match {TENANT_ID.pattern}")
    keep_warm = raw.get("keep_warm", False)
    if not isinstance(keep_warm, bool):
        raise ItemError(f"{where}.keep_warm", "expected true or false")
    description = {k: v for k, v in raw.items() if k in FIELDS}
    try:
        described = describe(rules, description, prefix=where)
    except BadDescription as exc:
        raise ItemError(exc.field, exc.message) from None
    return PrefetchItem(described, content_class, tenant, keep_warm)


def parse_items(
    raw: Any, rules: Sequence[RouteRule], *, limit: int, where: str = "requests"
) -> list[PrefetchItem]:
    """A list of items, at most ``limit``."""
    if not isinstance(raw, list) or not raw:
        raise ItemError(where, "expected a non-empty list of request descriptions")
    if len(raw) > limit:
        raise ItemError(where, f"at most {limit} requests per job (prefetch_max_requests)")
    return [parse_item(item, rules, where=f"{where}[{i}]") for i, item in enumerate(raw)]


def load_file(path: str | Path, rules: Sequence[RouteRule], *, limit: int) -> list[PrefetchItem]:
    """The start-up list: a YAML list of items (or ``{requests: [...]}``)."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ItemError(str(path), f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ItemError(str(path), f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(document, Mapping) and set(document) == {"requests"}:
        document = document["requests"]
    return parse_items(document, rules, limit=limit, where=Path(path).name)
