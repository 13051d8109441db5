"""Sentiment of English text: a Hugging Face sequence classifier, batched.

Input: a string, or ``{"text": str}``. Output::

    {"label": "POSITIVE", "score": 0.9954,
     "scores": {"NEGATIVE": 0.0046, "POSITIVE": 0.9954},
     "model": "sentiment-minilm-sst2@sha256:8924fb9c2cef", "truncated": False}

Options (``build("sentiment", ...)`` or settings) and defaults:

- ``model``: a local folder or a Hub id
  (default ``distilbert/distilbert-base-uncased-finetuned-sst-2-english``);
- ``revision``: the pinned Hub commit (default: ``714eb0f…`` for the default model;
  any other Hub id must pin its own);
- ``sha256``: pin the weights' hash (default: the Hub's, recorded on download);
- ``max_length``: tokens the model sees (default: the model's own limit);
  longer text is cut and the result says ``truncated: True``;
- ``max_chars``: characters looked at before tokenising (default 20,000), so
  enormous text costs no more than long text;
- ``threads``: torch intra-op threads of a batch that runs alone (default: the
  CPUs); on a CPU the batcher shares them out batch by batch (``set_threads``:
  a request alone gets them all, batches ready together run at once on a
  share each; ``mlservices.batcher``);
- ``validation_set``: a labelled TSV (``sentence<TAB>label``, 1 = positive, a
  header line allowed) whose accuracy a new model version's validation reports
  (default: ``$SENTIMENT_VALIDATION_SET``; none: no quality figure);
- ``batch_size`` (16) and ``batch_timeout_ms`` (0: a batch leaves as soon as
  the model is free; requests that arrive while it is busy form the next one):
  the batcher's.

Texts are bucketed by token length (16, 32, 64, … tokens) so a short text is
never padded to the length of a long one, and each batch is padded only to its
longest member.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from ..errors import InvalidInput, ServingFailed
from ..model_store import ModelSource, locate
from ..registry import register
from ..serving import Prepared, Serving
from ..spec import InputSpec, Option
from ..tokens import set_torch_threads, tokenized

DEFAULT_MODEL = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
DEFAULT_REVISION = "714eb0fa89d2f80546fda750413ed43d93601a13"
INSTALL_HINT = (
    "Install it with `python -m mlservices download sentiment` on a machine that reaches "
    "huggingface.co, or point SENTIMENT_MODEL at a local model folder "
    "(e.g. SENTIMENT_MODEL=../shared/models/sentiment-minilm-sst2)."
)


# Ranges of the factory options (checked when the serving is built).
SETTINGS = (
    Option("max_length", int, None, "tokens the model sees", minimum=1),
    Option("max_chars", int, 20_000, "characters looked at before tokenising", minimum=1),
    Option("threads", int, None, "torch intra-op threads", minimum=1, maximum=1024),
)


@dataclasses.dataclass
class SentimentModel:
    tokenizer: object
    network: object
    device: str
    version: str
    max_length: int
    max_chars: int
    labels: list[str]


def checked(input) -> dict:
    """The door's check (``Serving.validate``): the input as ``{"text": str}``."""
    return {"text": read_text(input)}


def read_text(input) -> str:
    if isinstance(input, dict):
        unknown = sorted(set(input) - {"text"})
        if unknown:
            raise InvalidInput(f"sentiment: unknown input field(s) {', '.join(unknown)}; send {{\"text\": \"...\"}}")
        input = input.get("text")
    if not isinstance(input, str):
        raise InvalidInput(f"sentiment: the input is {type(input).__name__}; send a string of text")
    if not input.strip():
        raise InvalidInput("sentiment: the text is empty; type a sentence to analyse")
    try:
        input.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"sentiment: the text holds a lone surrogate (U+{ord(input[exc.start]):04X}) at character "
            f"{exc.start + 1}, which is not valid Unicode; send UTF-8 text (a file saved as UTF-8, "
            "a JSON string without unpaired \\ud800-\\udfff escapes)"
        ) from None
    if "\x00" in input:
        raise InvalidInput(
            f"sentiment: the text holds a NUL character (U+0000) at character {input.index(chr(0)) + 1}; "
            "remove it and send plain text"
        )
    return input


def preprocess(model: SentimentModel, input) -> Prepared:
    text = read_text(input)
    ids, truncated, key = tokenized(model.tokenizer, text, model.max_chars, model.max_length)
    return Prepared(item=ids, context={"truncated": truncated}, key=key)


