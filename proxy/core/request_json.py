"""A speech request's JSON body, read strictly: one meaning per body, or an error naming why.

Python's ``json`` takes the last of duplicate keys (another parser may take the first, so
the proxy and the upstream could read different voices), accepts lone surrogates such as
``"\\ud800"`` (which no UTF-8 encoder will take: the key could not be computed), and
recurses once per nesting level (deep enough input raises RecursionError). Each is refused
here with the field to blame; the nesting depth is measured before parsing starts.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

# Deeper than any TTS API's body (ElevenLabs' voice_settings is the second level).
MAX_DEPTH = 32

_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE = re.compile("[\ud800-\udfff]")


class BadJSON(ValueError):
    """A body that is not one well-formed JSON object; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class _Duplicated(dict[str, Any]):
    """An object in which ``duplicate`` occurred more than once."""

    duplicate: str


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (JSON), brackets in strings aside."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = _Duplicated(obj)
    for name, _ in pairs:
        if name in seen:
            marked.duplicate = name
            break
        seen.add(name)
    return marked


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _printable(name: str) -> str:
    """A name as it can be shown, lone surrogates spelled as escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _check(value: Any, path: str) -> None:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise BadJSON(
                f"json:{path}", f"{path!r} holds a lone surrogate escape, which is not text"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadJSON(f"json:{path}", f"{path!r}: numbers must be finite")
    elif isinstance(value, dict):
        if isinstance(value, _Duplicated):
            where = _join(path, _printable(value.duplicate))
            raise BadJSON(f"json:{where}", f"duplicate key {where!r} in the JSON body")
        for name, item in value.items():
            where = _join(path, _printable(name))
            if _SURROGATE.search(name):
                raise BadJSON(f"json:{where}", f"key {where!r} holds a lone surrogate escape")
            _check(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def load_object(text: str, *, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """The JSON object in ``text``; BadJSON for anything else or anything ambiguous.

    Fields are named ``json:a.b[2].c``; problems of the whole body are named ``body``.
    """
    depth = nesting_depth(text)
    if depth > max_depth:
        raise BadJSON("body", f"the JSON body nests {depth} levels deep; at most {max_depth}")
    try:
        document = json.loads(text, object_pairs_hook=_object, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadJSON("body", f"request body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadJSON("body", "request body must be a JSON object")
    _check(document, "")
    return document
