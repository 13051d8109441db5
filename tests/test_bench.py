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
from tests.test_transcription import tiny_whisper  # noqa: F401 - a fixture of the transcription bench

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
        "--wait-quiet", "0", "--retries", "0", "--alone-rounds", "2", *extra,
    ]  # fmt: skip


def check_websocket(results: dict, *, with_worker: bool) -> None:
    """The site over real websockets: measured at 1 and 3 clients, alone, and its probes."""
    paths = ["ws_inprocess"] + (["ws_worker"] if with_worker else [])
    assert results["settings"]["ws_concurrency"] == [1, 3]
    assert sorted(results["websocket"]["sites"]) == sorted(paths)
    for name in paths:
        site = results["websocket"]["sites"][name]
        assert "webapp.asgi:application" in site["command"]
        assert json.loads(site["MLSERVICES_CONFIG"]) == {"sentiment": {"threads": 1}}
        assert results["websocket"]["probes"][f"{name}_ping"]["p50_ms"] > 0
    assert ("redis_channel_hop" in results["websocket"]["probes"]) == with_worker
    for r in results["records"]:
        for name in ("ws_inprocess", "ws_worker"):
            if name in paths:
                assert r[f"{name}_items_per_s"] > 0 and r[f"{name}_completed"] > 0, (name, r)
                assert 0 < r[f"{name}_p50_ms"] <= r[f"{name}_p99_ms"]
            else:
                assert r[f"{name}_items_per_s"] is None and r[f"{name}_p50_ms"] is None
        if r["concurrency"] == 1:
            assert r["latency_breakdown_ms"]["raw_batch_of_one"] > 0
            assert (r["latency_breakdown_ms"]["websocket_and_site_over_worker"] is not None) == with_worker
    for kind in KINDS:
        alone = results["alone"][kind]
        assert alone["rounds"] == 2
        assert sorted(alone["p50_ms"]) == sorted(["raw", "inprocess_batched", *paths] + (["worker"] if with_worker else []))
        assert all(v > 0 for v in alone["p50_ms"].values())
        assert set(alone["over_raw_ms"]) == set(alone["p50_ms"]) - {"raw"}


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


def test_interleaved_runs_every_path_once_per_round_on_the_same_text():
    seen = []
    calls = {name: (lambda text, name=name: seen.append((name, text))) for name in ("raw", "a", "b")}
    alone = bench.interleaved(calls, ["x", "y"], rounds=3)
    assert seen == [(name, text) for text in ("x", "y", "x") for name in ("raw", "a", "b")]
    assert alone["rounds"] == 3 and sorted(alone["p50_ms"]) == ["a", "b", "raw"]
    assert sorted(alone["over_raw_ms"]) == ["a", "b"]


def test_the_latency_breakdown_is_the_difference_of_the_paths_over_raw():
    alone = {
        "p50_ms": {"raw": 20.0},
        "over_raw_ms": {"inprocess_batched": 0.5, "ws_inprocess": 2.5, "worker": 4.0, "ws_worker": 5.25},
    }
    probes = {"ws_inprocess_ping": {"p50_ms": 0.4}, "redis_channel_hop": {"p50_ms": 0.9}}
    assert bench.latency_breakdown(alone, probes) == {
        "raw_batch_of_one": 20.0,
        "serving_over_raw": 0.5,
        "websocket_and_site_over_serving": 2.0,
        "websocket_round_trip_alone": 0.4,
        "celery_and_reply_over_serving": 3.5,
        "redis_channel_hop_alone": 0.9,
        "websocket_and_site_over_worker": 1.25,
    }
    without_worker = {"p50_ms": {"raw": 20.0}, "over_raw_ms": {"inprocess_batched": 0.5, "ws_inprocess": 2.5}}
    parts = bench.latency_breakdown(without_worker, {})
    assert parts["celery_and_reply_over_serving"] is None and parts["websocket_and_site_over_worker"] is None


