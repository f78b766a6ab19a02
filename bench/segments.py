"""Segment caching on a hotel agent's traffic: whole-text caching against sentence and clause.

    python -m bench.segments [--answers 160] [--deadline 240]

Replays one generated trace through the real proxy and the demo upstream (espeak-ng), on
loopback, once per mode (off, sentence, clause), each on its own key prefix of one embedded
Valkey, and prints characters sent upstream, upstream calls, the request hit ratio and the
time to first byte (p50/p99) of all answers and of the partly cached ones.

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
import os
import random
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, field

import aiohttp

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


@dataclass
class Run:
    mode: str
    ttfb_ms: list[float] = field(default_factory=list)
    partial_ttfb_ms: list[float] = field(default_factory=list)
    # Partial answers whose first piece was stored by an earlier answer.
    leading_ttfb_ms: list[float] = field(default_factory=list)
    x_cache: list[str] = field(default_factory=list)
    calls: int = 0
    characters: int = 0


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


async def replay(mode: str, texts: list[tuple[str, str]], store_url: str, deadline_s: float) -> Run:
    up_port, proxy_port = free_port(), free_port()
    up_url = f"http://127.0.0.1:{up_port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", UPSTREAM, str(up_port), env={**os.environ, "PYTHONPATH": ROOT}
    )
    settings = {
        "CLIENT_AUTH": "none",
        "AUDIO_CACHE_SEGMENTS": mode,
        "AUDIO_CACHE_KEY_PREFIX": f"bseg-{mode}-{time.time_ns() % 10**9}",
    }
    proxy: asyncio.subprocess.Process | None = None
    run = Run(mode)
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
    return run


async def main(answers: int, deadline_s: float) -> None:
    texts = trace(answers)
    total = sum(len(t) for _, t in texts)
    runs = []
    with EmbeddedValkey() as store:
        for mode in ("off", "sentence", "clause"):
            runs.append(await replay(mode, texts, store.url, deadline_s))
    base = runs[0].characters or 1
    print(f"{answers} answers, {total} characters requested")
    print(
        "| mode | answers | upstream chars | vs off | upstream calls | hit ratio | partial | "
        "TTFB p50 / p99 ms | partial TTFB p50 / p99 ms | stored first piece: n, p50 / p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        n = len(run.x_cache) or 1
        hits = run.x_cache.count("HIT") / n
        partial = run.x_cache.count("PARTIAL") / n
        print(
            f"| {run.mode} | {len(run.x_cache)} | {run.characters} | "
            f"{100 * (run.characters / base - 1):+.0f}% | {run.calls} | {hits:.0%} | "
            f"{partial:.0%} | {quantile(run.ttfb_ms, 0.5):.1f} / {quantile(run.ttfb_ms, 0.99):.1f}"
            f" | {quantile(run.partial_ttfb_ms, 0.5):.1f} / "
            f"{quantile(run.partial_ttfb_ms, 0.99):.1f} | {len(run.leading_ttfb_ms)}, "
            f"{quantile(run.leading_ttfb_ms, 0.5):.1f} / "
            f"{quantile(run.leading_ttfb_ms, 0.99):.1f} |"
        )
    if runs[1].partial_ttfb_ms:
        mean = statistics.mean(runs[1].partial_ttfb_ms)
        print(f"sentence mode, partial answers: mean TTFB {mean:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", type=int, default=160)
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds per mode")
    args = parser.parse_args()
    asyncio.run(main(min(args.answers, 2000), min(args.deadline, 1800.0)))
