"""Text embeddings: a Hugging Face encoder, mean-pooled, L2-normalised, batched.

The worked example of docs/servings.md: one module is the whole serving.

Input: a string, or ``{"text": str, "normalize": bool}``. Output::

    {"dimensions": 384, "embedding": [0.043212, -0.012875, ...],
     "model": "sentence-transformers/all-MiniLM-L6-v2@c9745ed", "truncated": False}

The embedding is the mean of the encoder's last hidden states over the text's
tokens (the attention mask leaves padding out), scaled to length 1 unless
``normalize`` is false; the cosine similarity of two texts is then the dot
product of their embeddings.

Options (``build("embeddings", ...)`` or settings, e.g. ``EMBEDDINGS_MODEL``)
and defaults:

- ``model``: a local folder (a model version from the store is one) or a Hub id
  (default ``sentence-transformers/all-MiniLM-L6-v2``, 384 dimensions);
- ``revision``: the pinned Hub commit (default ``c9745ed…``, the snapshot of the
  default model that ships ``model.safetensors``; any other Hub id pins its own);
- ``sha256``: pin the weights' hash (default: the Hub's, recorded on download);
- ``max_length``: tokens the model sees (default: ``max_seq_length`` of the
  folder's ``sentence_bert_config.json``, else the model's own limit); longer
  text is cut and the result says ``truncated: True``;
- ``max_chars``: characters looked at before tokenising (default 20,000);
- ``batch_size`` (32) and ``batch_timeout_ms`` (0): the batcher's.

Texts are batched in token-length buckets (``mlservices.tokens.length_bucket``: 16,
32, 64, … tokens), so a short text is never padded to a long one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from ..errors import InvalidInput, ServingFailed
from ..model_store import ModelSource, locate
from ..registry import register
from ..serving import Prepared, Serving
from ..spec import InputSpec, Option
from ..tokens import set_torch_threads, tokenized

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
INSTALL_HINT = (
    "Install it with `python -m mlservices download embeddings` on a machine that reaches huggingface.co, "
    "import a local copy with `python manage.py models import embeddings PATH --version NAME`, "
    "or point EMBEDDINGS_MODEL at a local model folder (safetensors weights)."
)
ROUND = 6  # decimals of each number of an embedding

# Ranges of the factory options (checked when the serving is built).
SETTINGS = (
    Option("max_length", int, None, "tokens the model sees", minimum=1),
    Option("max_chars", int, 20_000, "characters looked at before tokenising", minimum=1),
)
SPEC = InputSpec(
    kind="text",
    options=(Option("normalize", bool, True, "scale the embedding to length 1 (for cosine similarity)"),),
)


@dataclasses.dataclass
class EmbeddingsModel:
    tokenizer: object
    network: object
    device: str
    version: str
    max_length: int
    max_chars: int


def checked(input: dict) -> dict:
    """The door's check (``Serving.validate``): the spec has typed the input; refuse empty text."""
    if not input["text"].strip():
        raise InvalidInput("embeddings: the text is empty; send the text to embed")
    return input


def preprocess(model: EmbeddingsModel, input: dict) -> Prepared:
    ids, truncated, key = tokenized(model.tokenizer, input["text"], model.max_chars, model.max_length)
    return Prepared(item=ids, context={"truncated": truncated, "normalize": input["normalize"]}, key=key)


def inference(model: EmbeddingsModel, items: list) -> list[list[float]]:
    """The mean of the last hidden states over each text's own tokens (padding masked out)."""
    import torch

    batch = model.tokenizer.pad(items, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        hidden = model.network(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return pooled.cpu().tolist()


def postprocess(model: EmbeddingsModel, vector: list[float], context: dict) -> dict:
    if context["normalize"]:
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
    return {
        "dimensions": len(vector),
        "embedding": [round(v, ROUND) for v in vector],
        "model": model.version,
        "truncated": context["truncated"],
    }


def check_result(result) -> None:
    """What a new model version's smoke outputs must look like (``models validate``)."""
    if not isinstance(result, dict) or not {"dimensions", "embedding", "model", "truncated"} <= set(result):
        raise ServingFailed(f"embeddings: the result {str(result)[:200]} lacks dimensions, embedding, model or truncated")
    vector = result["embedding"]
    if not isinstance(vector, list) or not vector or len(vector) != result["dimensions"]:
        raise ServingFailed(f"embeddings: dimensions={result['dimensions']!r} but the embedding holds "
                            f"{len(vector) if isinstance(vector, list) else vector!r} numbers")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vector):
        raise ServingFailed("embeddings: the embedding holds a NaN, an infinity or a non-number")
    if not any(vector):
        raise ServingFailed("embeddings: the embedding is all zeros")


def model_length_limit(folder: Path, tokenizer, config) -> int:
    """``max_seq_length`` of a sentence-transformers folder, else the tokenizer's and the model's own limit."""
    limit = min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", 512))
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        limit = min(limit, int(json.loads(sbert.read_text()).get("max_seq_length", limit)))
    return limit


@register("embeddings")
def embeddings(
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    sha256: str | None = None,
    max_length: int | None = None,
    max_chars: int = 20_000,
) -> Serving:
    max_length, max_chars = (setting.coerce("embeddings", v) for setting, v in zip(SETTINGS, (max_length, max_chars)))
    if model == DEFAULT_MODEL and revision is None:
        revision = DEFAULT_REVISION
    source = ModelSource(
        model, revision=revision, sha256=sha256, install_hint=INSTALL_HINT,
        files=("*.json", "vocab.txt", "model.safetensors"),  # not the Hub repo's ONNX/OpenVINO copies
    )

    def load(device: str) -> EmbeddingsModel:
        located = locate(source)
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(located.path)
        if not tokenizer.is_fast:
            raise InvalidInput(f"embeddings: {located.path} has no fast tokenizer (tokenizer.json); add one")
        network = AutoModel.from_pretrained(located.path, use_safetensors=True, trust_remote_code=False)
        network.to(device).eval()
        limit = model_length_limit(located.path, tokenizer, network.config)
        return EmbeddingsModel(
            tokenizer=tokenizer,
            network=network,
            device=device,
            version=located.version,
            max_length=min(max_length or limit, limit),
            max_chars=max_chars,
        )

    return Serving(
        name="embeddings",
        title="Embed text",
        description="Text embeddings: one vector per text (mean-pooled encoder states, unit length).",
        load=load,
        preprocess=preprocess,
        inference=inference,
        postprocess=postprocess,
        spec=SPEC,
        validate=checked,
        batch_size=32,
        batch_timeout_ms=0.0,
        set_threads=set_torch_threads,  # on a CPU the batcher shares the cores out batch by batch
        warmup=("Warming up the embeddings model.",),
        smoke=("The quick brown fox jumps over the lazy dog.", {"text": "A second sentence.", "normalize": False}),
        check_result=check_result,
    )
