"""Shared fixtures: tiny random models, the real weights in ../shared, services.

Tests that need something this machine may lack (``../shared``, Redis,
Chromium) skip with the reason, except under ``CI=true``, where a missing part
is a failure: CI must never go green by skipping.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

TINY_VOCAB = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] i you we it this that the a an is was are be love loved like "
    "hate hated good great bad awful terrible movie film story plot acting not very so and but "
    ". , ! ? ##s ##ed ##ing ##ly"
).split()


def require(condition: bool, reason: str) -> None:
    """Skip when ``condition`` is false; fail instead under CI=true."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)


def build_tiny_sentiment_model(folder: Path) -> Path:
    """A randomly initialised BERT classifier (2 labels) with a tiny vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(TINY_VOCAB)}, model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sentiment_model(tmp_path_factory) -> Path:
    return build_tiny_sentiment_model(tmp_path_factory.mktemp("tiny-sentiment"))


@pytest.fixture(scope="session")
def shared_sentiment_model() -> Path:
    path = SHARED / "models" / "sentiment-minilm-sst2"
    require(path.is_dir(), f"the real sentiment model is not at {path}")
    return path


@pytest.fixture(scope="session")
def sst2_dev() -> list[tuple[str, int]]:
    path = SHARED / "data" / "text" / "sst2_dev.tsv"
    require(path.is_file(), f"the SST-2 dev set is not at {path}")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        sentence, _, label = line.rpartition("\t")
        if label.strip() in ("0", "1"):
            rows.append((sentence, int(label)))
    return rows


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        require(False, f"no Redis at {REDIS_URL} ({exc})")
    return REDIS_URL


# --- Tiny images and a tiny ONNX "U2Net" (background removal) --------------------

BOX = (16, 12, 48, 36)  # the bright square of ``photo()``


def build_tiny_u2net(path: Path, batch: int | None = 1, layout: str = "nhwc", size: int = 320) -> Path:
    """A randomly initialised one-layer "U2Net": 1×1 conv → sigmoid, NHWC or NCHW, batch fixed or dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.uniform(0.5, 1.5, size=(1, 3, 1, 1)).astype(np.float32)  # positive: brighter = subject
    bias = rng.uniform(-0.5, 0.5, size=(1,)).astype(np.float32)
    n = batch if batch else "N"
    nodes = [
        helper.make_node("Conv", ["input", "weight", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probabilities"]),
        helper.make_node("Neg", ["logits"], ["Identity_1"]),  # a side output: using it would invert the mask
    ]
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["probabilities"], ["Identity"], perm=[0, 2, 3, 1]))
        mask_shape = [n, size, size, 1]
    else:
        nodes.append(helper.make_node("Identity", ["probabilities"], ["Identity"]))
        mask_shape = [n, 1, size, size]
    graph = helper.make_graph(
        nodes,
        "tiny_u2net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, size, size])],
        [
            helper.make_tensor_value_info("Identity", TensorProto.FLOAT, mask_shape),
            helper.make_tensor_value_info("Identity_1", TensorProto.FLOAT, [n, 1, size, size]),
        ],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def photo(size=(64, 48), box=BOX, format="PNG", **params) -> bytes:
    """A bright square (the subject) on a dark ground."""
    image = Image.new("RGB", size, (20, 30, 40))
    image.paste((250, 240, 230), box)
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()
