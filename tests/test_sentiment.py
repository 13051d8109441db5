"""The sentiment serving on a tiny random BERT, and on the real model when present."""

from __future__ import annotations

import pytest

import mlservices
from mlservices import InvalidInput, ModelNotInstalled, Runtime
from mlservices.servings.sentiment import read_text
from mlservices.tokens import length_bucket

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
        ("ok \ud800 no", r"lone surrogate \(U\+D800\) at character 4, which is not valid Unicode"),
        ({"text": "fine\udcff"}, r"lone surrogate \(U\+DCFF\) at character 5"),
        ("nul\x00here", r"NUL character \(U\+0000\) at character 4; remove it"),
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


@pytest.mark.parametrize(
    "option, message",
    [
        ({"max_chars": -1}, "option max_chars=-1: use 1 or more"),
        ({"max_chars": 0}, "option max_chars=0: use 1 or more"),
        ({"threads": 0}, "option threads=0: use 1 or more"),
        ({"max_length": 0}, "option max_length=0: use 1 or more"),
        ({"max_length": "long"}, "option max_length='long': send a"),
    ],
)
def test_factory_options_are_range_checked_when_built(option, message):
    with pytest.raises(InvalidInput, match=message):
        mlservices.build("sentiment", **option)


def test_read_text_accepts_paired_surrogates_as_one_character():
    assert read_text("emoji \U0001F600 ok") == "emoji \U0001F600 ok"


def test_unknown_option_is_refused_with_the_known_ones():
    with pytest.raises(InvalidInput, match="unknown option.*colour.*known options: model, revision"):
        mlservices.build("sentiment", colour="blue")


# --- the real model (../shared) --------------------------------------------


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
