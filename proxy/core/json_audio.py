"""Answers that carry their audio inside JSON, as base64 in one field.

Google's ``text:synthesize`` answers ``{"audioContent": "<base64>"}`` and ElevenLabs'
``with-timestamps`` answers ``{"audio_base64": ..., "alignment": ...}``. Such an answer is
stored and replayed as the upstream sent it, byte for byte; before it is stored, the audio
field must decode to audio of the encoding the request asked for (an error object, an
empty string or a truncated document is not stored). Pure: no I/O.
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from dataclasses import field as _field
from typing import Any

from .media import SNIFF_BYTES, base_type, sniff

# Judged as headerless samples: any bytes but a document's start pass.
UNKNOWN_ENCODING = "audio/x-unknown"


@dataclass(frozen=True, slots=True)
class JsonAudio:
    """Where a route's JSON answer holds its audio, and how to tell the audio's type.

    ``field`` is a dotted path in the answer (``audioContent``). The expected media type
    is ``media_type``, or, with ``type_from`` (a request field reference such as
    ``json:audioConfig.audioEncoding``), the entry of ``types`` for that field's value: an
    exact value, else the longest key ending in ``*`` that prefixes it (``mp3_*``).
    A value no entry names is judged as raw samples; a missing one takes ``media_type``.
    """

    field: str
    media_type: str = UNKNOWN_ENCODING
    type_from: str | None = None
    types: Mapping[str, str] = _field(default_factory=dict)

    def media_type_for(self, value: Any) -> str:
        """The media type the audio must have when the request's ``type_from`` is ``value``."""
        if value is None:
            return self.media_type
        said = str(value)
        exact = self.types.get(said)
        if exact is not None:
            return exact
        prefixes = [k for k in self.types if k.endswith("*") and said.startswith(k[:-1])]
        if prefixes:
            return self.types[max(prefixes, key=len)]
        return UNKNOWN_ENCODING


@dataclass(frozen=True, slots=True)
class ExpectedAudio:
    """What one answer must hold: base64 audio of ``media_type`` at ``field``."""

    field: str
    media_type: str


def is_json(media_type: str) -> bool:
    """Whether a Content-Type names JSON (``application/json``, ``application/x+json``)."""
    base = base_type(media_type)
    return base == "application/json" or (
        base.startswith("application/") and base.endswith("+json")
    )


def decoded_audio(body: bytes, field_path: str) -> bytes | None:
    """The audio at ``field_path`` of a JSON answer, or None when the answer is not a JSON
    object, lacks the field, or the field is not well-formed, non-empty base64."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    value: Any = document
    for part in field_path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if not isinstance(value, str) or not value:
        return None
    try:
        return b64decode(value, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def refusal(expected: ExpectedAudio, body: bytes, *, pcm_types: Collection[str] = ()) -> str | None:
    """``"not_audio"`` when the answer's audio field is missing, not base64, or not audio of
    the expected type; None when it may be stored."""
    audio = decoded_audio(body, expected.field)
    if audio is None or not sniff(expected.media_type, audio[:SNIFF_BYTES], pcm_types=pcm_types):
        return "not_audio"
    return None
