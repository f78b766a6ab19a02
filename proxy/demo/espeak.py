"""Text to 16-bit mono PCM with espeak-ng, from the ``espeakng-loader`` wheel, over ctypes.

espeak-ng keeps global state between utterances (its flutter phase, noise generator and
more), so two syntheses of the same text in one process differ by a few samples. Each
synthesis therefore runs in a fresh child process, with the noise generator seeded by a
constant, which makes the output a pure function of (text, voice, speed) — the demo
upstream promises same request, same bytes.

Speeds slower than espeak-ng's slowest rate are spoken at that rate and then stretched,
pitch kept, by FFmpeg's atempo filter (see formats.resample).
"""

from __future__ import annotations

import asyncio
import ctypes
import os

from .formats import resample

SAMPLE_RATE = 22050  # espeak-ng's native rate, returned by espeak_Initialize
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_NOISE_SEED = 1
# espeak-ng speaks 80 words a minute at the slowest; above 450 it speeds up with its
# built-in sonic stretcher, which covers OpenAI's fastest (4.0 x 175 = 700).
_MIN_WPM, _MAX_WPM, _DEFAULT_WPM = 80, 700, 175

_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class UnknownVoice(ValueError):
    """espeak-ng has no voice of that name."""

    def __init__(self, voice: str) -> None:
        super().__init__(f"unknown voice {voice!r}; use an espeak-ng voice name such as en, es, fr")
        self.voice = voice


def words_per_minute(speed: float) -> int:
    """OpenAI's speed (1.0 = normal) as espeak-ng's rate, within what espeak accepts."""
    return max(_MIN_WPM, min(_MAX_WPM, round(_DEFAULT_WPM * speed)))


def slowdown_tempo(speed: float) -> float:
    """The tempo (below 1) that stretches speech spoken at ``words_per_minute(speed)`` to
    ``speed``, for the speeds slower than espeak-ng's slowest; 1.0 otherwise."""
    wanted = _DEFAULT_WPM * speed
    return wanted / _MIN_WPM if wanted < _MIN_WPM else 1.0


def synthesize_in_this_process(text: str, voice: str, speed: float) -> bytes:
    """Load espeak-ng, speak ``text`` once, return raw little-endian int16 PCM.

    Meant to run in a fresh process (see the module docstring).
    """
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    data = espeakng_loader.get_data_path().encode()
    if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0) <= 0:
        raise RuntimeError("espeak_Initialize failed")
    # espeak_Initialize seeds the noise of breathy variants (f2, f3, f5, whisper, ...) from
    # the clock: without a fixed seed such a voice sounds different every second. The klatt
    # variants draw theirs from the C library's rand(), whose state a fork inherits.
    lib.espeak_ng_SetRandSeed(ctypes.c_long(_NOISE_SEED))
    ctypes.CDLL(None).srand(ctypes.c_uint(_NOISE_SEED))
    samples = bytearray()

    def collect(wav: ctypes._Pointer[ctypes.c_short], count: int, events: int) -> int:
        if wav and count > 0:
            samples.extend(ctypes.string_at(wav, count * 2))
        return 0

    callback = _Callback(collect)  # kept referenced until synthesis ends
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise UnknownVoice(voice)
    lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute(speed), 0)
    encoded = text.encode("utf-8")
    flags = _ESPEAK_CHARS_UTF8
    if lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, flags, None, None):
        raise RuntimeError("espeak_Synth failed")
    lib.espeak_Synchronize()
    del callback
    return bytes(samples)


def synthesize_in_a_fresh_process(text: str, voice: str, speed: float) -> bytes:
    """One utterance in a forked child that loads espeak-ng afresh (blocking).

    A plain fork is used rather than multiprocessing, whose children re-import the main
    module: this costs about 10 ms instead of 200. The parent never loads the library.
    """
    readable, writable = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: speak, send, exit without running any parent cleanup
        status = 0
        try:
            os.close(readable)
            try:
                payload = b"o" + synthesize_in_this_process(text, voice, speed)
            except UnknownVoice:
                payload = b"v"
            except Exception as exc:
                payload = b"e" + str(exc).encode()
            with os.fdopen(writable, "wb") as out:
                out.write(payload)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writable)
    with os.fdopen(readable, "rb") as source:
        payload = source.read()
    os.waitpid(pid, 0)
    kind, value = payload[:1], payload[1:]
    if kind == b"v":
        raise UnknownVoice(voice)
    if kind != b"o":
        reason = value.decode(errors="replace") or "the worker died"
        raise RuntimeError(f"espeak-ng failed: {reason}")
    return value


class Espeak:
    """Deterministic speech: each utterance in a fresh worker process."""

    sample_rate = SAMPLE_RATE

    def __init__(self, workers: int = 2) -> None:
        self._slots = asyncio.Semaphore(workers)

    async def synthesize(self, text: str, voice: str, speed: float = 1.0) -> bytes:
        """Raw int16 PCM at ``sample_rate``; UnknownVoice for a voice espeak-ng lacks."""
        async with self._slots:
            pcm = await asyncio.to_thread(synthesize_in_a_fresh_process, text, voice, speed)
        tempo = slowdown_tempo(speed)
        if tempo == 1.0:
            return pcm
        return await asyncio.to_thread(resample, pcm, SAMPLE_RATE, SAMPLE_RATE, tempo=tempo)

    def close(self) -> None:
        """Nothing to release: every worker process has already exited."""
