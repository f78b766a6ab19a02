"""CacheKey: a pure function of everything that changes the sound, and nothing else."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.keys import KEY_VERSION, CacheKey, cache_key, normalize_text, upstream_identity

BASE: dict[str, Any] = {
    "upstream": "https://api.openai.com",
    "route": "openai",
    "text": "Welcome to the hotel",
    "params": {"json:voice": "alloy", "json:model": "tts-1", "json:speed": 1.0},
}


def key(**changes: Any) -> str:
    return cache_key(**{**BASE, **changes}).hex


def test_key_is_sha256_hex_and_stable() -> None:
    assert len(key()) == 64
    assert key() == key()
    assert KEY_VERSION == "v2"


@pytest.mark.parametrize(
    "change",
    [
        {"upstream": "https://api.openai.com/v2"},
        {"route": "elevenlabs"},
        {"text": "Welcome to the hotel!"},
        {"text": "welcome to the hotel"},
        {"params": {**BASE["params"], "json:voice": "nova"}},
        {"params": {**BASE["params"], "json:model": "tts-1-hd"}},
        {"params": {**BASE["params"], "json:speed": 1.1}},
        {"params": {**BASE["params"], "json:response_format": "wav"}},
        {"params": {**BASE["params"], "json:instructions": "calm"}},
        {"namespace": "tenant-a"},
    ],
)
def test_any_one_field_changed_gives_another_key(change: dict[str, Any]) -> None:
    assert key(**change) != key()


@pytest.mark.parametrize(
    "text",
    [
        "  Welcome to the hotel",
        "Welcome  to the\n hotel",
        "Welcome\tto the hotel \n",
        "Welcome to the hotel",
    ],
)
def test_whitespace_only_changes_give_the_same_key(text: str) -> None:
    assert key(text=text) == key()


def test_equal_numbers_are_equal_and_param_order_does_not_matter() -> None:
    reordered = dict(reversed(list(BASE["params"].items())))
    assert key(params=reordered) == key()
    assert key(params={**BASE["params"], "json:speed": 1}) == key()


def test_unicode_is_nfc_normalized_only_when_a_rule_asks() -> None:
    # espeak-ng speaks NFD and NFC differently (docs/normalization.md).
    assert key(text="Caf\u00e9") != key(text="Cafe\u0301")
    nfc = ("nfc", "collapse_spaces", "trim")
    assert key(text="Caf\u00e9", normalize=nfc) == key(text="Cafe\u0301", normalize=nfc)


def test_upstream_identity_is_spelled_one_way() -> None:
    assert upstream_identity("HTTPS://API.OpenAI.com:443/") == "https://api.openai.com"
    assert upstream_identity("http://h:8080/tts/") == "http://h:8080/tts"


def test_parse_rejects_anything_but_a_key() -> None:
    assert CacheKey.parse(key()) is not None
    for bad in ("", "x" * 64, key().upper(), key()[:-1], key() + "0", "../" + key()[3:]):
        assert CacheKey.parse(bad) is None


@given(st.text(max_size=200))
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert once == once.rstrip(" \t\r\n")
    assert "  " not in once


@given(
    st.text(min_size=1, max_size=50),
    st.dictionaries(st.sampled_from(["json:voice", "json:model", "query:x"]), st.text(max_size=10)),
)
def test_key_never_fails_and_is_deterministic(text: str, params: dict[str, str]) -> None:
    a = cache_key(upstream="u", route="r", text=text, params=params)
    b = cache_key(upstream="u", route="r", text=text, params=dict(sorted(params.items())))
    assert a == b


def _collapse_every_run(text: str) -> str:
    """collapse_spaces as first written: every run of spaces, tabs, CRs and LFs, lone
    spaces included, replaced by one space or by its line feeds."""

    def one(run: re.Match[str]) -> str:
        breaks = run.group().count("\n")
        return "\n" * breaks if breaks > 1 else " "

    return re.sub(r"[ \t\r\n]+", one, text)


@given(st.text(alphabet=" \t\r\nab\u00a0\u3000é", max_size=60))
def test_collapse_spaces_gives_the_keys_it_always_gave(text: str) -> None:
    """Stored entries stay found: the faster collapse makes the same text as the first."""
    assert normalize_text(text, ("collapse_spaces",)) == _collapse_every_run(text)
