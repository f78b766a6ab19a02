"""Joining the audio of a text's pieces into one answer, with a pause between pieces.

Pure: bytes in, bytes out. Which formats join, and how:

- ``pcm`` (headerless samples): concatenated, with silence of the stream's format between.
- ``wav``: one RIFF header (the first piece's), the data chunks concatenated, the sizes
  rewritten; every piece's ``fmt`` chunk must be equal.
- ``mp3`` (MPEG audio layer III): the frames concatenated; ID3 tags and the Xing/Info/LAME
  and VBRI frames of each piece dropped (they describe one piece's length); sample rate,
  channel mode and MPEG version must be equal. The pause is silent frames (a frame whose
  side information and main data are all zero decodes to silence), shortened by the
  encoder delay and padding that the dropped tags told decoders to trim (about 70 ms a
  piece from LAME), so the answer lasts what its pieces and pauses do.
- anything else (Ogg Opus, AAC, FLAC, WebM, mu-law and A-law...): not joinable here, and
  the request falls back to whole-text caching.

:class:`Splicer` joins incrementally, for streaming: :meth:`Splicer.first` gives the bytes
that start the answer, :meth:`Splicer.then` the bytes of each later piece. A streamed WAV
cannot know its length before the last piece: its header says "unknown" (0xFFFFFFFF), as
streaming TTS APIs do. :func:`join` gives a complete file with exact sizes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Joinable = Literal["pcm", "wav", "mp3"]

# Measured with proxy/demo/espeak.py: "A. B." lasts 294 ms longer than "A." and "B."
# spoken apart, for six sentence pairs in en, es, fr and de (293.9 to 294.8 ms), so a
# joined answer lasts as long as the engine's own.
DEFAULT_PAUSE_MS = 294

_UNKNOWN_SIZE = 0xFFFFFFFF
_MEDIA_TYPES: dict[str, Joinable] = {
    "audio/pcm": "pcm", "audio/l16": "pcm", "audio/x-pcm": "pcm", "audio/raw": "pcm",
    "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav", "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3", "audio/mp3": "mp3", "audio/mpeg3": "mp3", "audio/x-mpeg": "mp3",
}  # fmt: skip


class NotJoinable(ValueError):
    """These pieces cannot be joined into one correct file."""


def joinable(content_type: str) -> Joinable | None:
    """The join for a media type, or None when it has none."""
    return _MEDIA_TYPES.get(content_type.split(";", 1)[0].strip().lower())


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """What headerless PCM is; OpenAI's ``pcm`` is 24 kHz 16-bit mono."""

    sample_rate: int = 24000
    sample_width: int = 2
    channels: int = 1


def _silence_bytes(sample_rate: int, block_align: int, pause_ms: int, fill: bytes) -> bytes:
    frames = round(sample_rate * pause_ms / 1000)
    return fill * (frames * block_align)


# --- WAV -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Wav:
    fmt: bytes  # the fmt chunk's body
    data: bytes

    @property
    def format_tag(self) -> int:
        return int.from_bytes(self.fmt[0:2], "little")

    @property
    def sample_rate(self) -> int:
        return int.from_bytes(self.fmt[4:8], "little")

    @property
    def block_align(self) -> int:
        return int.from_bytes(self.fmt[12:14], "little")

    @property
    def bits(self) -> int:
        return int.from_bytes(self.fmt[14:16], "little")


# PCM, IEEE float, and WAVE_FORMAT_EXTENSIBLE: the ones whose silence is all zero samples.
_WAV_TAGS = (1, 3, 0xFFFE)


def _parse_wav(audio: bytes) -> _Wav:
    if len(audio) < 12 or audio[:4] != b"RIFF" or audio[8:12] != b"WAVE":
        raise NotJoinable("not a RIFF/WAVE file")
    fmt: bytes | None = None
    at = 12
    while at + 8 <= len(audio):
        name, size = audio[at : at + 4], int.from_bytes(audio[at + 4 : at + 8], "little")
        body_at = at + 8
        if name == b"data":
            end = len(audio) if size == _UNKNOWN_SIZE else min(len(audio), body_at + size)
            if fmt is None:
                raise NotJoinable("WAV data before its fmt chunk")
            wav = _Wav(fmt, audio[body_at:end])
            if wav.format_tag not in _WAV_TAGS or wav.block_align <= 0:
                raise NotJoinable(f"WAV format tag {wav.format_tag} is not joined")
            return wav
        if name == b"fmt ":
            fmt = audio[body_at : body_at + size]
            if len(fmt) < 16:
                raise NotJoinable("WAV fmt chunk too short")
        at = body_at + size + (size & 1)
    raise NotJoinable("WAV without a data chunk")


