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
- ``threads``: torch intra-op threads (default: torch's choice);
- ``batch_size`` (16) and ``batch_timeout_ms`` (0: a batch leaves as soon as
  the model is free; requests that arrive while it is busy form the next one):
  the batcher's.

Texts are bucketed by token length (16, 32, 64, … tokens) so a short text is
never padded to the length of a long one, and each batch is padded only to its
longest member.
"""

from __future__ import annotations

import dataclasses

from ..errors import InvalidInput
from ..model_store import ModelSource, locate
from ..registry import register
from ..serving import Prepared, Serving
from ..spec import InputSpec, Option

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


def length_bucket(n_tokens: int) -> int:
    """The smallest power of two ≥ n_tokens, at least 16: the batch key."""
    bucket = 16
    while bucket < n_tokens:
        bucket *= 2
    return bucket


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
    cut = len(text) > model.max_chars
    encoding = model.tokenizer(text[: model.max_chars], truncation=True, max_length=model.max_length)
    overflow = encoding.encodings[0].overflowing if encoding.encodings else []
    ids = {k: v for k, v in encoding.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return Prepared(
        item=ids,
        context={"truncated": cut or bool(overflow)},
        key=length_bucket(len(ids["input_ids"])),
    )


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


@register("sentiment")
def sentiment(
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    sha256: str | None = None,
    max_length: int | None = None,
    max_chars: int = 20_000,
    threads: int | None = None,
) -> Serving:
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
        warmup=("Warming up the sentiment model.",),
        description="Sentiment of English text (label, score, all label scores).",
        spec=InputSpec(kind="text", renderer="sentiment"),  # the web door bounds the text (MLSERVICES_MAX_TEXT_CHARS)
        validate=checked,
    )
