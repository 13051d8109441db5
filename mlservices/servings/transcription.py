"""Speech to text with Whisper: any audio file in, a timed transcript and subtitles out.

Input: ``{"file": <audio bytes>, "language": "", "task": "transcribe",
"timestamps": True}`` (WAV, FLAC, MP3, M4A/AAC, Ogg/Opus, WebM, MP4 video
with sound). The recording is decoded (``mlservices.audio``), cut into
windows of at most 30 s at quiet points, and each window becomes one batch
item: windows of one file and of other requests are transcribed together.
Each finished window streams as a partial result::

    {"index": 0, "start": 0.0, "end": 28.99, "language": "en", "task": "transcribe",
     "text": "Good morning. This Tuesday is Election Day. ...",
     "segments": [{"start": 0.0, "end": 3.24, "text": "Good morning. This Tuesday is Election Day."}, ...]}

and the final result is::

    {"text": "...", "segments": [...], "language": "en", "task": "transcribe",
     "duration": 127.355, "no_speech": False, "model": "whisper-base@sha256:2be218e4f1b5",
     "files": {"txt": Artifact("transcript.txt"), "srt": Artifact("transcript.srt"),
               "vtt": Artifact("transcript.vtt")}}

Request options: ``language`` (ISO 639-1 code such as ``en``; empty: detected
once per file, on its first window with speech, and used for every window so
all windows agree), ``task`` (``transcribe``, or ``translate`` into English),
``timestamps`` (default true: segments at Whisper's timestamps; false: one
segment per window).

Silence is not an error: a window whose loudest 0.1 s is below -60 dBFS never
reaches the model, and a window Whisper itself judges to be without speech
(OpenAI's rule: no-speech probability above 0.6 and average log-probability
below -1) gives no text. A file with no speech at all gives
``{"text": "", "segments": [], "language": None, "no_speech": True, ...}``.
See docs/transcription.md for how windows are cut and stitched.

Options (``build("transcription", ...)`` or settings) and defaults:

- ``model``: a local Whisper folder or a Hub id (default ``openai/whisper-base``
  at commit ``e37978b…``, weights pinned by sha256); any Hugging Face Whisper
  checkpoint with safetensors weights works, e.g. ``../shared/models/whisper-base``;
- ``revision`` / ``sha256``: pin another Hub model's commit and weights;
- ``threads``: torch intra-op threads (default: torch's choice);
- ``max_bytes`` (50 MB) and ``max_seconds`` (1800): the largest upload and the
  longest recording accepted;
- ``max_new_tokens``: tokens generated per window (default: the model's limit;
  tests set a few);
- ``batch_size`` (8) and ``batch_timeout_ms`` (5): the batcher's.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .. import audio, transcripts
from ..artifacts import Artifact
from ..errors import InvalidInput
from ..model_store import ModelSource, locate
from ..registry import register
from ..serving import Prepared, Serving
from ..spec import InputSpec, Option

NAME = "transcription"
DEFAULT_MODEL = "openai/whisper-base"
DEFAULT_REVISION = "e37978b90ca9030d5170a5c07aadb050351a65bb"
DEFAULT_SHA256 = "07cadb9f25677c8d50df603e66a98fbd842cce45047139baeb16e6219a1e807b"
INSTALL_HINT = (
    "Install it with `python -m mlservices download transcription` on a machine that reaches "
    "huggingface.co, or point TRANSCRIPTION_MODEL at a local Whisper folder "
    "(e.g. TRANSCRIPTION_MODEL=../shared/models/whisper-base)."
)
FORMATS = ("wav", "flac", "mp3", "ogg", "webm", "mp4", "aac")
TASKS = ("transcribe", "translate")
SILENCE_DB = -60.0  # a window whose loudest 0.1 s is quieter holds no speech
NO_SPEECH_THRESHOLD = 0.6  # OpenAI's transcribe(): skip a window when P(no speech) is above this ...
LOGPROB_THRESHOLD = -1.0  # ... and the average log-probability of its tokens is below this
DETECTION_WINDOWS = 3  # windows tried, at most, to find the language of a recording
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")


@dataclasses.dataclass
class WhisperModel:
    processor: object
    network: object
    device: str
    dtype: object
    version: str
    max_seconds: float
    max_new_tokens: int | None
    languages: dict[str, int]  # ISO code -> language token id (empty for English-only models)
    sot: int
    eos: int
    no_speech: int
    timestamp_begin: int
    time_precision: float

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)


@dataclasses.dataclass(frozen=True)
class Window:
    """One batch item: a window's log-mel features (None: silent, skips the model) and its prompt.

    Windows share a batch only when their batch key, ``(task, timestamps)``,
    is equal; their languages may differ (Whisper takes one per window).
    """

    features: np.ndarray | None
    language: str | None
    task: str
    timestamps: bool


def checked(input: dict) -> dict:
    """The door's check (``Serving.validate``): the language option as a lowercase code."""
    language = input["language"].strip().lower()
    if language and not LANGUAGE_CODE.match(language):
        raise InvalidInput(
            f"{NAME}: option language={input['language']!r}; use an ISO 639-1 code such as "
            "'en', 'de' or 'fr', or leave it empty to detect the language"
        )
    return {**input, "language": language}


