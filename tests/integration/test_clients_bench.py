"""The clients bench's tallies, against a real proxy's access-log records and /metrics.

Only the bench's own helpers are imported: the frameworks it drives (pipecat, livekit) are
an optional extra, and this module must not need them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from bench.clients import (
    AccessRecords,
    Run,
    cache_verdict,
    format_table,
    operations_delta,
    plausible,
    same_audio,
    store_operations,
    tally,
)
from tests.support.loopback_upstream import LoopbackUpstream
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_stored


@pytest.fixture
def records() -> Iterator[AccessRecords]:
    handler = AccessRecords()
    log = logging.getLogger("proxy.access")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


async def test_a_miss_then_a_hit_as_the_bench_tallies_them(
    upstream: tuple[LoopbackUpstream, str], make_proxy: Any, records: AccessRecords
) -> None:
    _, url = upstream
    client = await make_proxy(url, client_auth="none")

    async def scrape() -> dict[str, float]:
        r = await client.get("/metrics")
        return store_operations(await r.text())

    before = await scrape()
    first = await client.post(SPEECH_PATH, json=speech_body("the bench counts this"))
    await first.read()
    await until_stored(client, first)
    second = await client.post(SPEECH_PATH, json=speech_body("the bench counts this"))
    await second.read()
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")

    # The access line is written once the answer is sent, a moment after the client has it.
    await eventually(lambda: sum(tally(records.fields).values()) == 2)
    assert tally(records.fields) == Counter({"miss": 1, "hit": 1})
    delta = operations_delta(before, await scrape())
    assert delta["get:hit"] == 1
    assert delta["get:miss"] == 1
    assert delta["set:stored"] == 1


def test_tally_counts_only_the_speech_path() -> None:
    lines = [
        {"path": SPEECH_PATH, "result": "bypass"},
        {"path": "/metrics", "result": "other"},
        {"path": SPEECH_PATH, "result": "bypass"},
        {"path": SPEECH_PATH, "result": "hit"},
    ]
    assert tally(lines) == Counter({"bypass": 2, "hit": 1})


def test_store_operations_reads_the_counter_and_nothing_else() -> None:
    page = "\n".join(
        [
            "# HELP audio_cache_operations_total Cache operations",
            'audio_cache_operations_total{operation="get",result="hit"} 3.0',
            'audio_cache_operations_total{operation="set",result="stored"} 1.0',
            'audio_cache_compression_operations_total{operation="compress",result="ok"} 9.0',
        ]
    )
    assert store_operations(page) == {"get:hit": 3.0, "set:stored": 1.0}
    assert operations_delta({"get:hit": 3.0}, {"get:hit": 5.0, "get:miss": 1.0}) == {
        "get:hit": 2.0,
        "get:miss": 1.0,
    }


def _run(**fields: Any) -> Run:
    run = Run("client", 2, characters=200)
    for name, value in fields.items():
        setattr(run, name, value)
    return run


def test_a_second_run_is_from_the_cache_only_when_every_request_hit() -> None:
    hits = _run(requests=4, results=Counter(hit=4))
    assert cache_verdict(hits) == "yes"
    bypassed = _run(requests=4, results=Counter(bypass=4), upstream_calls=4)
    assert cache_verdict(bypassed) == "no (4 bypassed)"
    one_miss = _run(requests=4, results=Counter(hit=3, miss=1), upstream_calls=1)
    assert cache_verdict(one_miss) == "no (1 upstream calls)"
    assert "no (4 bypassed)" in format_table([bypassed])


def test_audio_is_plausible_only_at_a_speaking_rate_and_mostly_sound() -> None:
    second_of_sound = (1000).to_bytes(2, "little", signed=True) * 24000
    right = _run()  # 200 characters
    for _ in range(10):
        right.add_frame(second_of_sound, 24000, 1, 24000)
    assert (right.seconds, plausible(right)) == (10.0, "ok")
    # The same samples claimed at a tenth of the rate last ten times as long.
    wrong_rate = _run()
    for _ in range(10):
        wrong_rate.add_frame(second_of_sound, 2400, 1, 24000)
    assert plausible(wrong_rate) == "2.0 chars/s"
    silent = _run()
    silent.add_frame(second_of_sound, 24000, 1, 24000)
    silent.add_frame(bytes(48000), 24000, 1, 24000)
    assert (silent.silent_frames, plausible(silent)) == (1, "1.00 s silent")
    assert plausible(_run()) == "no audio"


def test_a_later_run_is_compared_with_the_same_clients_first() -> None:
    sound = (1000).to_bytes(2, "little", signed=True) * 2400
    first, again, other = Run("a", 1), Run("a", 2), Run("a", 3)
    for run in (first, again):
        run.add_frame(sound, 24000, 1, 2400)
    other.add_frame(sound[:-2] + bytes(2), 24000, 1, 2400)
    runs = [first, again, other]
    assert [same_audio(runs, r) for r in runs] == ["-", "yes", "no"]