def test_bench_in_process_paths_write_the_documented_json(tiny_sentiment_model, tiny_data, tmp_path, isolated):
    out = tmp_path / "results.json"
    assert bench.main(tiny_args(tiny_sentiment_model, tiny_data, out, "--no-worker")) == 0
    results = json.loads(out.read_text())
    check_schema(results, with_worker=False)
    check_websocket(results, with_worker=False)


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
    check_websocket(results, with_worker=True)
    worker = results["settings"]["worker"]
    assert json.loads(worker["MLSERVICES_CONFIG"]) == {"sentiment": {"threads": 1}}
    assert "-P threads" in worker["command"] and "-Q sentiment" in worker["command"]


# --- bench/background_removal.py on the tiny random "U2Net" of tests/conftest.py ----------------------


@pytest.fixture
def tiny_photos(tmp_path):
    from tests.conftest import photo

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(photo())
    (folder / "b.jpg").write_bytes(photo(size=(80, 60), box=(10, 10, 50, 40), format="JPEG"))
    (folder / "c.png").write_bytes(photo(size=(40, 64), box=(5, 20, 35, 60)))
    (folder / "notes.txt").write_text("not a photo: skipped by its name")
    return folder


@pytest.fixture
def bg_isolated():
    """The bench sets a few variables (rembg's among them): undo them."""
    names = ("OMP_NUM_THREADS", "MLSERVICES_OFFLINE", "U2NET_HOME", "MODEL_CHECKSUM_DISABLED")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_background_removal_bench_in_process_paths_write_the_documented_json(tmp_path, tiny_photos, bg_isolated):
    import importlib.util

    from bench import background_removal as bg
    from tests.conftest import build_tiny_u2net

    model = build_tiny_u2net(tmp_path / "tiny-u2net.onnx")
    out = tmp_path / "results.json"
    args = [
        "--model", str(model), "--images", str(tiny_photos), "--out", str(out), "--no-worker",
        "--concurrency", "1,2", "--threads", "1", "--budget", "0.3", "--warmup", "0.05",
        "--wait-quiet", "0", "--retries", "0",
    ]  # fmt: skip
    assert bg.main(args) == 0
    results = json.loads(out.read_text())
    assert results["benchmark"] == "background_removal"
    assert sorted(results["inputs"]) == ["a.png", "b.jpg", "c.png"]
    assert results["settings"]["threads"] == 1 and results["settings"]["worker"] is None
    with_rembg = importlib.util.find_spec("rembg") is not None  # the `bench` extra
    records = results["records"]
    assert [(r["serving"], r["concurrency"]) for r in records] == [("background_removal", 1), ("background_removal", 2)]
    for r in records:
        assert set(bg.RECORD_KEYS) <= set(r), set(bg.RECORD_KEYS) - set(r)
        for path in ("raw", "inprocess") + (("rembg",) if with_rembg else ()):
            assert r[f"{path}_items_per_s"] > 0 and r[f"{path}_completed"] > 0, path
        assert r["inprocess_over_raw"] > 0
        assert r["worker_items_per_s"] is None and r["worker_over_raw"] is None
        assert (r["inprocess_over_rembg"] is not None) == with_rembg
    if with_rembg:  # the same model file both ways: the masks agree
        iou = results["mask_iou"]
        assert sorted(iou["per_photo"]) == ["a.png", "b.jpg", "c.png"]
        assert 0.9 <= iou["min"] <= iou["mean"] <= 1.0
        assert results["settings"]["rembg"]["version"]
    json.dumps(results)


