"""Audio decoding (PyAV) and quiet-point windowing, on files these tests encode themselves.

Every container and codec the transcription serving accepts is produced here
with PyAV's encoders (a 440 Hz tone), decoded back, and checked for length,
sample rate (the tone's frequency survives only if resampling is right),
type and channel layout. The shared speech clips decode to their manifest
durations.
"""

from __future__ import annotations

import csv
import io
import struct

import av
import numpy as np
import pytest

from mlservices import InvalidInput
from mlservices.audio import SAMPLE_RATE, decode, loudness_db, quietest_point, windows
from mlservices.formats import sniff
from tests.conftest import SHARED, require

SPEECH = SHARED / "data" / "audio" / "speech"
JFK = SHARED / "data" / "audio" / "jfk.flac"


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(
    container: str,
    codec: str | None,
    samples: np.ndarray | None = None,
    rate: int = 44_100,
    channels: int = 1,
    video: str | None = None,
) -> bytes:
    """``samples`` (mono float32; default 2 s of a 440 Hz tone) encoded with PyAV.

    ``codec=None`` writes no audio track; ``video`` adds a 2 s video stream with that codec.
    """
    samples = tone(2.0, rate) if samples is None else samples
    layout = "mono" if channels == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        picture = out.add_stream(video, rate=10) if video else None
        sound = out.add_stream(codec, rate=rate, layout=layout) if codec else None
        if picture:
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
            for i in range(20):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 12, np.uint8), format="rgb24")
                out.mux(picture.encode(frame))
            out.mux(picture.encode(None))
        if sound:
            sound.codec_context.options = {"strict": "experimental"}  # FFmpeg's own Vorbis encoder
            frame = av.AudioFrame.from_ndarray(np.repeat(samples[None], channels, axis=0), format="fltp", layout=layout)
            frame.sample_rate = rate
            resampler = av.AudioResampler(
                format=sound.codec_context.codec.audio_formats[0].name,
                layout=layout,
                rate=rate,
                frame_size=sound.codec_context.frame_size or None,
            )
            for chunk in resampler.resample(frame) + resampler.resample(None):
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return buffer.getvalue()


