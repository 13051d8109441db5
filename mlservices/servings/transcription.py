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
all windows agree; a file of one window is detected in its batch, from the
same encoder pass that transcribes it), ``task`` (``transcribe``, or ``translate`` into English),
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
- ``quantize``: ``"int8"`` runs the linear layers in int8 on the CPU (PyTorch's
  dynamic quantisation; the version gets ``+int8``); default ``""``, float32;
- ``batch_size`` (8) and ``batch_timeout_ms`` (5): the batcher's.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from .. import audio, transcripts, whisper_decoding
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
QUANTIZATIONS = ("", "int8")


@dataclasses.dataclass
class WhisperModel:
    processor: object
    network: object
    device: str
    dtype: object
    version: str
    max_seconds: float
    max_new_tokens: int | None
    rules: whisper_decoding.Rules  # the checkpoint's token ids and decoding rules
    time_precision: float

    @property
    def languages(self) -> dict[str, int]:
        """ISO code -> language token id (empty for English-only models)."""
        return self.rules.languages

    @property
    def multilingual(self) -> bool:
        return bool(self.languages)


@dataclasses.dataclass(frozen=True)
class Window:
    """One batch item: a window's log-mel features (None: silent, skips the model) and its prompt.

    Windows share a batch only when their batch key, ``(task, timestamps)``,
    is equal; their languages may differ (Whisper takes one per window). A
    language of None is detected in the batch, from the window itself.
    ``encoded`` is the encoder's output when preprocess computed it already
    (to detect the language of the file), so the batch does not compute it again.
    """

    features: np.ndarray | None
    language: str | None
    task: str
    timestamps: bool
    encoded: object = None


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
    encoded: dict[int, object] = {}
    if not model.multilingual:
        language = "en"
    elif not language and len(windows) > 1:
        language, encoded = file_language(model, windows)
    language = language or None  # a file of one window: detected in its batch
    rate = audio.SAMPLE_RATE
    return [
        Prepared(
            item=Window(window, language, task, timestamps, encoded.get(i)),
            context={"index": i, "start": round(a / rate, 3), "end": round(b / rate, 3), "task": task},
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


def detect_language(model: WhisperModel, features: np.ndarray) -> tuple[str, float, object]:
    """The language spoken in one window (ISO code), the probability that it holds no
    speech, and the window's encoder output (for the batch to reuse).

    One encoder pass and one decoder step: the logits after
    ``<|startoftranscript|>``, over the language tokens for the language and
    at ``<|nospeech|>`` for the no-speech probability (as OpenAI's Whisper does).
    """
    import torch

    batch = torch.from_numpy(features[None]).to(model.device, model.dtype)
    with torch.inference_mode():
        hidden = whisper_decoding.encode(model.network, batch)
        no_speech, languages, _, _ = whisper_decoding.listen(model.network, hidden, model.rules)
    return languages[0], no_speech[0], hidden[0]


def file_language(model: WhisperModel, windows: list[np.ndarray | None]) -> tuple[str | None, dict[int, object]]:
    """The language of a recording: that of its first window with speech; and the
    encoder outputs computed on the way, by window index.

    Windows are tried in order (silent ones skipped), at most
    ``DETECTION_WINDOWS`` of them, so that a musical intro does not decide the
    language of the talk after it; if none of them holds speech the first
    one's guess is kept (its windows will most likely be judged silent too).
    """
    guesses, encoded = [], {}
    for i, features in ((i, f) for i, f in enumerate(windows) if f is not None):
        language, no_speech, encoded[i] = detect_language(model, features)
        if no_speech <= NO_SPEECH_THRESHOLD:
            return language, encoded
        guesses.append(language)
        if len(guesses) == DETECTION_WINDOWS:
            break
    return (guesses[0] if guesses else None), encoded


def inference(model: WhisperModel, items: list[Window]) -> list[whisper_decoding.Decoded]:
    """Each window decoded (no tokens for silence): one batched encoder pass for the windows
    not encoded yet, then one greedy decoding of the batch (``mlservices.whisper_decoding``)."""
    import torch

    outputs = [whisper_decoding.Decoded([], item.language, 1.0, 0.0) for item in items]
    active = [i for i, item in enumerate(items) if item.features is not None]
    if not active:
        return outputs
    first = items[active[0]]  # one batch key: every window shares the task and timestamps
    with torch.inference_mode():
        fresh = [i for i in active if items[i].encoded is None]
        hidden = dict(zip(fresh, _encode(model, [items[i].features for i in fresh])))
        decoded = whisper_decoding.greedy(
            model.network,
            torch.stack([items[i].encoded if i not in hidden else hidden[i] for i in active]),
            model.rules,
            languages=[items[i].language for i in active],
            task=first.task,
            timestamps=first.timestamps,
            max_new_tokens=model.max_new_tokens,
        )
    for i, window in zip(active, decoded):
        silent = window.no_speech > NO_SPEECH_THRESHOLD and window.avg_logprob < LOGPROB_THRESHOLD
        outputs[i] = dataclasses.replace(window, tokens=[]) if silent else window
    return outputs


def _encode(model: WhisperModel, features: list[np.ndarray]) -> list:
    import torch

    if not features:
        return []
    return list(whisper_decoding.encode(model.network, torch.from_numpy(np.stack(features)).to(model.device, model.dtype)))


def postprocess(model: WhisperModel, decoded: whisper_decoding.Decoded, context: dict) -> dict:
    """One window's partial result: its text and segments, with times from the recording's start."""
    language = decoded.language
    segments = transcripts.segments_from_tokens(
        decoded.tokens,
        timestamp_begin=model.rules.timestamp_begin,
        eos=model.rules.eos,
        decode=lambda ids: model.processor.tokenizer.decode(ids, skip_special_tokens=True),
        offset=context["start"],
        end=context["end"],
        time_precision=model.time_precision,
    )
    return {
        "index": context["index"],
        "start": context["start"],
        "end": context["end"],
        "language": language,
        "task": context["task"],
        "text": transcripts.join_texts([s["text"] for s in segments], language),
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


def _quantized(network, device: str):
    """``network`` with its linear layers in int8 (weights ahead of time, activations
    per call: PyTorch's dynamic quantisation), in place. CPU only."""
    import warnings

    import torch

    if device != "cpu":
        raise InvalidInput(f"{NAME}: quantize='int8' is for the CPU; on {device} the model runs in float16")
    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # one scale per output channel, as CTranslate2 does: per-tensor scales lose words
        return quantize_dynamic(network, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


@register(NAME)
def transcription(
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    sha256: str | None = None,
    threads: int | None = None,
    max_bytes: int = 50_000_000,
    max_seconds: float = 1800.0,
    max_new_tokens: int | None = None,
    quantize: str = "",
) -> Serving:
    if quantize not in QUANTIZATIONS:
        raise InvalidInput(
            f"{NAME}: quantize={quantize!r}; use 'int8' (linear layers in int8 on the CPU) or '' (none)"
        )
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
        version = located.version
        if quantize:
            network, version = _quantized(network, device), f"{version}+{quantize}"
        generation = network.generation_config
        if getattr(generation, "no_timestamps_token_id", None) is None:
            raise InvalidInput(
                f"{NAME}: {located.path} has no Whisper generation_config.json (no_timestamps_token_id); "
                "add the one of the checkpoint it was trained from"
            )
        extractor = processor.feature_extractor
        return WhisperModel(
            processor=processor,
            network=network,
            device=device,
            dtype=dtype,
            version=version,
            max_seconds=max_seconds,
            max_new_tokens=max_new_tokens,
            rules=whisper_decoding.Rules.of(generation, network.config, device),
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
        title="Transcribe",
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
