"""Request bodies for the OpenAI-style speech route, the one most tests speak to."""

from __future__ import annotations

from typing import Any

SPEECH_PATH = "/v1/audio/speech"


def speech_body(text: str, voice: str = "alloy", **fields: Any) -> dict[str, Any]:
    """``{"model": "tts-1", "input": text, "voice": voice, "response_format": "wav"}`` with
    ``fields`` added or replacing those; a field given as ``None`` is left out."""
    body = {"model": "tts-1", "input": text, "voice": voice, "response_format": "wav", **fields}
    return {name: value for name, value in body.items() if value is not None}