def wav_with_codec_tag(tag: int) -> bytes:
    """A WAV file whose format tag names codec ``tag`` (0x9999: none that exists)."""
    data = np.zeros(1600, np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def dominant_frequency(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


# --- every accepted format, from generated files ------------------------------------

FORMATS = [
    # (container, audio codec, rate, channels, video codec, the format sniff names)
    ("wav", "pcm_s16le", 44_100, 1, None, "wav"),
    ("wav", "pcm_f32le", 8_000, 2, None, "wav"),
    ("flac", "flac", 44_100, 2, None, "flac"),
    ("mp3", "libmp3lame", 44_100, 1, None, "mp3"),
    ("adts", "aac", 44_100, 1, None, "aac"),
    ("ipod", "aac", 44_100, 2, None, "mp4"),  # .m4a
    ("ogg", "libopus", 48_000, 1, None, "ogg"),
    ("ogg", "vorbis", 22_050, 2, None, "ogg"),
    ("webm", "libopus", 48_000, 2, None, "webm"),
    ("mp4", "aac", 44_100, 1, "mpeg4", "mp4"),  # a video with sound
    ("webm", "libopus", 48_000, 1, "libvpx", "webm"),
]


@pytest.mark.parametrize(
    "container, codec, rate, channels, video, sniffed",
    FORMATS,
    ids=[f"{c}-{a}-{r}Hz-{n}ch" + (f"-{v}" if v else "") for c, a, r, n, v, _ in FORMATS],
)
def test_every_format_decodes_to_16khz_mono_float32(container, codec, rate, channels, video, sniffed):
    data = encode(container, codec, rate=rate, channels=channels, video=video)
    assert sniff(data[:64]) == sniffed
    samples = decode(data, max_seconds=60)
    assert samples.dtype == np.float32 and samples.ndim == 1
    # 2 s of tone; lossy codecs add up to ~50 ms of priming/padding
    assert 2.0 * SAMPLE_RATE - 50 <= samples.size <= 2.07 * SAMPLE_RATE
    assert dominant_frequency(samples) == pytest.approx(440, abs=2)
    assert 0.2 < np.abs(samples).max() < 0.5  # the 0.3 tone (stereo downmix: ×√2 at most)


def test_jfk_decodes_to_eleven_seconds():
    require(JFK.is_file(), f"jfk.flac is not at {JFK}")
    samples = decode(JFK.read_bytes(), max_seconds=60)
    assert samples.size == 11 * SAMPLE_RATE
    assert samples.dtype == np.float32
    assert np.abs(samples).max() > 0.1  # 44.1 kHz stereo, downmixed and resampled


def test_shared_speech_clips_decode_to_their_manifest_durations():
    manifest = SPEECH / "manifest.tsv"
    require(manifest.is_file(), f"the speech clips are not at {SPEECH}")
    rows = list(csv.DictReader(manifest.open(encoding="utf-8"), delimiter="\t"))
    assert len(rows) == 10
    for row in rows:
        samples = decode((SPEECH / row["file"]).read_bytes(), max_seconds=1800)
        assert samples.size / SAMPLE_RATE == pytest.approx(float(row["duration_s"]), abs=0.01), row["file"]


def test_silence_decodes():
    samples = decode(encode("wav", "pcm_s16le", np.zeros(16_000, np.float32), rate=16_000), max_seconds=60)
    assert samples.size == 16_000 and not samples.any()


# --- refusals, each with its own message ---------------------------------------------


def test_empty_input_is_refused():
    with pytest.raises(InvalidInput, match=r"the audio file is empty \(0 bytes\)"):
        decode(b"", max_seconds=60)


@pytest.mark.parametrize(
    "data",
    [b"hello, this is text, not sound" * 10, b'{"json": true}', b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(40)],
    ids=["text", "json", "wav-header-only"],
)
def test_data_no_demuxer_reads_is_refused(data):
    with pytest.raises(InvalidInput, match="not audio this server can read, or it is corrupt"):
        decode(data, max_seconds=60)


def test_a_truncated_header_is_refused():
    with pytest.raises(InvalidInput, match="not audio this server can read, or it is corrupt"):
        decode(encode("flac", "flac")[:200], max_seconds=60)


def test_video_without_an_audio_track_is_refused():
    data = encode("mp4", None, video="mpeg4")
    assert sniff(data[:64]) == "mp4"
    with pytest.raises(InvalidInput, match="holds video or pictures but no audio track"):
        decode(data, max_seconds=60)


def test_a_codec_ffmpeg_cannot_decode_is_refused():
    with pytest.raises(InvalidInput, match="audio codec is not one this server can decode"):
        decode(wav_with_codec_tag(0x9999), max_seconds=60)


def corrupt_middle(data: bytes) -> bytes:
    """``data`` with its middle 30% overwritten by random bytes."""
    data = bytearray(data)
    a, b = int(len(data) * 0.4), int(len(data) * 0.7)
    data[a:b] = np.random.default_rng(1).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    return bytes(data)


def test_corrupt_audio_is_refused_with_where_it_broke():
    data = corrupt_middle(encode("mp4", "aac", tone(20.0, 44_100)))
    with pytest.raises(InvalidInput, match=r"the audio is corrupt after \d+\.\d s"):
        decode(data, max_seconds=60)


def test_too_long_audio_is_refused_with_the_limit():
    with pytest.raises(InvalidInput, match="the audio is longer than the limit of 10 s"):
        decode(encode("flac", "flac", tone(12.0, 16_000), rate=16_000), max_seconds=10)


def test_decoding_stops_at_the_limit_instead_of_reading_the_whole_file():
    # The same corrupt file as above: decoding it through fails at the corruption
    # (~8 s in); with a 5 s limit decoding must stop before getting there.
    data = corrupt_middle(encode("mp4", "aac", tone(20.0, 44_100)))
    with pytest.raises(InvalidInput, match="longer than the limit of 5 s"):
        decode(data, max_seconds=5)


# --- quiet-point windows ---------------------------------------------------------------


def speech_like(seconds: float, gaps: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Loud noise with silent gaps at ``gaps`` ((start, end) seconds)."""
    samples = (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)
    for a, b in gaps:
        samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] = 0
    return samples


def test_short_audio_is_one_window():
    assert windows(np.ones(SAMPLE_RATE * 30, np.float32)) == [(0, SAMPLE_RATE * 30)]
    assert windows(np.ones(100, np.float32)) == [(0, 100)]


def test_windows_are_cut_inside_the_pauses_near_each_30_s_boundary():
    gaps = [(10.0, 10.4), (27.0, 27.3), (53.5, 53.8)]  # the first is too early to be chosen
    samples = speech_like(70.0, gaps)
    cuts = windows(samples)
    assert len(cuts) == 3
    assert cuts[0][0] == 0 and cuts[-1][1] == samples.size
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))  # contiguous: no overlap, no gap
    assert all(b - a <= 30 * SAMPLE_RATE for a, b in cuts)
    assert 27.0 < cuts[0][1] / SAMPLE_RATE < 27.3
    assert 53.5 < cuts[1][1] / SAMPLE_RATE < 53.8


def test_digital_silence_is_cut_at_30_s():
    assert windows(np.zeros(SAMPLE_RATE * 70, np.float32)) == [
        (0, 480_000),
        (480_000, 960_000),
        (960_000, 1_120_000),
    ]


def test_without_a_pause_the_quietest_moment_is_chosen():
    samples = speech_like(40.0, [])
    samples[int(26 * SAMPLE_RATE) : int(26.2 * SAMPLE_RATE)] *= 0.5  # a dip, not silence
    samples[int(28 * SAMPLE_RATE) : int(28.2 * SAMPLE_RATE)] *= 0.1  # a deeper one
    cut = windows(samples)[0][1]
    assert 28.0 <= cut / SAMPLE_RATE <= 28.2


def test_quietest_point_stays_inside_its_range():
    samples = speech_like(5.0, [(0.0, 1.0)])  # the quietest part lies before the range
    cut = quietest_point(samples, 2 * SAMPLE_RATE, 3 * SAMPLE_RATE)
    assert 2 * SAMPLE_RATE <= cut <= 3 * SAMPLE_RATE


def test_loudness():
    assert loudness_db(np.zeros(SAMPLE_RATE, np.float32)) == float("-inf")
    assert loudness_db(tone(1.0, SAMPLE_RATE, amplitude=0.5)) == pytest.approx(-9.03, abs=0.05)  # 0.5²/2
    assert loudness_db(tone(1.0, SAMPLE_RATE, amplitude=0.001)) < -60