def test_the_nchw_copy_for_rembg_transposes_the_first_output_only(tmp_path):
    import numpy as np
    import onnxruntime

    from bench.background_removal import nchw_copy
    from tests.conftest import build_tiny_u2net

    nhwc = build_tiny_u2net(tmp_path / "nhwc.onnx")
    copy = nchw_copy(nhwc, tmp_path / "home" / "u2netp.onnx")
    x = np.random.default_rng(0).normal(size=(1, 3, 320, 320)).astype(np.float32)
    before = onnxruntime.InferenceSession(str(nhwc)).run(None, {"input": x})
    after = onnxruntime.InferenceSession(str(copy)).run(None, {"input": x})
    assert before[0].shape == (1, 320, 320, 1) and after[0].shape == (1, 1, 320, 320)
    assert np.array_equal(after[0], before[0].transpose(0, 3, 1, 2))
    assert np.array_equal(after[1], before[1])
    nchw = build_tiny_u2net(tmp_path / "nchw.onnx", layout="nchw")  # already NCHW: copied as is
    assert nchw_copy(nchw, tmp_path / "nchw-copy.onnx").read_bytes() == nchw.read_bytes()


# --- bench/transcription.py on the random whisper-tiny of tests/test_transcription.py ------------------

@pytest.fixture
def tiny_speech(tmp_path):
    """A folder like ../shared/data/audio/speech: a manifest, two short clips and a long one."""
    from tests.test_audio import speech_like
    from tests.test_transcription import wav

    folder = tmp_path / "speech"
    folder.mkdir()
    clips = {"a.wav": 3.0, "b.wav": 5.0, "long.wav": 40.0}
    lines = ["file\tlanguage\tduration_s\treference"]
    for i, (name, seconds) in enumerate(clips.items()):
        (folder / name).write_bytes(wav(speech_like(seconds, [(20.0, 20.3)], seed=i)))
        lines.append(f"{name}\ten\t{seconds}\tsome words here")
    (folder / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_transcription_bench_in_process_paths_write_the_documented_json(tiny_whisper, tiny_speech, tmp_path, isolated):
    from bench import transcription as tb

    out = tmp_path / "results.json"
    paths = ["inprocess_batched", "inprocess_unbatched", "inprocess_batched_int8"]
    args = [
        "--model", str(tiny_whisper), "--speech", str(tiny_speech), "--long", str(tiny_speech / "long.wav"),
        "--jfk", "", "--paths", ",".join(paths), "--threads", "1", "--budget", "0.1",
        "--serving-options", '{"max_new_tokens": 3}', "--wait-quiet", "0", "--retries", "0", "--out", str(out),
    ]  # fmt: skip
    assert tb.main(args) == 0
    results = json.loads(out.read_text())
    assert results["benchmark"] == "transcription" and results["skipped"] == []
    assert results["inputs"]["long"] == {"file": "long.wav", "seconds": 40.0}
    assert [c["file"] for c in results["inputs"]["short"]] == ["a.wav", "b.wav"]
    assert results["settings"]["threads"] == 1 and results["settings"]["paths"] == paths
    records = results["records"]
    assert [r["path"] for r in records] == paths
    for r in records:
        assert set(tb.RECORD_KEYS) <= set(r), set(tb.RECORD_KEYS) - set(r)
        assert r["long_rtf"] > 0 and r["short8_rtf"] > 0 and r["long_runs"] >= 1 and r["short8_rounds"] >= 1
        assert 0 <= r["wer_short"] and 0 <= r["wer_long"]  # random weights: nonsense, but scored
        assert r["settings"]["serving_options"]["max_new_tokens"] == 3
    assert records[1]["mean_batch"] == 1.0  # batching off means batches of one
    assert records[0]["mean_batch"] > 1.0  # the long recording's two windows, the short clips together
    assert records[2]["settings"]["serving_options"]["quantize"] == "int8"
    ratios = results["ratios"]
    assert set(tb.RATIOS) <= set(ratios)
    assert ratios["batched_over_unbatched_long"] > 0 and ratios["ours_int8_over_ours_long"] > 0
    assert ratios["ours_over_faster_whisper_batched_long"] is None  # not measured in this run
    json.dumps(results)
