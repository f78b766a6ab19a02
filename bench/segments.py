"""Segment caching on a hotel agent's traffic: whole-text caching against sentence and clause.

    python -m bench.segments [--answers 160] [--deadline 240]

Replays one generated trace through the real proxy and the demo upstream (espeak-ng), on
loopback, once per configuration, each on its own key prefix of one embedded Valkey:
segments off, sentence and clause; sentence with a piece stored from its 2nd or 3rd miss
(``segment_store_after_sightings``); sentence and clause with runs of missing pieces sent
as one request (``segment_miss_mode: runs``). It prints characters sent upstream, upstream
calls, the request hit ratio, entries and bytes stored, and the time to first byte
(p50/p99) of all answers, of the partly cached ones, and of whole hits (the floor the
client and the machine set, in the same run).

Then what memcat's rules would bill on the same trace (offline: no audio): sentences cut
into clauses at , ; : and dashes, clauses with digits, currency, emails, URLs or spelled
codes never cached, a clause stored once 3 distinct conversations said it (captured when
it was synthesized alone, else rendered once more), live clauses of a sentence sent as
one run. memcat's own splitter and blocking rules are used when the ``memcat`` package
can be imported (``pip install --no-deps memcat``: its full install brings Pipecat,
onnxruntime and numba); otherwise an emulation of its published rules, and the table
says which.

The trace's assumptions (what a hotel voice agent says, as the design document describes
it: mostly fixed sentences around a few dynamic ones):

- Conversations alternate Spanish and English (voices ``es`` and ``en``), 4 answers each,
  sent one after the other (a caller waits for each answer).
- 70% of answers are templated: an opening fixed sentence (greeting or acknowledgement,
  from 4 per language), one or two dynamic sentences (a room number, a date, a guest name
  from 12, a number of nights), and one or two fixed sentences from 10 per language
  (breakfast hours, Wi-Fi, check-out...). Figures are written as digits, as LLM agents do.
- 20% are fixed answers repeated whole (2 sentences from the same fixed sets).
- 10% are free-form: sentences drawn word by word, never seen before.
- A fixed random seed: every run replays the same trace. Answers are wav (24 kHz).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import os
import random
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis

from proxy.core.segments import split, storable
from proxy.store.embedded import EmbeddedValkey, free_port

from .loopback import quantile, until_ok

SPEECH = "/v1/audio/speech"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPENINGS = {
    "es": ["Buenas tardes, gracias por llamar al Hotel Miramar.", "Con mucho gusto le ayudo.",
           "Perfecto, ya lo tengo anotado.", "Bienvenido de nuevo al Hotel Miramar."],
    "en": ["Good afternoon, thank you for calling Hotel Miramar.", "I will gladly help you.",
           "Perfect, I have written that down.", "Welcome back to Hotel Miramar."],
}  # fmt: skip
FIXED = {
    "es": ["El desayuno se sirve de siete a diez en el comedor.",
           "La contraseña del wifi está en su tarjeta de bienvenida.",
           "La salida es a las doce del mediodía.",
           "La piscina abre todos los días de nueve a ocho.",
           "Puede pedir servicio de habitaciones marcando el nueve.",
           "El aparcamiento está en la planta menos uno.",
           "Recepción está abierta las veinticuatro horas.",
           "El gimnasio está en la segunda planta.",
           "¿Hay algo más en lo que pueda ayudarle?",
           "Que tenga una feliz estancia."],
    "en": ["Breakfast is served from seven to ten in the dining room.",
           "The Wi-Fi password is on your welcome card.",
           "Check-out is at noon.",
           "The pool is open every day from nine to eight.",
           "You can order room service by dialing nine.",
           "The car park is on level minus one.",
           "The front desk is open around the clock.",
           "The gym is on the second floor.",
           "Is there anything else I can help you with?",
           "Enjoy your stay."],
}  # fmt: skip
NAMES = ["García", "Smith", "López", "Müller", "Rossi", "Dubois", "Silva", "Johnson",
         "Fernández", "Brown", "Martín", "Taylor"]  # fmt: skip
DYNAMIC = {
    "es": ["Su habitación {room} está lista.", "Su reserva es para {nights} noches.",
           "Le esperamos el día {day} de mayo.", "Gracias, señor {name}."],
    "en": ["Your room {room} is ready.", "Your booking is for {nights} nights.",
           "We expect you on May {day}.", "Thank you, Mr. {name}."],
}  # fmt: skip
WORDS = {
    "es": "la casa mar sol playa cena vino jardín terraza vista calle museo tren".split(),  # noqa: SIM905
    "en": "the house sea sun beach dinner wine garden terrace view street museum".split(),  # noqa: SIM905
}


def trace(answers: int, seed: int = 18) -> list[tuple[str, str]]:
    """``(voice, text)`` in replay order."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < answers:
        lang = "es" if len(out) // 4 % 2 == 0 else "en"
        for _ in range(4):
            kind = rng.random()
            if kind < 0.7:
                dynamic = [
                    rng.choice(DYNAMIC[lang]).format(
                        room=rng.randint(100, 499), nights=rng.randint(1, 9),
                        day=rng.randint(1, 31), name=rng.choice(NAMES),
                    )
                    for _ in range(rng.randint(1, 2))
                ]  # fmt: skip
                fixed = rng.sample(FIXED[lang], rng.randint(1, 2))
                text = " ".join([rng.choice(OPENINGS[lang]), *dynamic, *fixed])
            elif kind < 0.9:
                text = " ".join(rng.sample(FIXED[lang][:4], 2))
            else:
                sentences = [
                    " ".join(rng.choice(WORDS[lang]) for _ in range(rng.randint(4, 8))).capitalize()
                    + "."
                    for _ in range(2)
                ]
                text = " ".join(sentences)
            out.append((lang, text))
    return out[:answers]


