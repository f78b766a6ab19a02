"""Cutting a text into sentences or clauses for segment caching, and which pieces to store.

A hotel agent's answer is mostly fixed sentences around a few dynamic ones; cached one
sentence at a time, only the new sentences go upstream. Pure: no I/O.

The cuts follow punctuation in es, en, fr, de, it, pt and the CJK marks (。！？, and 、，；：
in clause mode). A cut is never made inside a number (3.5, 1.200, 10:30), after an
abbreviation that continues the sentence (Sr., Dra., p. ej., e.g.), inside a URL, an
email or a quoted span, and SSML is never cut. Pieces too short to be worth an entry are
merged with a neighbour. ``"".join(split(text, mode)) == text`` always holds: the
whitespace between sentences stays with the piece before it.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Literal

SegmentMode = Literal["off", "sentence", "clause"]
MODES: tuple[SegmentMode, ...] = ("off", "sentence", "clause")
# How the missing pieces of an answer go upstream: one call each, or one call per run of
# consecutive missing pieces (docs/segments.md has the figures of both).
MissMode = Literal["pieces", "runs"]
MISS_MODES: tuple[MissMode, ...] = ("pieces", "runs")

# A piece with fewer letters and digits than this joins a neighbour: "Sí." or "Yes," alone
# would be an entry (and an upstream call) for almost no sound.
MIN_PIECE_CHARS = 10
# CJK characters carry a syllable or a word each; counted as this many letters.
_CJK_WEIGHT = 3

_SENTENCE_ENDS = ".!?…"
_CJK_SENTENCE_ENDS = "。！？"
_CLAUSE_MARKS = ",;:"
_CJK_CLAUSE_MARKS = "、，；："
_CLOSERS = "\"'»”“’)]」』）"

# Abbreviations after which the sentence goes on, whatever follows: titles before a name,
# and "for example" forms. Written without their final period; inner periods may be
# followed by a space ("p. ej." and "p.ej.").
_CONTINUING = (
    # es
    "sr", "sra", "srta", "sres", "dr", "dra", "dres", "lic", "ing", "arq", "prof", "profa",
    "ud", "uds", "vd", "vds", "av", "avda", "núm", "pág", "tel", "aprox", "dpto", "p.ej",
    "ej", "cía", "sto", "sta",
    # en
    "mr", "mrs", "ms", "mx", "messrs", "e.g", "i.e", "vs", "approx", "dept", "blvd", "ave",
    "ext", "mt", "cf",
    # fr
    "mme", "mlle", "mmes", "pr", "p.ex", "c.-à-d", "env", "bd", "tél",
    # de
    "hr", "hrn", "fr", "z.b", "d.h", "bzw", "ca", "vgl", "evtl", "ggf", "inkl", "bspw",
    "nr", "str", "geb", "sog", "u.a.m",
    # it
    "sig", "sigg", "sig.ra", "sig.na", "dott", "dott.ssa", "avv", "geom", "p.es",
    "pag", "egr", "gent",
    # pt
    "srs", "exmo", "exma", "eng", "p.ex", "nº", "n.º",
)  # fmt: skip
# Abbreviations that may also end a sentence: a cut after them only before a capital.
_ENDING = (
    "etc", "a.m", "p.m", "inc", "ltd", "co", "jr", "st", "no", "usw", "u.a", "ecc",
    "lda", "ee.uu", "a.c", "d.c", "min", "máx", "max", "hab",
)  # fmt: skip


def _abbreviation_pattern(words: Iterable[str]) -> re.Pattern[str]:
    alternatives = sorted(
        (r"\.\s?".join(re.escape(part) for part in word.split(".")) for word in words),
        key=len,
        reverse=True,
    )
    return re.compile(rf"(?:^|[^\w.])(?:{'|'.join(alternatives)})\Z", re.IGNORECASE)


_CONTINUING_RE = _abbreviation_pattern(_CONTINUING)
_ENDING_RE = _abbreviation_pattern(_ENDING)
_INITIAL_RE = re.compile(r"(?:^|[^\w.])[^\W\d_]\Z")  # "J. K. Rowling", "z. B."
_ABBREVIATION_WINDOW = 16

_URL = r"(?:https?://|www\.)[^\s<>\"]+?(?=[.,;:!?)\]]*(?:\s|$))"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_URL_RE = re.compile(_URL, re.IGNORECASE)
_EMAIL_RE = re.compile(_EMAIL)
_QUOTED_RE = re.compile(
    r"\"[^\"\n]*\"|“[^”\n]*”|«[^»\n]*»|„[^“”\n]*[“”]|「[^」]*」|『[^』]*』|\([^()\n]*\)"
)
_NUMBER_RE = re.compile(r"\d+(?:[.,:'’]\d+)+")
_GERMAN_ORDINAL_RE = re.compile(
    r"\d{1,2}\.\s+(?:Januar|Februar|März|April|Mai|Juni|Juli|August|September|Oktober|"
    r"November|Dezember|Jan|Feb|Mär|Apr|Jun|Jul|Aug|Sep|Okt|Nov|Dez)\b"
)
_SSML_RE = re.compile(r"<\s*/?\s*[A-Za-z][\w:-]*(?:\s[^<>]*)?/?\s*>")
_DASH_RE = re.compile(r"\s[—–-]\s+")


def parse_mode(value: str | None) -> SegmentMode | None:
    """A segment mode from a header or a setting, or None when it is not one."""
    if value is None:
        return None
    text = value.strip().lower()
    for mode in MODES:
        if text == mode:
            return mode
    return None


def is_ssml(text: str) -> bool:
    """Whether the text carries markup: SSML's pauses and prosody span the whole text."""
    return text.lstrip().startswith("<") or _SSML_RE.search(text) is not None


