"""Audio in: any file PyAV reads, as 16 kHz mono float32; cut into windows at quiet points.

``decode(data, max_seconds)`` reads WAV, FLAC, MP3, M4A/AAC, Ogg (Opus or
Vorbis), WebM/Matroska and MP4 video (its first audio track) from bytes in
memory, downmixes to mono and resamples to 16 kHz with
``av.AudioResampler``::

    samples = decode(open("jfk.flac", "rb").read(), max_seconds=1800)
    samples.dtype, samples.shape        # -> (dtype('float32'), (176000,))

Decoding is bounded: it stops as soon as the decoded audio passes
``max_seconds`` and refuses the file (``InvalidInput``: "the audio is longer
than the limit of 1800 s"), so a two-hour upload costs at most the limit's
worth of decoding, never the whole file. Empty input, data no demuxer
recognises, corrupt streams, a video without an audio track and codecs this
build of FFmpeg lacks are each refused with their own message. Silence is
audio like any other: it decodes.

``windows(samples)`` cuts a recording into windows of at most 30 s (what
Whisper sees at once), each cut placed at the quietest short frame near the
30 s boundary, so that no word is split between two windows::

    windows(np.zeros(16_000 * 70, np.float32))   # -> [(0, 480000), (480000, 960000), (960000, 1120000)]

``loudness_db(samples)`` is the level (dBFS) of a window's loudest 0.1 s frame,
used to skip windows that hold nothing but (near-)digital silence.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import InvalidInput

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0  # Whisper's receptive field
SEARCH_SECONDS = 5.0  # how far before each 30 s boundary a quiet point is looked for
FRAME_SECONDS = 0.1  # the length of the frames whose energy is compared
HOP_SECONDS = 0.01


def decode(data: bytes, max_seconds: float) -> np.ndarray:
    """The audio of ``data`` as float32 mono samples at 16 kHz (see the module docstring)."""
    import av

    if not data:
        raise InvalidInput("the audio file is empty (0 bytes); send a recording")
    try:
        container = av.open(io.BytesIO(bytes(data)), mode="r")
    except av.FFmpegError as exc:
        raise InvalidInput(
            f"the file is not audio this server can read, or it is corrupt ({_reason(exc)}); "
            "send WAV, FLAC, MP3, M4A/AAC, Ogg/Opus, WebM or MP4"
        ) from None
    with container:
        if not container.streams.audio:
            if container.streams.video:
                raise InvalidInput("the file holds video or pictures but no audio track; send a recording with sound")
            raise InvalidInput("the file holds no audio track; send a recording")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for it
            raise InvalidInput(
                "the file's audio codec is not one this server can decode; convert it to FLAC, WAV or MP3"
            )
        stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for packet in container.demux(stream):  # ends with an empty packet that flushes the decoder
                for frame in packet.decode():
                    total += _keep(resampler.resample(frame), chunks)
                _check_length(total, max_seconds)
            total += _keep(resampler.resample(None), chunks)
            _check_length(total, max_seconds)
        except av.FFmpegError as exc:
            where = f" after {total / SAMPLE_RATE:.1f} s" if total else ""
            raise InvalidInput(
                f"the audio is corrupt{where} ({_reason(exc)}); send the file again or re-encode it"
            ) from None
    if not total:
        raise InvalidInput("the audio track holds no sound samples; send a recording that plays")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise InvalidInput("the audio holds invalid (non-finite) samples; re-encode it")
    return samples


def _check_length(samples: int, max_seconds: float) -> None:
    if samples > max_seconds * SAMPLE_RATE:
        raise InvalidInput(
            f"the audio is longer than the limit of {max_seconds:g} s; "
            "send a shorter recording or cut it into parts"
        )


def _keep(frames, chunks: list[np.ndarray]) -> int:
    """Append the resampled frames' samples to ``chunks``; return how many there were."""
    added = 0
    for frame in frames:
        chunks.append(frame.to_ndarray().reshape(-1))
        added += chunks[-1].size
    return added


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def frame_levels(samples: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Mean energy of each ``frame``-sample frame, every ``hop`` samples (via a cumulative sum)."""
    if samples.size < frame:
        return np.array([float(np.mean(np.square(samples, dtype=np.float64)))]) if samples.size else np.zeros(1)
    energy = np.concatenate([[0.0], np.cumsum(np.square(samples, dtype=np.float64))])
    starts = np.arange(0, samples.size - frame + 1, hop)
    return (energy[starts + frame] - energy[starts]) / frame


def quietest_point(samples: np.ndarray, lo: int, hi: int, rate: int = SAMPLE_RATE) -> int:
    """The sample index in ``[lo, hi]`` at the centre of the quietest ``FRAME_SECONDS`` frame.

    Ties (digital silence) go to the latest frame, which keeps windows long.
    """
    frame, hop = int(FRAME_SECONDS * rate), int(HOP_SECONDS * rate)
    start = max(0, lo - frame // 2)
    region = samples[start : hi + frame // 2]
    levels = frame_levels(region, frame, hop)
    best = len(levels) - 1 - int(np.argmin(levels[::-1]))
    centre = start + best * hop + min(frame, region.size) // 2
    return int(min(max(centre, lo), hi))


def windows(
    samples: np.ndarray,
    rate: int = SAMPLE_RATE,
    window_seconds: float = WINDOW_SECONDS,
    search_seconds: float = SEARCH_SECONDS,
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges covering ``samples``, each at most ``window_seconds`` long.

    Each cut is the quietest point in the last ``search_seconds`` before the
    window would reach ``window_seconds``; the next window starts exactly
    there, so windows neither overlap nor leave gaps.
    """
    size = int(window_seconds * rate)
    search = min(int(search_seconds * rate), size - 1)
    n = samples.size
    cuts, start = [], 0
    while n - start > size:
        cut = quietest_point(samples, start + size - search, start + size, rate)
        cuts.append((start, cut))
        start = cut
    cuts.append((start, n))
    return cuts


def loudness_db(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """The level in dBFS of the loudest ``FRAME_SECONDS`` frame (-inf for digital silence)."""
    frame = int(FRAME_SECONDS * rate)
    peak = float(frame_levels(samples, frame, frame // 2).max()) if samples.size else 0.0
    return 10 * np.log10(peak) if peak > 0 else float("-inf")
