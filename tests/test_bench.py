"""The benchmark's machinery (bench/sentiment.py) on the tiny random model.

Tiny counts and budgets: these tests check that every path runs and that the
JSON has one record per input kind and concurrency with the documented keys.
They never look at the timings themselves.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench import sentiment as bench

PHRASES = [
    "i love this movie",
    "the acting was awful",
    "a great story , but the plot is bad",
    "we hated it",
    "this film is not very good",
    "you loved the acting",
    "it was terrible !",
    "so good and so great",
    "the story is a bad story",
    "i like that film very much",
]
KINDS = ("short", "long")
CONCURRENCY = (1, 3)


@pytest.fixture
def tiny_data(tmp_path):
    path = tmp_path / "phrases.tsv"
    lines = ["sentence\tlabel"] + [f"{p}\t{i % 2}" for i, p in enumerate(PHRASES * 3)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def isolated():
    """The bench sets torch's thread count and a few variables: undo both."""
    import torch

    names = ("TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLSERVICES_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def tiny_args(model, data, out, *extra):
    return [
        "--model", str(model), "--data", str(data), "--out", str(out),
        "--inputs", ",".join(KINDS), "--concurrency", ",".join(map(str, CONCURRENCY)),
        "--threads", "1", "--budget", "0.3", "--warmup", "0.05",
        "--raw-budget", "0.05", "--raw-batch-sizes", "1,4",
        "--wait-quiet", "0", "--retries", "0", *extra,
    ]  # fmt: skip


def check_schema(results: dict, *, with_worker: bool) -> None:
    assert results["benchmark"] == "sentiment"
    assert set(results["raw"]) == set(KINDS)
    for raw in results["raw"].values():
        assert raw["best_batch_size"] in (1, 4)
        assert raw["items_per_s"] > 0
    records = results["records"]
    assert [(r["input"], r["concurrency"]) for r in records] == [(k, c) for k in KINDS for c in CONCURRENCY]
    for r in records:
        assert set(bench.RECORD_KEYS) <= set(r), set(bench.RECORD_KEYS) - set(r)
        for key in ("raw_items_per_s", "inprocess_batched_items_per_s", "inprocess_unbatched_items_per_s"):
            assert isinstance(r[key], (int, float)) and r[key] >= 0, (key, r[key])
        assert r["inprocess_unbatched_mean_batch"] in (1.0, None)  # batching off means batches of one
        assert isinstance(r["batched_over_unbatched"], (float, type(None)))
        if with_worker:
            assert r["worker_completed"] > 0
            assert r["worker_items_per_s"] > 0
            assert 0 < r["worker_p50_ms"] <= r["worker_p99_ms"]
            assert r["worker_over_raw"] > 0
        else:
            assert r["worker_items_per_s"] is None and r["worker_p50_ms"] is None and r["worker_p99_ms"] is None
    json.dumps(results)  # plain JSON all the way down


def test_long_texts_are_cut_at_words_within_the_token_budget(tiny_sentiment_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_sentiment_model)
    texts = bench.make_long(PHRASES * 20, tokenizer, tokens=32)
    assert len(texts) > 5
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert max(lengths) <= 32 and min(lengths) >= 28
    words = set(" ".join(PHRASES).split())
    assert all(set(t.split()) <= words for t in texts)  # no word cut in two


def test_percentile_is_nearest_rank():
    assert bench.percentile([], 50) is None
    assert bench.percentile([5.0], 99) == 5.0
    assert bench.percentile([float(i) for i in range(1, 101)], 50) == 50.0
    assert bench.percentile([float(i) for i in range(1, 101)], 99) == 99.0


def test_bench_in_process_paths_write_the_documented_json(tiny_sentiment_model, tiny_data, tmp_path, isolated):
    out = tmp_path / "results.json"
    assert bench.main(tiny_args(tiny_sentiment_model, tiny_data, out, "--no-worker")) == 0
    check_schema(json.loads(out.read_text()), with_worker=False)


@pytest.mark.redis
@pytest.mark.worker
def test_bench_drives_a_real_worker(tiny_sentiment_model, tiny_data, tmp_path, isolated, redis_url):
    # Its own Redis db: the bench flushes the db it is given.
    parts = urlsplit(redis_url)
    own_db = urlunsplit(parts._replace(path="/13"))
    out = tmp_path / "results.json"
    args = tiny_args(tiny_sentiment_model, tiny_data, out, "--redis-url", own_db, "--worker-concurrency", "4")
    assert bench.main(args) == 0
    results = json.loads(out.read_text())
    check_schema(results, with_worker=True)
    worker = results["settings"]["worker"]
    assert json.loads(worker["MLSERVICES_CONFIG"]) == {"sentiment": {"threads": 1}}
    assert "-P threads" in worker["command"] and "-Q sentiment" in worker["command"]