def _wav_header(fmt: bytes, data_size: int | None) -> bytes:
    fmt_chunk = b"fmt " + struct.pack("<I", len(fmt)) + fmt + (b"\0" if len(fmt) & 1 else b"")
    if data_size is None:
        riff, data = _UNKNOWN_SIZE, _UNKNOWN_SIZE
    else:
        riff, data = 4 + len(fmt_chunk) + 8 + data_size, data_size
    return (
        b"RIFF" + struct.pack("<I", riff) + b"WAVE" + fmt_chunk + b"data" + struct.pack("<I", data)
    )


def _wav_silence(wav: _Wav, pause_ms: int) -> bytes:
    fill = b"\x80" if wav.bits == 8 else b"\0"  # 8-bit WAV samples are unsigned
    return _silence_bytes(wav.sample_rate, wav.block_align, pause_ms, fill)


# --- MP3 -------------------------------------------------------------------------------

_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True, slots=True)
class _Frame:
    header: bytes
    version: int  # 3 MPEG-1, 2 MPEG-2, 0 MPEG-2.5
    sample_rate: int
    channel_mode: int
    length: int

    @property
    def stream(self) -> tuple[int, int, int]:
        """What every frame of one joined answer must share."""
        return self.version, self.sample_rate, self.channel_mode

    @property
    def side_info(self) -> int:
        mono = self.channel_mode == 3
        if self.version == 3:
            return 17 if mono else 32
        return 9 if mono else 17


def _frame_at(audio: bytes, at: int) -> _Frame | None:
    if at + 4 > len(audio) or audio[at] != 0xFF or audio[at + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = audio[at + 1], audio[at + 2], audio[at + 3]
    version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, free format, or not layer III
    kbps = _BITRATES[1 if version == 3 else 2][bitrate_index]
    rate = _RATES[version][rate_index]
    length = (144 if version == 3 else 72) * kbps * 1000 // rate + padding
    return _Frame(bytes(audio[at : at + 4]), version, rate, b3 >> 6, length)


def _id3v2_size(audio: bytes, at: int) -> int:
    if audio[at : at + 3] != b"ID3" or at + 10 > len(audio):
        return 0
    size = 0
    for byte in audio[at + 6 : at + 10]:
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if audio[at + 5] & 0x10 else 0
    return 10 + size + footer


def _info_tag_at(audio: bytes, at: int, frame: _Frame) -> int | None:
    """Where a Xing/Info tag starts in the frame at ``at``, or None for an audio frame."""
    crc = 0 if audio[at + 1] & 1 else 2
    tag_at = at + 4 + crc + frame.side_info
    if audio[tag_at : tag_at + 4] in (b"Xing", b"Info"):
        return tag_at
    return None


def _delay_and_padding(audio: bytes, tag_at: int, frame_end: int) -> tuple[int, int]:
    """The encoder delay and padding a LAME tag records, in samples ((0, 0) without one).

    A decoder trims them when the tag is there; once the tag is dropped they play, so the
    pause between two pieces is shortened by the padding before it and the delay after."""
    flags = int.from_bytes(audio[tag_at + 4 : tag_at + 8], "big")
    lame_at = tag_at + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2)
    lame_at += 100 * bool(flags & 4) + 4 * bool(flags & 8)
    field = audio[lame_at + 21 : lame_at + 24]
    if lame_at + 24 > frame_end or len(field) < 3:
        return 0, 0
    value = int.from_bytes(field, "big")
    return value >> 12, value & 0xFFF


@dataclass(frozen=True, slots=True)
class _Mp3:
    frame: _Frame  # the first audio frame: what later pieces must match
    frames: bytes
    delay: int  # samples of encoder delay before the sound, and padding after it
    padding: int


