"""Which espeak-ng voice speaks a request: OpenAI's voice names, espeak-ng's own names, and
ElevenLabs' opaque voice ids.

espeak-ng names a voice by its language (``es``, ``en-us``), optionally with a variant from
``voices/!v`` after a ``+`` (``en-us+f3``). OpenAI's voices speak English here: each is one
English accent and variant, chosen so that no two sound alike.
"""

from __future__ import annotations

import functools
import hashlib
import os

OPENAI_VOICES: dict[str, str] = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-gb-x-rp+m2",
    "coral": "en-us+f3",
    "echo": "en-us+m6",
    "fable": "en-gb-x-rp+m4",
    "nova": "en-us+f4",
    "onyx": "en-us+m8",  # the lowest-pitched variant
    "sage": "en+f2",  # espeak-ng's plain "en" is British English
    "shimmer": "en-us+f1",
    "verse": "en-gb-scotland+m7",
    "marin": "en-us+f5",
    "cedar": "en-us+m2",
}


@functools.cache
def _catalogue() -> tuple[frozenset[str], frozenset[str]]:
    """(languages, variants) that espeak-ng's data folder holds, lower-cased."""
    import espeakng_loader

    data = espeakng_loader.get_data_path()
    languages = {
        name.lower() for _, _, files in os.walk(os.path.join(data, "lang")) for name in files
    }
    variants = {name.lower() for name in os.listdir(os.path.join(data, "voices", "!v"))}
    return frozenset(languages), frozenset(variants)


def is_espeak_voice(name: str) -> bool:
    """Whether espeak-ng has the language (and variant, after ``+``) that ``name`` names."""
    language, plus, variant = name.lower().partition("+")
    languages, variants = _catalogue()
    return language in languages and (not plus or variant in variants)


def openai_voice(name: str) -> str:
    """The espeak-ng voice for an OpenAI ``voice``: OpenAI's names map to English voices,
    anything else is taken as an espeak-ng name (espeak-ng itself says if it is unknown)."""
    return OPENAI_VOICES.get(name.lower(), name)


def elevenlabs_voice(voice_id: str, language_code: str | None = None) -> str:
    """The espeak-ng voice for an ElevenLabs ``voice_id``, which is any opaque string.

    A demo voice name (those ``GET /v1/voices`` lists) or an espeak-ng name is used as it is;
    any other id picks one of the demo voices by its sha256, so it always sounds the same.
    ``language_code`` (ISO 639-1, e.g. ``es``) keeps that voice's variant in that language.
    """
    if voice_id.lower() in OPENAI_VOICES:
        voice = OPENAI_VOICES[voice_id.lower()]
    elif is_espeak_voice(voice_id):
        voice = voice_id
    else:
        names = sorted(OPENAI_VOICES)
        digest = hashlib.sha256(voice_id.encode()).digest()
        voice = OPENAI_VOICES[names[int.from_bytes(digest[:8], "big") % len(names)]]
    if language_code and is_espeak_voice(language_code):
        _, plus, variant = voice.partition("+")
        voice = language_code + plus + variant
    return voice
