"""The sentiment serving on a tiny random BERT, and on the real model when present."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlservices
from mlservices import InvalidInput, ModelNotInstalled, Runtime
from mlservices.servings.sentiment import length_bucket, read_text
from tests.conftest import ROOT

mlservices.discover()


@pytest.fixture(scope="module")
def tiny(tiny_sentiment_model):
    runtime = Runtime({"sentiment": {"model": str(tiny_sentiment_model), "batch_timeout_ms": 1}}, device="cpu")
    yield runtime
    runtime.close()


# --- pure pieces ----------------------------------------------------------


@pytest.mark.parametrize("tokens, bucket", [(1, 16), (16, 16), (17, 32), (100, 128), (512, 512)])
def test_length_bucket(tokens, bucket):
    assert length_bucket(tokens) == bucket


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        (42, "the input is int"),
        ({"text": "hi", "lang": "en"}, "unknown input field"),
        ({"txt": "hi"}, "unknown input field"),
    ],
)
def test_read_text_refuses_with_the_fix(bad, message):
    with pytest.raises(InvalidInput, match=message):
        read_text(bad)


def test_read_text_accepts_a_string_or_an_object():
    assert read_text("hi") == "hi"
    assert read_text({"text": "hi"}) == "hi"


# --- on the tiny model ----------------------------------------------------


def test_result_has_label_score_scores_model(tiny):
    result = tiny.run("sentiment", "i love this movie")
    assert set(result) == {"label", "score", "scores", "model", "truncated"}
    assert result["label"] in ("NEGATIVE", "POSITIVE")
    assert result["score"] == max(result["scores"].values())
    assert sum(result["scores"].values()) == pytest.approx(1, abs=1e-3)
    assert result["model"].endswith(tuple("0123456789abcdef")) and "@sha256:" in result["model"]
    assert result["truncated"] is False


def test_long_text_is_truncated_and_says_so(tiny):
    assert tiny.run("sentiment", "good " * 500)["truncated"] is True


def test_enormous_text_is_cut_before_tokenising(tiny):
    loaded = tiny.serving("sentiment")
    (prepared,), _ = loaded.prepare("bad " * 1_000_000)  # 4 MB
    assert len(prepared.item["input_ids"]) == loaded.model.max_length
    assert prepared.context == {"truncated": True}


def test_short_and_long_texts_get_different_batch_keys(tiny):
    loaded = tiny.serving("sentiment")
    assert loaded.prepare("i love it")[0][0].key == 16
    assert loaded.prepare("the movie was good and " * 5)[0][0].key == 32


def test_batched_padding_changes_no_result(tiny):
    """Dynamic padding: a text scored alone or beside a longer one scores the same."""
    loaded = tiny.serving("sentiment")
    texts = ["i love it", "this movie was not very good but the acting was great"]
    alone = [loaded.run(t)["scores"] for t in texts]
    items = [loaded.prepare(t)[0][0].item for t in texts]
    together = loaded.infer(items)
    for single, row in zip(alone, together):
        assert [round(p, 4) for p in row] == pytest.approx(list(single.values()), abs=2e-4)


def test_empty_text_fails_with_a_clear_error(tiny):
    with pytest.raises(InvalidInput, match="the text is empty"):
        tiny.batched_run("sentiment", "  ")


def test_missing_model_says_how_to_install(tmp_path):
    runtime = Runtime({"sentiment": {"model": str(tmp_path / "nowhere")}}, device="cpu")
    with pytest.raises(ModelNotInstalled, match="python -m mlservices download sentiment"):
        runtime.run("sentiment", "hi")


def test_unknown_option_is_refused_with_the_known_ones():
    with pytest.raises(InvalidInput, match="unknown option.*colour.*known options: model, revision"):
        mlservices.build("sentiment", colour="blue")


# --- the command line -----------------------------------------------------


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlservices", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "MLSERVICES_OFFLINE": "1", "HOME": str(ROOT)},
    )


def test_cli_text_prints_one_json_object(tiny_sentiment_model):
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--text", "i love it")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) >= {"label", "score", "scores", "model"}


def test_cli_input_file_prints_one_line_per_input_in_order(tiny_sentiment_model, tmp_path):
    texts = ["i love it", "", "the plot was awful", "good"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--input", str(tmp_path / "in.txt"))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 4
    assert "label" in lines[0] and "label" in lines[2] and "label" in lines[3]
    assert lines[1]["code"] == "invalid_input"
    assert done.returncode == 1
    assert done.stderr.strip() == "error: 1 of 4 inputs failed (see their lines)"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "sentiment", "--model", "/nonexistent/model", "--text", "hi"], "does not exist"),
        (["run", "sentiment", "--text", "hi"], "downloads are off"),
        (["run", "sentimant", "--text", "hi"], "no serving named 'sentimant'; known servings: sentiment"),
        (["run", "sentiment", "-o", "colour=blue", "--text", "hi"], "unknown option"),
        (["run", "sentiment", "--input", "/nonexistent.txt"], "No such file"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args, message):
    done = cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert message in done.stderr


# --- the real model (../shared) --------------------------------------------


@pytest.mark.shared
def test_real_model_cli_says_positive(shared_sentiment_model):
    done = cli("run", "sentiment", "--model", str(shared_sentiment_model), "--text", "I love it")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "POSITIVE"


@pytest.mark.shared
def test_real_model_accuracy_on_sst2_dev_is_at_least_085(shared_sentiment_model, sst2_dev):
    runtime = Runtime({"sentiment": {"model": str(shared_sentiment_model)}}, device="cpu")
    loaded = runtime.serving("sentiment")
    batcher = runtime.batcher("sentiment")
    prepared = [loaded.prepare(sentence)[0][0] for sentence, _ in sst2_dev]
    futures = [batcher.submit(p.item, p.key) for p in prepared]
    labels = [loaded.finish(f.result(120), p.context)["label"] for f, p in zip(futures, prepared)]
    correct = sum((label == "POSITIVE") == bool(gold) for label, (_, gold) in zip(labels, sst2_dev))
    runtime.close()
    assert len(sst2_dev) == 400
    assert correct / len(sst2_dev) >= 0.85
    assert max(r.size for r in batcher.records()) > 1  # it really batched