def _parse_mp3(audio: bytes) -> _Mp3:
    """The audio frames of one MP3 answer, without tags and info frames."""
    at = _id3v2_size(audio, 0)
    end = len(audio) - (128 if audio[-128:-125] == b"TAG" else 0)
    frames: list[bytes] = []
    first: _Frame | None = None
    delay = padding = 0
    while at < end:
        frame = _frame_at(audio, at)
        if frame is None:
            tag = _id3v2_size(audio, at)
            if tag:
                at += tag
                continue
            raise NotJoinable(f"no MPEG layer III frame at byte {at}")
        if at + frame.length > end:
            raise NotJoinable(f"truncated MPEG frame at byte {at}")
        if first is not None and frame.stream != first.stream:
            raise NotJoinable("MPEG frames of different versions, rates or channel modes")
        tag_at = _info_tag_at(audio, at, frame)
        if tag_at is not None:
            delay, padding = _delay_and_padding(audio, tag_at, at + frame.length)
        elif audio[at + 36 : at + 40] != b"VBRI":
            first = first or frame
            frames.append(audio[at : at + frame.length])
        at += frame.length
    if first is None:
        raise NotJoinable("MP3 without audio frames")
    return _Mp3(first, b"".join(frames), delay, padding)


def _mp3_silence(frame: _Frame, pause_ms: int, owed: int) -> tuple[bytes, int]:
    """Silent frames lasting the pause less ``owed`` samples, and the samples still owed."""
    # No CRC, no padding: a frame whose side information and main data are zero is silent.
    header = bytes((0xFF, frame.header[1] | 1, frame.header[2] & ~0x02, frame.header[3]))
    silent = _frame_at(header, 0)
    assert silent is not None
    samples = 1152 if frame.version == 3 else 576
    wanted = frame.sample_rate * pause_ms / 1000
    count = max(0, round((wanted - owed) / samples))
    return (header + bytes(silent.length - 4)) * count, max(0, owed - round(wanted))


# --- Joining ---------------------------------------------------------------------------


class Splicer:
    """Joins the pieces of one answer as they come, in order."""

    def __init__(self, kind: Joinable, pause_ms: int, pcm: PcmFormat = PcmFormat()) -> None:
        self.kind = kind
        self.pause_ms = pause_ms
        self.pcm = pcm
        self._wav: _Wav | None = None
        self._mp3: _Frame | None = None
        # Samples of encoder delay and padding that play without their tag, not yet taken
        # off a pause: taken off the next one, so the answer lasts what its pieces do.
        self._owed = 0

    def _body(self, audio: bytes) -> bytes:
        if self.kind == "pcm":
            if len(audio) % (self.pcm.sample_width * self.pcm.channels):
                raise NotJoinable("PCM length is not a whole number of samples")
            return audio
        if self.kind == "wav":
            wav = _parse_wav(audio)
            if self._wav is not None and wav.fmt != self._wav.fmt:
                raise NotJoinable("WAV pieces of different formats")
            self._wav = self._wav or wav
            return wav.data
        mp3 = _parse_mp3(audio)
        if self._mp3 is not None and mp3.frame.stream != self._mp3.stream:
            raise NotJoinable("MP3 pieces of different versions, rates or channel modes")
        self._mp3 = self._mp3 or mp3.frame
        self._owed += mp3.delay + mp3.padding
        return mp3.frames

    def _pause(self) -> bytes:
        if self.kind == "pcm":
            width = self.pcm.sample_width * self.pcm.channels
            fill = b"\x80" if self.pcm.sample_width == 1 else b"\0"
            return _silence_bytes(self.pcm.sample_rate, width, self.pause_ms, fill)
        if self.kind == "wav":
            assert self._wav is not None
            return _wav_silence(self._wav, self.pause_ms)
        assert self._mp3 is not None
        silence, self._owed = _mp3_silence(self._mp3, self.pause_ms, self._owed)
        return silence

    def first(self, audio: bytes, *, data_size: int | None = None) -> bytes:
        """The bytes that start the answer: the first piece (with the WAV header)."""
        body = self._body(audio)
        if self.kind == "wav":
            assert self._wav is not None
            return _wav_header(self._wav.fmt, data_size) + body
        return body

    def then(self, audio: bytes) -> bytes:
        """A later piece's bytes: the pause, then its audio. Raises NotJoinable."""
        body = self._body(audio)  # first: the pause depends on the piece's format
        return self._pause() + body


def join(
    kind: Joinable, pieces: Sequence[bytes], pause_ms: int, pcm: PcmFormat = PcmFormat()
) -> bytes:
    """One complete file from the pieces' audio, in order; raises NotJoinable."""
    if not pieces:
        raise NotJoinable("nothing to join")
    splicer = Splicer(kind, pause_ms, pcm)
    if kind == "wav":
        bodies = [splicer._body(piece) for piece in pieces]
        data = splicer._pause().join(bodies)
        assert splicer._wav is not None
        return _wav_header(splicer._wav.fmt, len(data)) + data
    head = splicer.first(pieces[0])
    return head + b"".join(splicer.then(piece) for piece in pieces[1:])