@dataclass(frozen=True)
class Config:
    """One replay: a label and the proxy's settings for it."""

    label: str
    mode: str
    settings: dict[str, str] = field(default_factory=dict)


CONFIGS = (
    Config("off", "off"),
    Config("sentence", "sentence"),
    Config("clause", "clause"),
    Config("sentence, stored from 2nd miss", "sentence", {"SEGMENT_STORE_AFTER_SIGHTINGS": "2"}),
    Config("sentence, stored from 3rd miss", "sentence", {"SEGMENT_STORE_AFTER_SIGHTINGS": "3"}),
    Config("sentence, runs", "sentence", {"SEGMENT_MISS_MODE": "runs"}),
    Config("clause, runs", "clause", {"SEGMENT_MISS_MODE": "runs"}),
)


@dataclass
class Run:
    label: str
    ttfb_ms: list[float] = field(default_factory=list)
    partial_ttfb_ms: list[float] = field(default_factory=list)
    # Partial answers whose first piece was stored by an earlier answer.
    leading_ttfb_ms: list[float] = field(default_factory=list)
    hit_ttfb_ms: list[float] = field(default_factory=list)
    x_cache: list[str] = field(default_factory=list)
    calls: int = 0
    characters: int = 0
    entries: int = 0
    stored_bytes: int = 0


