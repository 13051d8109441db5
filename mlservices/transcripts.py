"""Transcripts: Whisper tokens to timed segments, windows stitched, TXT/SRT/VTT, word error rate.

Pure functions on plain values (token ids, dicts, strings); nothing here loads
a model. A segment is ``{"start": 0.0, "end": 11.0, "text": "And so my fellow
Americans, ..."}`` with times in seconds from the start of the recording::

    segments_from_tokens(
        [50364, 400, 370, 50414], timestamp_begin=50364, eos=50257,
        decode=tokenizer.decode, offset=30.0, end=58.2,
    )   # -> [{"start": 30.0, "end": 31.0, "text": "And so"}]

    srt([{"start": 0.0, "end": 11.0, "text": "And so my fellow Americans"}])
    # -> '1\\n00:00:00,000 --> 00:00:11,000\\nAnd so my fellow Americans\\n'

    word_error_rate("Ask not what your country", "ask not what our country")  # -> 0.2
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
# Written without spaces between words: join their segments with nothing.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "km", "bo", "yue"})


def segments_from_tokens(
    tokens: Sequence[int],
    *,
    timestamp_begin: int,
    eos: int,
    decode: Callable[[list[int]], str],
    offset: float = 0.0,
    end: float | None = None,
    time_precision: float = TIME_PRECISION,
) -> list[dict]:
    """The timed segments of one window's generated tokens.

    ``tokens`` are what Whisper generated for a window that starts at
    ``offset`` seconds and ends at ``end``: text tokens (ids below ``eos``),
    special tokens (``eos`` up to ``timestamp_begin``, ignored) and timestamp
    tokens (``timestamp_begin + k`` is ``k * time_precision`` seconds into the
    window). ``<|t0|> text <|t1|>`` is a segment from t0 to t1; text with no
    opening timestamp starts at the window's start, text with no closing one
    (generation stopped, or timestamps were off) ends at the window's end.
    Times are absolute (``offset`` added) and clamped to the window.
    """
    end = offset + 30.0 if end is None else end

    def at(token: int) -> float:
        return min(max(offset + (token - timestamp_begin) * time_precision, offset), end)

    segments: list[dict] = []
    start: float | None = None
    text: list[int] = []

    def close(stop: float) -> None:
        words = " ".join(decode(text).split())
        if words:
            begin = offset if start is None else start
            segments.append({"start": round(begin, 3), "end": round(max(stop, begin), 3), "text": words})
        text.clear()

    for token in tokens:
        if token >= timestamp_begin:
            if text:
                close(at(token))
            start = at(token)
        elif token < eos:
            text.append(token)
    if text:
        close(end)
    return segments


def join_texts(pieces: Sequence[str], language: str | None) -> str:
    """Texts of consecutive segments as one text: spaces between them, except in
    languages written without spaces (Chinese, Japanese, Thai, ...)."""
    separator = "" if language in UNSPACED_LANGUAGES else " "
    return separator.join(p for p in (piece.strip() for piece in pieces) if p)


def stitch(windows: Sequence[dict], language: str | None) -> tuple[str, list[dict]]:
    """The full text and the segments of consecutive windows, in order.

    Windows are cut at quiet points and never overlap, and each window's
    segments are clamped to its own time range, so stitching is concatenation:
    every word is kept once. Segments come out in time order.
    """
    segments = [dict(segment) for window in windows for segment in window["segments"]]
    return join_texts([s["text"] for s in segments], language), segments


def timestamp(seconds: float, separator: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``separator="."``, ``HH:MM:SS.mmm`` (WebVTT)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def txt(segments: Sequence[dict]) -> str:
    """Plain text, one segment per line."""
    return "".join(f"{_one_line(s['text'])}\n" for s in segments)


def srt(segments: Sequence[dict]) -> str:
    """SubRip subtitles: numbered cues, ``00:00:01,500 --> 00:00:04,000`` times."""
    cues = [
        f"{i}\n{timestamp(s['start'])} --> {timestamp(s['end'])}\n{_one_line(s['text']).replace('-->', '->')}\n"
        for i, s in enumerate(segments, 1)
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[dict]) -> str:
    """WebVTT subtitles; ``&``, ``<`` and ``>`` in the text are escaped as the format requires."""
    cues = [
        f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{_vtt_text(s['text'])}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _vtt_text(text: str) -> str:
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def normalise_words(text: str) -> list[str]:
    """Words for scoring: lowercase, apostrophes dropped, other punctuation as spaces."""
    text = unicodedata.normalize("NFKC", text).lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^\w\s]|_", " ", text).split()


def edit_operations(reference: Sequence[str], hypothesis: Sequence[str]) -> list[tuple[str, int, int]]:
    """A minimal Levenshtein alignment of two word lists.

    Each step is ``(op, i, j)`` with ``op`` one of ``"equal"``, ``"substitute"``
    (reference word ``i`` became hypothesis word ``j``), ``"delete"``
    (reference word ``i`` is missing) or ``"insert"`` (hypothesis word ``j`` is
    extra); for deletes ``j`` and for inserts ``i`` is the position in the
    other list where it happened.
    """
    n, m = len(reference), len(hypothesis)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            same = reference[i - 1] == hypothesis[j - 1]
            cost[i][j] = min(cost[i - 1][j - 1] + (not same), cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    steps: list[tuple[str, int, int]] = []
    i, j = n, m
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            i, j = i - 1, j - 1
            steps.append(("equal" if reference[i] == hypothesis[j] else "substitute", i, j))
        elif i and cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
            steps.append(("delete", i, j))
        else:
            j -= 1
            steps.append(("insert", i, j))
    return steps[::-1]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words), on normalised words."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    return sum(op != "equal" for op, _, _ in edit_operations(ref, hyp)), len(ref)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors per reference word; for a corpus, sum ``word_errors`` over its parts."""
    errors, words = word_errors(reference, hypothesis)
    return errors / words if words else float(errors > 0)