def preprocess(model: WhisperModel, input: dict) -> list[Prepared]:
    """The windows of the recording, each a batch item (see the module docstring)."""
    language, task, timestamps = input["language"], input["task"], input["timestamps"]
    _check_request(model, language, task)
    samples = audio.decode(input["file"], model.max_seconds)
    cuts = audio.windows(samples)
    pieces = [samples[a:b] for a, b in cuts]
    loud = [audio.loudness_db(piece) >= SILENCE_DB for piece in pieces]
    features = iter(_features(model, [p for p, keep in zip(pieces, loud) if keep]))
    windows = [next(features) if keep else None for keep in loud]
    if not model.multilingual:
        language = "en"
    elif not language:
        language = file_language(model, windows)
    rate = audio.SAMPLE_RATE
    return [
        Prepared(
            item=Window(window, language, task, timestamps),
            context={
                "index": i,
                "start": round(a / rate, 3),
                "end": round(b / rate, 3),
                "language": language,
                "task": task,
            },
            key=(task, timestamps),  # all windows are padded to 30 s: only the prompt differs
        )
        for i, ((a, b), window) in enumerate(zip(cuts, windows))
    ]


def _check_request(model: WhisperModel, language: str, task: str) -> None:
    if not model.multilingual:
        if language not in ("", "en") or task != "transcribe":
            raise InvalidInput(
                f"{NAME}: the model {model.version} is English-only; leave language empty (or 'en') "
                "and use task=transcribe, or configure a multilingual Whisper model"
            )
    elif language and language not in model.languages:
        raise InvalidInput(
            f"{NAME}: option language={language!r} is not one the model knows; use one of "
            f"{', '.join(sorted(model.languages))}, or leave it empty to detect the language"
        )