def _protected(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for pattern in (_URL_RE, _EMAIL_RE, _QUOTED_RE, _NUMBER_RE, _GERMAN_ORDINAL_RE):
        spans.extend(m.span() for m in pattern.finditer(text))
    return spans


def _is_cjk(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F") and char.isalnum()


def _weight(piece: str) -> int:
    return sum(_CJK_WEIGHT if _is_cjk(c) else 1 for c in piece if c.isalnum())


def _skip(text: str, i: int, chars: str) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _sentence_cut(text: str, i: int) -> int | None:
    """Where the next sentence starts if the end mark at ``i`` ends one, else None."""
    char = text[i]
    end = _skip(text, i + 1, _SENTENCE_ENDS + _CJK_SENTENCE_ENDS)
    end = _skip(text, end, _CLOSERS)
    if char in _CJK_SENTENCE_ENDS:
        return _skip_space(text, end)
    start = _skip_space(text, end)
    if start == end or start >= len(text):
        return None  # "3.5", "Hola.Adiós", or the end of the text
    following = text[start]
    if following.islower():
        return None  # "approx. five", "...y luego"
    if char == "." and end == i + 1:
        before = text[max(0, i - _ABBREVIATION_WINDOW) : i]
        if _CONTINUING_RE.search(before) or _INITIAL_RE.search(before):
            return None
        if _ENDING_RE.search(before) and not following.isupper():
            return None
    return start


def _clause_cut(text: str, i: int) -> int | None:
    char = text[i]
    end = _skip(text, i + 1, _CLOSERS)
    if char in _CJK_CLAUSE_MARKS:
        return _skip_space(text, end)
    start = _skip_space(text, end)
    if start == end or start >= len(text):
        return None  # "10:30", "1,200"
    return start


def _cuts(text: str, mode: SegmentMode) -> list[int]:
    marks = _SENTENCE_ENDS + _CJK_SENTENCE_ENDS
    if mode == "clause":
        marks += _CLAUSE_MARKS + _CJK_CLAUSE_MARKS
    protected = _protected(text)
    cuts: list[int] = []
    for i, char in enumerate(text):
        if char not in marks or (cuts and i < cuts[-1]):
            continue
        if char in _SENTENCE_ENDS or char in _CJK_SENTENCE_ENDS:
            cut = _sentence_cut(text, i)
        else:
            cut = _clause_cut(text, i)
        if cut is not None:
            cuts.append(cut)
    if mode == "clause":
        cuts.extend(m.end() for m in _DASH_RE.finditer(text))
    return sorted(
        {cut for cut in cuts if 0 < cut < len(text) and not any(a < cut < b for a, b in protected)}
    )


def _merge_small(pieces: list[str], min_chars: int) -> list[str]:
    merged: list[str] = []
    carry = ""
    for piece in pieces:
        piece = carry + piece
        carry = ""
        if _weight(piece) < min_chars:
            carry = piece
        else:
            merged.append(piece)
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    return merged


def split(text: str, mode: SegmentMode, *, min_chars: int = MIN_PIECE_CHARS) -> tuple[str, ...]:
    """The text's pieces in order; they concatenate to ``text``. One piece when ``mode`` is
    off, the text is SSML, or there is nothing to cut."""
    if mode == "off" or not text or is_ssml(text):
        return (text,)
    bounds = [0, *_cuts(text, mode), len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return tuple(_merge_small(pieces, min_chars)) or (text,)


# What makes a piece almost surely one-off: a figure (a room number, a date, a price), a
# currency, an address. Synthesized for the answer, never stored.
_CURRENCY_CODES = re.compile(r"\b(?:USD|EUR|GBP|MXN|ARS|COP|CLP|PEN|BRL|CHF|JPY|CNY)\b")
_ONE_OFF = (re.compile(r"\d"), _URL_RE, _EMAIL_RE, _CURRENCY_CODES)


def compile_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    """The ``segment_no_cache_patterns`` setting, compiled; ValueError names the bad one."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(
                f"segment_no_cache_patterns: {pattern!r} is not a regex: {exc}"
            ) from exc
    return tuple(compiled)


def storable(piece: str, no_cache: Sequence[re.Pattern[str]] = ()) -> bool:
    """Whether a piece's audio may be stored: not when it looks one-off."""
    if any(unicodedata.category(c) == "Sc" for c in piece):
        return False
    return not any(p.search(piece) for p in (*_ONE_OFF, *no_cache))


def parts(missing: Sequence[bool], mode: MissMode) -> list[tuple[int, ...]]:
    """How an answer's pieces (by index, in order) go out: each stored piece alone; each
    missing piece alone (``pieces``), or consecutive missing ones as one run (``runs``)."""
    out: list[tuple[int, ...]] = []
    for i, miss in enumerate(missing):
        if mode == "runs" and miss and out and missing[out[-1][-1]]:
            out[-1] = (*out[-1], i)
        else:
            out.append((i,))
    return out
