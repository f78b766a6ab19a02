"""Text normalization for keys: only what leaves the sound unchanged, configurable per rule."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.settings import ConfigError, load_settings
from proxy.core.keys import (
    DEFAULT_NORMALIZATION,
    cache_key,
    normalization,
    normalize_text,
)
from proxy.core.routes import PRESETS, FieldRef, RouteRule, RuleError, rule_from_mapping
from proxy.demo.espeak import synthesize_in_a_fresh_process
from tests.support.proxies import ProxyFactory
from tests.support.waits import until_stored

SENTENCE = "Bienvenido al hotel. La recepción está abierta."


def key(text: str, normalize: tuple[str, ...] = DEFAULT_NORMALIZATION) -> str:
    return cache_key(upstream="u", route="r", text=text, params={}, normalize=normalize).hex


@pytest.mark.parametrize(
    "spelling",
    ["Bienvenido al hotel.\nLa recepción está abierta.",
     "Bienvenido al hotel.\r\nLa recepción está abierta.",
     "Bienvenido\tal hotel. La recepción está abierta.",
     "Bienvenido  al  hotel.  La  recepción  está  abierta.",
     "  \tBienvenido al hotel. La recepción está abierta. \n",
     "\nBienvenido al hotel. La recepción está abierta.\n\n\n"],
)  # fmt: skip
def test_what_sounds_the_same_shares_a_key(spelling: str) -> None:
    assert key(spelling) == key(SENTENCE)


@pytest.mark.parametrize(
    "spelling",
    ["Bienvenido al hotel.\n\nLa recepción está abierta.",  # a paragraph's pause
     "Bienvenido\n\nal hotel. La recepción está abierta.",
     "\n\nBienvenido al hotel. La recepción está abierta.",  # a leading pause
     "Bienvenido al hotel. La recepcio\u0301n esta\u0301 abierta.",  # NFD
     "Bienvenido\u00a0al hotel. La recepción está abierta.",  # not measured: kept apart
     "bienvenido al hotel. La recepción está abierta.",
     "Bienvenido al hotel, la recepción está abierta."],
)  # fmt: skip
def test_what_may_sound_different_does_not(spelling: str) -> None:
    assert key(spelling) != key(SENTENCE)


def test_paragraph_breaks_keep_their_line_feeds_and_lose_what_surrounds_them() -> None:
    assert normalize_text("a \r\n\t\r\n b") == "a\n\nb"
    assert normalize_text("a\n\n\nb") == "a\n\n\nb"  # mid-sentence, three differ from two
    assert normalize_text(" \n \n a \n\n") == "\n\na"
    assert normalize_text(" \n a") == "a"


def test_the_default_merges_only_what_espeak_speaks_identically() -> None:
    """The measurement behind the default, repeated on a few spellings (see
    docs/normalization.md and bench/normalization.py for the full table)."""

    def pcm(text: str) -> str:
        return hashlib.sha256(synthesize_in_a_fresh_process(text, "es", 1.0)).hexdigest()

    reference = pcm(SENTENCE)
    same = [" Bienvenido\tal  hotel.\r\nLa recepción\nestá abierta.\n\n"]
    apart = ["Bienvenido al hotel.\n\nLa recepción está abierta.",
             "Bienvenido al hotel. La recepcio\u0301n esta\u0301 abierta."]  # fmt: skip
    for spelling in same:
        assert normalize_text(spelling) == SENTENCE
        assert pcm(spelling) == reference
    for spelling in apart:
        assert key(spelling) != key(SENTENCE)
        assert pcm(spelling) != reference  # were they merged, a hit would replay wrong audio


def test_the_old_normalization_is_there_for_rules_that_ask() -> None:
    v1 = normalization(["nfc", "collapse_whitespace", "trim"])
    text = "\n\n Cafe\u0301\u3000au  lait \n\n"
    assert normalize_text(text, v1) == "Caf\u00e9 au lait"
    assert normalize_text(text, ()) == text


def test_normalization_is_part_of_the_key() -> None:
    assert key(SENTENCE) != key(SENTENCE, ("collapse_spaces",))
    assert key(SENTENCE, ("trim", "nfc")) == key(SENTENCE, ("nfc", "trim"))  # order: canonical


@pytest.mark.parametrize(
    ("names", "message"),
    [(["nfkc"], "unknown normalization 'nfkc'"),
     (["collapse_spaces", "collapse_whitespace"], "choose one")],
)  # fmt: skip
def test_bad_normalization_lists_are_refused(names: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalization(names)


RULE: dict[str, Any] = {
    "name": "custom",
    "method": "POST",
    "path": "/speak",
    "text": "json:text",
}


def test_a_rule_reads_its_normalize_list() -> None:
    assert rule_from_mapping(RULE).normalize == DEFAULT_NORMALIZATION
    rule = rule_from_mapping({**RULE, "normalize": ["trim", "nfc"]})
    assert rule.normalize == ("nfc", "trim")
    assert rule_from_mapping({**RULE, "normalize": []}).normalize == ()
    speech = rule.describe(path_params={}, query="", headers={}, body=b'{"text": " a "}')
    assert speech is not None and speech.normalize == ("nfc", "trim")
    assert speech.text == " a "  # the upstream gets the text as sent
    for preset in PRESETS.values():
        for r in preset():
            # A whole SSML document (Azure) is keyed as sent: its markup is not plain text.
            assert r.normalize == (() if r.text.source == "body" else DEFAULT_NORMALIZATION)


def test_a_bad_normalize_list_names_the_route_field() -> None:
    with pytest.raises(RuleError, match=r"'normalize'.*'nfkd'"):
        rule_from_mapping({**RULE, "normalize": ["nfkd"]})
    with pytest.raises(RuleError, match="'normalize' must be a list"):
        rule_from_mapping({**RULE, "normalize": "nfc"})
    with pytest.raises(RuleError, match="unknown normalization"):
        RouteRule(name="x", method="POST", path="/x", text=FieldRef("json", "t"), normalize=("x",))
    with pytest.raises(ConfigError, match=r"routes\[0\]\.normalize: .*'nope'"):
        load_settings(env={}, overrides={"routes": [{**RULE, "normalize": ["nope"]}]})


@given(st.text(alphabet=st.sampled_from("ab \t\r\n\u00e9\u0301"), max_size=40))
def test_every_normalization_is_idempotent(text: str) -> None:
    for steps in [DEFAULT_NORMALIZATION, ("nfc", "collapse_whitespace", "trim"), ("trim",)]:
        once = normalize_text(text, steps)
        assert normalize_text(once, steps) == once


@given(st.text(alphabet=st.sampled_from("ab \t\r\n"), max_size=40))
def test_collapse_spaces_keeps_the_count_of_paragraph_line_feeds(text: str) -> None:
    collapsed = normalize_text(text, ("collapse_spaces",))
    runs = [r for r in text.replace("a", "|").replace("b", "|").split("|") if r]
    assert collapsed.count("\n") == sum(r.count("\n") for r in runs if r.count("\n") > 1)


async def test_through_the_proxy_a_paragraph_break_is_another_entry(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = upstream
    client = await make_proxy(url)
    body = {"model": "tts-1", "voice": "es", "response_format": "wav"}
    first = await client.post("/v1/audio/speech", json={**body, "input": "Hola.\n\nAdiós."})
    await first.read()
    second = await client.post("/v1/audio/speech", json={**body, "input": "Hola. Adiós."})
    await second.read()
    assert first.headers["X-Audio-Cache-Key"] != second.headers["X-Audio-Cache-Key"]
    assert fake.calls["openai"] == 2
    await until_stored(client, second)
    third = await client.post("/v1/audio/speech", json={**body, "input": " Hola.\nAdiós. "})
    assert third.headers["X-Cache"] == "HIT"
    assert third.headers["X-Audio-Cache-Key"] == second.headers["X-Audio-Cache-Key"]