def inference(model: SentimentModel, items: list) -> list:
    import torch

    batch = model.tokenizer.pad(items, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        probabilities = model.network(**batch).logits.float().softmax(dim=-1)
    return probabilities.cpu().tolist()


def postprocess(model: SentimentModel, probabilities: list[float], context: dict) -> dict:
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return {
        "label": model.labels[best],
        "score": round(probabilities[best], 4),
        "scores": {label: round(p, 4) for label, p in zip(model.labels, probabilities)},
        "model": model.version,
        "truncated": context["truncated"],
    }


SMOKE = (
    "I loved this movie; the acting was wonderful.",
    "A dull, painfully boring film.",
    {"text": "not bad at all"},
)
EVALUATION_BATCH = 32


def check_result(result) -> None:
    """A new version's result must be a label with a score, scores over the labels that sum to 1."""
    if not isinstance(result, dict) or not {"label", "score", "scores", "model", "truncated"} <= set(result):
        raise ServingFailed(f"sentiment: malformed result {str(result)[:200]}; expected label, score, scores, model, truncated")
    scores = result["scores"]
    if not isinstance(scores, dict) or not scores or not all(
        isinstance(p, (int, float)) and math.isfinite(p) and 0 <= p <= 1 for p in scores.values()
    ):
        raise ServingFailed(f"sentiment: scores {str(scores)[:200]} are not probabilities between 0 and 1")
    if abs(sum(scores.values()) - 1) > 0.01 * len(scores):
        raise ServingFailed(f"sentiment: scores sum to {sum(scores.values()):.4f}, not 1")
    if result["label"] not in scores or result["score"] != max(scores.values()):
        raise ServingFailed(f"sentiment: label {result['label']!r} is not the best-scored of {sorted(scores)}")


def read_labelled(path: Path) -> list[tuple[str, int]]:
    """The (sentence, label) rows of a ``sentence<TAB>label`` file; a header line is skipped."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        sentence, _, label = line.rpartition("\t")
        if label.strip() in ("0", "1") and sentence.strip():
            rows.append((sentence, int(label)))
        elif number > 1 and line.strip():
            raise InvalidInput(f"sentiment: {path} line {number} is not 'sentence<TAB>0|1'; fix or remove it")
    if not rows:
        raise InvalidInput(f"sentiment: {path} holds no labelled rows ('sentence<TAB>0|1')")
    return rows


def evaluator(path: Path):
    """``Serving.evaluate``: accuracy on the labelled file at ``path`` (label 1 = the POSITIVE label)."""

    def evaluate(loaded) -> dict:
        rows = read_labelled(path)
        labels = [label.upper() for label in loaded.model.labels]
        positive = labels.index("POSITIVE") if "POSITIVE" in labels else len(labels) - 1
        correct = 0
        for start in range(0, len(rows), EVALUATION_BATCH):
            chunk = rows[start : start + EVALUATION_BATCH]
            items = [preprocess(loaded.model, sentence).item for sentence, _ in chunk]
            for probabilities, (_, label) in zip(loaded.infer(items), chunk):
                predicted = max(range(len(probabilities)), key=probabilities.__getitem__)
                correct += (predicted == positive) == bool(label)
        return {"accuracy": round(correct / len(rows), 4), "examples": len(rows)}

    return evaluate


@register("sentiment")
def sentiment(
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    sha256: str | None = None,
    max_length: int | None = None,
    max_chars: int = 20_000,
    threads: int | None = None,
    validation_set: str | None = None,
) -> Serving:
    validation_set = validation_set or os.environ.get("SENTIMENT_VALIDATION_SET") or None
    max_length, max_chars, threads = (
        setting.coerce("sentiment", value) for setting, value in zip(SETTINGS, (max_length, max_chars, threads))
    )
    if model == DEFAULT_MODEL and revision is None:
        revision = DEFAULT_REVISION
    source = ModelSource(model, revision=revision, sha256=sha256, install_hint=INSTALL_HINT)

    def load(device: str) -> SentimentModel:
        located = locate(source)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        tokenizer = AutoTokenizer.from_pretrained(located.path)
        if not tokenizer.is_fast:
            raise InvalidInput(f"sentiment: {located.path} has no fast tokenizer (tokenizer.json); add one")
        network = AutoModelForSequenceClassification.from_pretrained(
            located.path, use_safetensors=True, trust_remote_code=False
        )
        network.to(device).eval()
        config = network.config
        limit = min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))
        return SentimentModel(
            tokenizer=tokenizer,
            network=network,
            device=device,
            version=located.version,
            max_length=min(max_length or limit, limit),
            max_chars=max_chars,
            labels=[config.id2label[i] for i in range(config.num_labels)],
        )

    return Serving(
        name="sentiment",
        load=load,
        preprocess=preprocess,
        inference=inference,
        postprocess=postprocess,
        batch_size=16,
        batch_timeout_ms=0.0,
        threads=threads,
        set_threads=set_torch_threads,
        warmup=("Warming up the sentiment model.",),
        description="Sentiment of English text (label, score, all label scores).",
        spec=InputSpec(kind="text", renderer="sentiment"),  # the web door bounds the text (MLSERVICES_MAX_TEXT_CHARS)
        validate=checked,
        smoke=SMOKE,
        check_result=check_result,
        evaluate=evaluator(Path(validation_set).expanduser()) if validation_set else None,
    )