# The demo upstream in a process of its own, as in a deployment: its synthesis must not
# share the proxy's event loop. It counts the calls and characters it is sent.
UPSTREAM = textwrap.dedent(
    """
    import json, sys
    from aiohttp import web
    from proxy.demo.upstream import create_demo_upstream_app
    counted = {"calls": 0, "characters": 0}
    @web.middleware
    async def count(request, handler):
        if request.path == "/v1/audio/speech":
            counted["calls"] += 1
            counted["characters"] += len(json.loads(await request.read())["input"])
        return await handler(request)
    async def counts(request):
        return web.json_response(counted)
    app = create_demo_upstream_app()
    app.middlewares.append(count)
    app.router.add_get("/bench/counts", counts)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


def _stored(store_url: str, prefix: str) -> tuple[int, int]:
    """Entries under ``prefix`` and the bytes Valkey holds for them (MEMORY USAGE)."""
    client = redis.Redis.from_url(store_url)
    try:
        entries = used = 0
        for name in client.scan_iter(match=f"{prefix}:*:e:*", count=500):
            entries += 1
            used += int(client.memory_usage(name, samples=0) or 0)
            if entries >= 100_000:
                break
        return entries, used
    finally:
        client.close()


async def replay(
    config: Config, texts: list[tuple[str, str]], store_url: str, deadline_s: float
) -> Run:
    up_port, proxy_port = free_port(), free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", UPSTREAM, str(up_port), env={**os.environ, "PYTHONPATH": ROOT}
    )
    prefix = f"bseg-{len(config.label)}-{time.time_ns() % 10**9}"
    settings = {
        "CLIENT_AUTH": "none",
        "AUDIO_CACHE_SEGMENTS": config.mode,
        "AUDIO_CACHE_KEY_PREFIX": prefix,
        **config.settings,
    }
    proxy: asyncio.subprocess.Process | None = None
    run = Run(config.label)
    mode = config.mode
    try:
        await until_ok(up_url + "/bench/counts", within=20, process=process)
        # The proxy in a process of its own too: the client's time is not the proxy's.
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", "--port", str(proxy_port),
            "--upstream", up_url, "--redis-url", store_url,
            env={**os.environ, "PYTHONPATH": ROOT, **settings}, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await until_ok(f"http://127.0.0.1:{proxy_port}/readyz", within=20, process=proxy)
        stop = time.monotonic() + deadline_s
        seen: set[tuple[str, str]] = set()
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy_port}{SPEECH}"
            for voice, text in texts:
                if time.monotonic() > stop:
                    break
                body = {"model": "tts-1", "voice": voice, "input": text, "response_format": "wav"}
                t0 = time.perf_counter()
                async with session.post(url, json=body) as r:
                    await r.content.readany()
                    ttfb = (time.perf_counter() - t0) * 1000
                    await r.read()
                    assert r.status == 200, r.status
                    x_cache = r.headers.get("X-Cache", "-")
                run.ttfb_ms.append(ttfb)
                run.x_cache.append(x_cache)
                first = split(text, "sentence" if mode == "off" else mode)[0].strip()  # type: ignore[arg-type]
                if x_cache == "HIT":
                    run.hit_ttfb_ms.append(ttfb)
                if x_cache == "PARTIAL":
                    run.partial_ttfb_ms.append(ttfb)
                    if (voice, first) in seen and storable(first):
                        run.leading_ttfb_ms.append(ttfb)
                seen.add((voice, first))
            async with session.get(up_url + "/bench/counts") as r:
                counted = await r.json()
    finally:
        for child in (proxy, process):
            if child is not None and child.returncode is None:
                child.terminate()
                await child.wait()
    run.calls, run.characters = counted["calls"], counted["characters"]
    run.entries, run.stored_bytes = _stored(store_url, prefix)
    return run


# -- memcat's rules, offline -----------------------------------------------------------


def _memcat_chunker() -> Any:
    """memcat's pure splitter module, loaded alone (its package imports Pipecat), or None."""
    spec = importlib.util.find_spec("memcat")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "core", "chunker.py")
    if not os.path.exists(path):
        return None
    loaded = importlib.util.spec_from_file_location("memcat_chunker", path)
    if loaded is None or loaded.loader is None:
        return None
    module = importlib.util.module_from_spec(loaded)
    sys.modules[loaded.name] = module  # its dataclasses look their module up there
    loaded.loader.exec_module(module)
    return module


_DASHES = "\u2014\u2013"  # em and en dash
_CLAUSE_CUT = re.compile(rf"[,;:](?=\s)\s*|(?<!\s)\s+[{_DASHES}-]\s+|[{_DASHES}]")
_SPELLED = re.compile(r"\b(?:[A-Z]\s){2,}[A-Z]\b|\b[A-Z]{5,}\b")


def _emulated_clauses(sentence: str) -> list[tuple[str, bool]]:
    """memcat's published rules as this bench reads them: cut after , ; : and dashes, a
    clause of under 3 words joins its neighbour, never cached with a digit, a currency
    sign, an email, a URL or a spelled code."""
    bounds = [0, *(m.end() for m in _CLAUSE_CUT.finditer(sentence)), len(sentence)]
    pieces = [sentence[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1].split()) < 3:
            merged[-1] += piece
        else:
            merged.append(piece)
    if len(merged) > 1 and len(merged[-1].split()) < 3:
        merged[-2] += merged.pop()
    return [(c, storable(c) and not _SPELLED.search(c)) for c in merged]


@dataclass
class Billed:
    label: str
    characters: int = 0
    calls: int = 0
    answers: int = 0
    hits: int = 0
    partial: int = 0
    entries: int = 0


