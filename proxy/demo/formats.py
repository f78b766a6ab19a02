"""Audio formats the demo upstream answers in: sample-rate conversion and encoders.

All of it is FFmpeg's, through the PyAV wheel (which bundles LAME, libopus and FFmpeg's own
AAC and FLAC encoders): one library, one way to make the output repeatable. Every file is
written with FFmpeg's ``bitexact`` flags; without them the Ogg muxer draws a random stream
serial for each file and the MP3 and Ogg muxers write the library version into the tags, so
the same speech would give other bytes in another process, or after an upgrade.

Rates are converted by libswresample (a windowed-sinc polyphase filter on the exact ratio,
e.g. 160/147 for 22,050 to 24,000 Hz) in 16-bit integer arithmetic: a pure function of its
input, with no dither, and with ``ceil(n * to_rate / rate)`` samples out.
"""

from __future__ import annotations

import io
import itertools
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.codec.context import Flags

Codec = Literal["pcm", "wav", "mp3", "opus", "aac", "flac", "ulaw", "alaw"]

CONTENT_TYPES: dict[Codec, str] = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus files (RFC 7845); audio/opus names RTP payloads
    "aac": "audio/aac",
    "flac": "audio/flac",
    "ulaw": "audio/basic",
    "alaw": "audio/x-alaw-basic",
}
# (FFmpeg muxer, FFmpeg encoder) for the formats not written by hand.
_FFMPEG: dict[Codec, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
    "ulaw": ("mulaw", "pcm_mulaw"),
    "alaw": ("alaw", "pcm_alaw"),
}


@dataclass(frozen=True)
class AudioFormat:
    """What an answer is encoded as: 16-bit mono ``codec`` audio at ``sample_rate``."""

    codec: Codec
    sample_rate: int
    bit_rate: int = 0  # bits per second, for the lossy codecs

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.codec]


def wav_file(pcm: bytes, sample_rate: int) -> bytes:
    """A RIFF/WAVE file around 16-bit mono PCM."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1,
        sample_rate, sample_rate * 2, 2, 16, b"data", len(pcm),
    )  # fmt: skip
    return header + pcm


def _frame(pcm: bytes, sample_rate: int) -> AudioFrame:
    frame = AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    frame.planes[0].update(pcm[: len(pcm) // 2 * 2])
    return frame


def resample(pcm: bytes, rate: int, to_rate: int, *, tempo: float = 1.0) -> bytes:
    """16-bit mono PCM at ``rate`` as PCM at ``to_rate``, played ``tempo`` times as fast
    (FFmpeg's atempo: the pitch stays, 0.5 to 100)."""
    if (rate == to_rate and tempo == 1.0) or len(pcm) < 2:
        return pcm
    graph = av.filter.Graph()
    chain = [
        graph.add_abuffer(
            format="s16", sample_rate=rate, layout="mono", time_base=Fraction(1, rate)
        )
    ]
    if tempo != 1.0:
        chain.append(graph.add("atempo", f"tempo={tempo!r}"))
    if to_rate != rate:
        chain.append(graph.add("aresample", str(to_rate)))
    layout = f"sample_fmts=s16:channel_layouts=mono:sample_rates={to_rate}"
    chain.append(graph.add("aformat", layout))
    chain.append(graph.add("abuffersink"))
    for source, sink in itertools.pairwise(chain):
        source.link_to(sink)
    graph.configure()
    graph.push(_frame(pcm, rate))
    graph.push(None)
    out = bytearray()
    # A bound, not a guess: every pull returns at least one sample or ends the loop.
    for _ in range(len(pcm) * 4 + 16):
        try:
            frame = graph.pull()
        except (av.BlockingIOError, av.EOFError):
            break
        assert isinstance(frame, AudioFrame)
        out += bytes(frame.planes[0])[: frame.samples * 2]
    return bytes(out)


def _ffmpeg_file(pcm: bytes, fmt: AudioFormat) -> bytes:
    container, encoder = _FFMPEG[fmt.codec]
    buffer = io.BytesIO()
    options = {"fflags": "+bitexact"}
    if fmt.codec == "mp3":
        options["id3v2_version"] = "0"  # plain MPEG frames (and LAME's Info frame), no empty tag
    with av.open(buffer, "w", format=container, options=options) as output:
        stream = output.add_stream(encoder, rate=fmt.sample_rate, layout="mono")
        assert isinstance(stream, AudioStream)
        if fmt.bit_rate:
            stream.bit_rate = fmt.bit_rate
        stream.codec_context.flags |= Flags.bitexact
        if len(pcm) >= 2:
            for packet in stream.encode(_frame(pcm, fmt.sample_rate)):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def encode(pcm: bytes, rate: int, fmt: AudioFormat) -> bytes:
    """16-bit mono PCM at ``rate`` as a file (or raw stream) of ``fmt``; same input, same bytes."""
    pcm = resample(pcm, rate, fmt.sample_rate)
    if fmt.codec == "pcm":
        return pcm
    if fmt.codec == "wav":
        return wav_file(pcm, fmt.sample_rate)
    return _ffmpeg_file(pcm, fmt)
