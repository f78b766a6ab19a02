"""Which text normalizations leave the sound unchanged: measured on the demo engine.

Usage::

    python -m bench.normalization [--random 40] [--seed 7] [--steps collapse_spaces,trim]

Each case synthesizes two spellings of one sentence with espeak-ng (the demo upstream's
engine, raw PCM, each in a fresh process, so equal input gives equal bytes) and says whether
the PCM bytes are identical, with both lengths in samples. Then ``--random`` texts with
random whitespace are checked against a normalization (``--steps``, the key's default
unless given): the original and its normalized form must give the same PCM, or keys made
with it would merge different sounds.
docs/normalization.md quotes the output.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import unicodedata
from collections.abc import Callable

from proxy.core.keys import DEFAULT_NORMALIZATION, normalization, normalize_text
from proxy.demo.espeak import synthesize_in_a_fresh_process

SENTENCES = {
    "en": "Welcome to the hotel. Our check-in time is three o'clock.",
    "es": "Bienvenido al hotel. La recepción está abierta.",
    "fr": "Bienvenue à l'hôtel. Un café crème à la réception.",
    "de": "Willkommen im Hotel. Die Rezeption ist geöffnet.",
}


def _sentence_gap(text: str, gap: str) -> str:
    """``text`` with the space after its first full stop replaced by ``gap``."""
    return text.replace(". ", "." + gap, 1)


def _word_gap(text: str, gap: str) -> str:
    """``text`` with its first space replaced by ``gap``."""
    return text.replace(" ", gap, 1)


# (transformation, left spelling, right spelling): the key may merge them only if the
# engine speaks both the same.
Case = tuple[str, Callable[[str], str], Callable[[str], str]]
CASES: list[Case] = [
    ("NFD vs NFC", lambda t: unicodedata.normalize("NFD", t), lambda t: t),
    ("paragraph break vs space (after a sentence)", lambda t: _sentence_gap(t, "\n\n"), str),
    ("paragraph break vs space (mid-sentence)", lambda t: _word_gap(t, "\n\n"), str),
    ("line break vs space (after a sentence)", lambda t: _sentence_gap(t, "\n"), str),
    ("line break vs space (mid-sentence)", lambda t: _word_gap(t, "\n"), str),
    ("CRLF vs space", lambda t: _sentence_gap(t, "\r\n"), str),
    ("CR vs space", lambda t: _sentence_gap(t, "\r"), str),
    ("tab vs space", lambda t: _word_gap(t, "\t"), str),
    ("double spaces vs single", lambda t: t.replace(" ", "  "), str),
    ("leading/trailing spaces and tabs vs none", lambda t: "  " + t + " \t ", str),
    ("leading line break vs none", lambda t: "\n" + t, str),
    ("leading paragraph break vs none", lambda t: "\n\n" + t, str),
    ("trailing paragraph breaks vs none", lambda t: t + "\n\n\n\n", str),
    ("3 vs 2 line feeds (after a sentence)",
     lambda t: _sentence_gap(t, "\n\n\n"), lambda t: _sentence_gap(t, "\n\n")),
    ("3 vs 2 line feeds (mid-sentence)",
     lambda t: _word_gap(t, "\n\n\n"), lambda t: _word_gap(t, "\n\n")),
    ("3 vs 2 leading line feeds", lambda t: "\n\n\n" + t, lambda t: "\n\n" + t),
    ("spaces/tabs/CRs around a paragraph break vs none",
     lambda t: _word_gap(t, "  \r\n\t\r\n  "), lambda t: _word_gap(t, "\n\n")),
    ("spaces around a leading paragraph break vs none",
     lambda t: " \n \n " + t, lambda t: "\n\n" + t),
    ("no-break space vs space", lambda t: _word_gap(t, "\u00a0"), str),
    ("U+2029 paragraph separator vs space", lambda t: _sentence_gap(t, "\u2029"), str),
]  # fmt: skip


def _pcm(text: str, voice: str) -> tuple[str, int]:
    pcm = synthesize_in_a_fresh_process(text, voice, 1.0)
    return hashlib.sha256(pcm).hexdigest(), len(pcm) // 2


def compare(left: str, right: str, voice: str) -> tuple[bool, int, int]:
    """Whether both spellings give identical PCM, and their lengths in samples."""
    (a, na), (b, nb) = _pcm(left, voice), _pcm(right, voice)
    return a == b, na, nb


def random_spelling(rng: random.Random, text: str) -> str:
    """``text`` with each space swapped for a random whitespace run, and random ends."""
    runs = [" ", "  ", "\t", " \t ", "\n", " \n ", "\r\n", "\n\n", "\n \n", "\n\n\n", "\r\n\r\n"]
    words = text.split(" ")
    out = rng.choice(["", " ", "\t", "\n", "\n\n"]) + words[0]
    for word in words[1:]:
        out += rng.choice(runs) + word
    return out + rng.choice(["", " ", "\n", "\n\n", " \t\n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random", type=int, default=40, help="random spellings to check")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--steps", default=",".join(DEFAULT_NORMALIZATION), help="normalization to check"
    )
    parser.add_argument("--skip-table", action="store_true", help="only the random check")
    args = parser.parse_args()
    steps = normalization(s for s in args.steps.split(",") if s)
    voices = list(SENTENCES)
    if not args.skip_table:
        table(voices)
    rng = random.Random(args.seed)
    merged = differing = 0
    for i in range(args.random):
        voice = voices[i % len(voices)]
        spelled = random_spelling(rng, SENTENCES[voice])
        normalized = normalize_text(spelled, steps)
        same, _, _ = compare(spelled, normalized, voice)
        merged += same
        if not same:
            differing += 1
            print(f"DIFFERS: {spelled!r} -> {normalized!r} ({voice})")
    print(
        f"\nnormalization {list(steps)}: {merged} of {args.random} random spellings give "
        f"the same PCM as their normalized form, {differing} differ"
    )


def table(voices: list[str]) -> None:
    """The cases, one row each, as a Markdown table."""
    print("| transformation | " + " | ".join(voices) + " | same audio |")
    print("|---|" + "---|" * len(voices) + "---|")
    for name, left, right in CASES:
        cells = []
        same_everywhere = True
        for voice, sentence in SENTENCES.items():
            same, na, nb = compare(left(sentence), right(sentence), voice)
            same_everywhere &= same
            cells.append("same" if same else f"differs ({na} vs {nb} samples)")
        print(f"| {name} | " + " | ".join(cells) + f" | {'yes' if same_everywhere else 'no'} |")


if __name__ == "__main__":
    main()