def _bill_run(
    billed: Billed,
    run: list[tuple[str, bool]],
    voice: str,
    call: int,
    stored: set[tuple[str, str]],
    said_in: dict[tuple[str, str], set[int]],
    admit_after: int,
) -> None:
    """One live run of a sentence's clauses: one call, and its clauses' admission."""
    if not run:
        return
    billed.characters += len("".join(c for c, _ in run).strip())
    billed.calls += 1
    for clause, cacheable in run:
        key = (voice, clause.strip())
        if not cacheable or key in stored:
            continue
        said_in.setdefault(key, set()).add(call)
        if len(said_in[key]) >= admit_after:
            stored.add(key)
            if len(run) > 1:  # not captured from a call of its own: rendered apart
                billed.characters += len(key[1])
                billed.calls += 1


def memcat_bill(texts: list[tuple[str, str]], admit_after: int = 3) -> Billed:
    """What memcat's splitting and admission bill on the trace (no audio, no timing)."""
    chunker = _memcat_chunker()
    label = "memcat (its splitter)" if chunker is not None else "memcat (emulated rules)"
    billed = Billed(label)
    stored: set[tuple[str, str]] = set()
    said_in: dict[tuple[str, str], set[int]] = {}
    for n, (voice, text) in enumerate(texts):
        call = n // 4  # one conversation: the trace's 4 answers in one language
        billed.answers += 1
        cached = live = 0
        for sentence in split(text, "sentence"):
            if chunker is not None:
                clauses = [(c.text, c.cacheable) for c in chunker.split(sentence)]
            else:
                clauses = _emulated_clauses(sentence)
            run: list[tuple[str, bool]] = []
            for clause, cacheable in clauses:
                if cacheable and (voice, clause.strip()) in stored:
                    _bill_run(billed, run, voice, call, stored, said_in, admit_after)
                    run = []
                    cached += 1
                else:
                    run.append((clause, cacheable))
                    live += 1
            _bill_run(billed, run, voice, call, stored, said_in, admit_after)
        if cached and not live:
            billed.hits += 1
        elif cached:
            billed.partial += 1
    billed.entries = len(stored)
    return billed


async def main(answers: int, deadline_s: float) -> None:
    texts = trace(answers)
    total = sum(len(t) for _, t in texts)
    load_before = os.getloadavg()[0]
    runs = []
    with EmbeddedValkey() as store:
        for config in CONFIGS:
            runs.append(await replay(config, texts, store.url, deadline_s))
    load_after = os.getloadavg()[0]
    base = runs[0].characters or 1
    print(
        f"{answers} answers, {total} characters requested; "
        f"load average {load_before:.1f} before, {load_after:.1f} after"
    )
    print(
        "| configuration | upstream chars | vs off | upstream calls | hit ratio | partial | "
        "entries, KB stored | TTFB p50 / p99 ms | partial TTFB p50 / p99 ms | "
        "stored first piece: n, p50 / p99 ms | whole hits: p50 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        n = len(run.x_cache) or 1
        hits = run.x_cache.count("HIT") / n
        partial = run.x_cache.count("PARTIAL") / n
        print(
            f"| {run.label} | {run.characters} | "
            f"{100 * (run.characters / base - 1):+.0f}% | {run.calls} | {hits:.0%} | "
            f"{partial:.0%} | {run.entries}, {run.stored_bytes / 1024:.0f} | "
            f"{quantile(run.ttfb_ms, 0.5):.1f} / {quantile(run.ttfb_ms, 0.99):.1f}"
            f" | {quantile(run.partial_ttfb_ms, 0.5):.1f} / "
            f"{quantile(run.partial_ttfb_ms, 0.99):.1f} | {len(run.leading_ttfb_ms)}, "
            f"{quantile(run.leading_ttfb_ms, 0.5):.1f} / "
            f"{quantile(run.leading_ttfb_ms, 0.99):.1f} | "
            f"{quantile(run.hit_ttfb_ms, 0.5):.1f} |"
        )
    billed = memcat_bill(texts)
    n = billed.answers or 1
    print(
        f"| {billed.label} | {billed.characters} | "
        f"{100 * (billed.characters / base - 1):+.0f}% | {billed.calls} | {billed.hits / n:.0%} | "
        f"{billed.partial / n:.0%} | {billed.entries}, - | - | - | - | - |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=160)
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds per mode")
    args = parser.parse_args()
    asyncio.run(main(min(args.answers, 2000), min(args.deadline, 1800.0)))