def _features(model: WhisperModel, pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Log-mel features of each piece, padded to 30 s: ``(n_mels, 3000)`` float32 arrays."""
    if not pieces:
        return []
    extracted = model.processor.feature_extractor(pieces, sampling_rate=audio.SAMPLE_RATE, return_tensors="np")
    return list(extracted["input_features"].astype(np.float32))


def detect_language(model: WhisperModel, features: np.ndarray) -> tuple[str, float]:
    """The language spoken in one window (ISO code) and the probability that it holds no speech.

    One encoder pass and one decoder step: the logits after
    ``<|startoftranscript|>``, over the language tokens for the language and
    at ``<|nospeech|>`` for the no-speech probability (as OpenAI's Whisper does).
    """
    import torch

    batch = torch.from_numpy(features[None]).to(model.device, model.dtype)
    start = torch.full((1, 1), model.sot, device=model.device)
    with torch.inference_mode():
        logits = model.network(input_features=batch, decoder_input_ids=start).logits[0, -1].float()
    codes = list(model.languages)
    best = int(logits[[model.languages[c] for c in codes]].argmax())
    return codes[best], float(logits.softmax(dim=-1)[model.no_speech])


def file_language(model: WhisperModel, windows: list[np.ndarray | None]) -> str | None:
    """The language of a recording: that of its first window with speech.

    Windows are tried in order (silent ones skipped), at most
    ``DETECTION_WINDOWS`` of them, so that a musical intro does not decide the
    language of the talk after it; if none of them holds speech the first
    one's guess is kept (its windows will most likely be judged silent too).
    """
    guesses = []
    for features in (f for f in windows if f is not None):
        language, no_speech = detect_language(model, features)
        if no_speech <= NO_SPEECH_THRESHOLD:
            return language
        guesses.append(language)
        if len(guesses) == DETECTION_WINDOWS:
            break
    return guesses[0] if guesses else None


def inference(model: WhisperModel, items: list[Window]) -> list[list[int]]:
    """The generated tokens of each window (none for silence): one batched encoder pass, one ``generate``."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    outputs: list[list[int]] = [[] for _ in items]
    active = [i for i, item in enumerate(items) if item.features is not None]
    if not active:
        return outputs
    first = items[active[0]]  # one batch key: every window shares the task and timestamps
    network = model.network
    features = torch.from_numpy(np.stack([items[i].features for i in active])).to(model.device, model.dtype)
    with torch.inference_mode():
        encoded = BaseModelOutput(last_hidden_state=network.get_encoder()(features).last_hidden_state)
        start = torch.full((len(active), 1), model.sot, device=model.device)
        logits = network(encoder_outputs=encoded, decoder_input_ids=start).logits[:, -1].float()
        no_speech = logits.softmax(dim=-1)[:, model.no_speech].tolist()
        # One decoding pass per window, every token kept: transformers' long-form loop would
        # drop a window's unfinished last segment and decode again from its last timestamp,
        # but a window cut at a quiet point ends where its speech ends.
        sequences = network.generate(
            encoder_outputs=encoded,
            language=[items[i].language for i in active] if model.multilingual else None,
            task=first.task if model.multilingual else None,
            return_timestamps=first.timestamps,
            max_new_tokens=model.max_new_tokens,
            force_unique_generate_call=True,
            return_dict_in_generate=True,
        ).sequences
        for row, i in enumerate(active):
            prompt, tokens = split_sequence(model, sequences[row].tolist())
            silent = no_speech[row] > NO_SPEECH_THRESHOLD and (
                average_logprob(model, encoded.last_hidden_state[row : row + 1], prompt, tokens) < LOGPROB_THRESHOLD
            )
            outputs[i] = [] if silent else tokens
    return outputs


def split_sequence(model: WhisperModel, sequence: list[int]) -> tuple[list[int], list[int]]:
    """The prompt (``<|startoftranscript|><|de|><|transcribe|>``...) and the generated tokens
    before the end of text, of one sequence ``generate`` returned."""
    end = sequence.index(model.eos) if model.eos in sequence else len(sequence)
    start = 0
    while start < end and model.eos < sequence[start] < model.timestamp_begin:
        start += 1
    return sequence[:start], sequence[start:end]


def average_logprob(model: WhisperModel, hidden, prompt: list[int], tokens: list[int]) -> float:
    """Mean log-probability of ``tokens`` and the end of text after them (one teacher-forced
    decoder pass), given one window's encoder output ``hidden`` of shape ``(1, frames, width)``."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    ids = torch.tensor([prompt + tokens], device=model.device)
    encoded = BaseModelOutput(last_hidden_state=hidden)
    logits = model.network(encoder_outputs=encoded, decoder_input_ids=ids).logits[0, len(prompt) - 1 :].float()
    targets = torch.tensor(tokens + [model.eos], device=model.device)
    return float(logits.log_softmax(dim=-1).gather(1, targets[:, None]).mean())


def postprocess(model: WhisperModel, tokens: list[int], context: dict) -> dict:
    """One window's partial result: its text and segments, with times from the recording's start."""
    segments = transcripts.segments_from_tokens(
        tokens,
        timestamp_begin=model.timestamp_begin,
        eos=model.eos,
        decode=lambda ids: model.processor.tokenizer.decode(ids, skip_special_tokens=True),
        offset=context["start"],
        end=context["end"],
        time_precision=model.time_precision,
    )
    return {
        "index": context["index"],
        "start": context["start"],
        "end": context["end"],
        "language": context["language"],
        "task": context["task"],
        "text": transcripts.join_texts([s["text"] for s in segments], context["language"]),
        "segments": segments,
    }


def reduce(model: WhisperModel, windows: list[dict]) -> dict:
    """The whole transcript from its windows' partial results, with TXT, SRT and WebVTT files."""
    text, segments = transcripts.stitch(windows, windows[0]["language"])
    return {
        "text": text,
        "segments": segments,
        "language": windows[0]["language"] if text else None,  # no speech, no language
        "task": windows[0]["task"],
        "duration": windows[-1]["end"],
        "no_speech": not text,
        "model": model.version,
        "files": {
            "txt": Artifact("transcript.txt", transcripts.txt(segments).encode(), "text/plain; charset=utf-8"),
            "srt": Artifact("transcript.srt", transcripts.srt(segments).encode(), "application/x-subrip"),
            "vtt": Artifact("transcript.vtt", transcripts.vtt(segments).encode(), "text/vtt; charset=utf-8"),
        },
    }


@register(NAME)
def transcription(
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    sha256: str | None = None,
    threads: int | None = None,
    max_bytes: int = 50_000_000,
    max_seconds: float = 1800.0,
    max_new_tokens: int | None = None,
) -> Serving:
    if model == DEFAULT_MODEL and revision is None:
        revision, sha256 = DEFAULT_REVISION, sha256 or DEFAULT_SHA256
    source = ModelSource(model, revision=revision, sha256=sha256, install_hint=INSTALL_HINT)

    def load(device: str) -> WhisperModel:
        located = locate(source)
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        if threads:
            torch.set_num_threads(threads)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        processor = WhisperProcessor.from_pretrained(located.path)
        network = WhisperForConditionalGeneration.from_pretrained(
            located.path, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
        network.to(device).eval()
        generation = network.generation_config
        if getattr(generation, "no_timestamps_token_id", None) is None:
            raise InvalidInput(
                f"{NAME}: {located.path} has no Whisper generation_config.json (no_timestamps_token_id); "
                "add the one of the checkpoint it was trained from"
            )
        multilingual = bool(getattr(generation, "is_multilingual", False) and getattr(generation, "lang_to_id", None))
        extractor = processor.feature_extractor
        return WhisperModel(
            processor=processor,
            network=network,
            device=device,
            dtype=dtype,
            version=located.version,
            max_seconds=max_seconds,
            max_new_tokens=max_new_tokens,
            languages={t.strip("<|>"): i for t, i in generation.lang_to_id.items()} if multilingual else {},
            sot=generation.decoder_start_token_id,
            eos=generation.eos_token_id,
            no_speech=generation.no_timestamps_token_id - 1,  # <|nospeech|> (<|nocaptions|>)
            timestamp_begin=generation.no_timestamps_token_id + 1,
            time_precision=2 * extractor.hop_length / extractor.sampling_rate,
        )

    return Serving(
        name=NAME,
        load=load,
        preprocess=preprocess,
        inference=inference,
        postprocess=postprocess,
        reduce=reduce,
        batch_size=8,
        batch_timeout_ms=5.0,
        description="Speech to text with Whisper: transcript, timed segments, SRT/VTT subtitles.",
        spec=InputSpec(
            kind="audio",
            renderer="transcription",
            formats=FORMATS,
            max_bytes=max_bytes,
            max_seconds=max_seconds,
            options=(
                Option(
                    "language",
                    str,
                    "",
                    "spoken language as an ISO 639-1 code (e.g. en, de, fr); empty: detect it",
                ),
                Option("task", str, "transcribe", "transcribe, or translate the speech into English", choices=TASKS),
                Option("timestamps", bool, True, "timed segments (false: one segment per 30 s window)"),
            ),
        ),
        validate=checked,
    )
