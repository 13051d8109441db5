"""The embeddings serving (the worked example of docs/servings.md) on a tiny random BERT.

The model is built here: a randomly initialised ``BertModel`` (hidden 32, 2
layers) with a real WordPiece tokenizer made from a tiny vocabulary file. The
real code runs on it: the stages, the batcher, the REST API of the in-process
site, the CLI, and the generic page in a real Chromium.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.test import Client

import mlservices
from mlservices import InvalidInput, ModelNotInstalled, Runtime, ServingFailed
from mlservices.servings import embeddings
from tests.conftest import ROOT, TINY_VOCAB
from tests.live_server import asgi_server, base_env, live_database, wait_until
from tests.test_browser import (  # noqa: F401  (fixtures)
    RESULT_TIMEOUT_MS,
    Site,
    console,
    open_page,
    page,
    playwright_browser,
    server_log_on_failure,
)

mlservices.discover()
HIDDEN = 32


def build_tiny_encoder(folder: Path) -> Path:
    """A random ``BertModel`` (no head) and a WordPiece tokenizer from a vocab file, saved as safetensors."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(TINY_VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="module")
def runtime(tiny_encoder):
    runtime = Runtime({"embeddings": {"model": str(tiny_encoder), "batch_timeout_ms": 1}}, device="cpu")
    yield runtime
    runtime.close()


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


# --- the stages ------------------------------------------------------------------------


def test_a_text_gives_a_unit_vector_with_its_size_and_model(runtime, tiny_encoder):
    result = runtime.run("embeddings", "i love this movie")
    assert set(result) == {"dimensions", "embedding", "model", "truncated"}
    assert result["dimensions"] == HIDDEN == len(result["embedding"])
    assert norm(result["embedding"]) == pytest.approx(1, abs=1e-5)
    assert all(round(v, 6) == v for v in result["embedding"])
    assert result["model"].startswith(f"{tiny_encoder.name}@sha256:") and result["truncated"] is False
    assert runtime.run("embeddings", {"text": "i love this movie"}) == result  # the object form is the same


def test_normalize_false_gives_the_mean_pooled_vector_itself(runtime):
    raw = runtime.run("embeddings", {"text": "a good film", "normalize": False})["embedding"]
    unit = runtime.run("embeddings", "a good film")["embedding"]
    assert norm(raw) != pytest.approx(1, abs=1e-3)
    assert [v / norm(raw) for v in raw] == pytest.approx(unit, abs=1e-5)


def test_the_vector_is_the_mean_of_the_hidden_states_over_the_tokens(runtime):
    import torch

    loaded = runtime.serving("embeddings")
    model = loaded.model
    encoded = model.tokenizer("the plot was bad", return_tensors="pt")
    with torch.inference_mode():
        expected = model.network(**encoded).last_hidden_state[0].mean(dim=0).tolist()
    (prepared,), _ = loaded.prepare({"text": "the plot was bad", "normalize": False})
    assert loaded.infer([prepared.item])[0] == pytest.approx(expected, abs=1e-5)


def test_preprocess_keys_by_length_bucket_and_keeps_the_options_beside_the_batch(runtime):
    loaded = runtime.serving("embeddings")
    (short,), _ = loaded.prepare("good")
    (long,), _ = loaded.prepare({"text": " ".join(["good"] * 40), "normalize": False})
    assert short.key == 16 and long.key == 64
    assert short.context == {"truncated": False, "normalize": True}
    assert long.context == {"truncated": False, "normalize": False}
    assert set(short.item) >= {"input_ids", "attention_mask"}


def test_a_text_longer_than_the_model_reads_is_truncated_and_says_so(runtime):
    result = runtime.run("embeddings", " ".join(["movie"] * 200))
    assert result["truncated"] is True and result["dimensions"] == HIDDEN


def test_texts_batched_together_give_the_vectors_they_give_alone(tiny_encoder):
    """A batch of two (the shorter one padded) equals each text alone, within 1e-5.

    The batch waits until it holds two items (a timeout far longer than the test),
    so both texts are certainly in one batch; the records say so."""
    texts = ["i love it", "the acting was very very good but the story was bad"]
    alone_runtime = Runtime({"embeddings": {"model": str(tiny_encoder)}}, device="cpu")
    together = Runtime(
        {"embeddings": {"model": str(tiny_encoder), "batch_size": 2, "batch_timeout_ms": 600_000}}, device="cpu"
    )
    try:
        alone = [alone_runtime.run("embeddings", {"text": t, "normalize": False})["embedding"] for t in texts]
        together.serving("embeddings")
        results: dict[int, dict] = {}
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(
                i, together.batched_run("embeddings", {"text": texts[i], "normalize": False}, timeout=60)))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(results) == [0, 1]
        assert [r.size for r in together.batcher("embeddings").records()] == [2]
        for i in range(2):
            assert results[i]["embedding"] == pytest.approx(alone[i], abs=1e-5)
    finally:
        alone_runtime.close()
        together.close()


@pytest.mark.parametrize(
    "bad, message",
    [
        ("   ", "embeddings: the text is empty"),
        ({"text": "hi", "normalise": True}, "unknown input field.*known: text, normalize"),
        ({"text": "hi", "normalize": "perhaps"}, "option normalize='perhaps': send a boolean"),
        (42, "send {\"text\": \"...\"} or a plain string"),
    ],
)
def test_bad_input_is_refused_at_the_door_with_the_fix(bad, message):
    serving = mlservices.build("embeddings", model="/nonexistent")  # no model needed: the door loads nothing
    with pytest.raises(InvalidInput, match=message):
        serving.check(bad)


def test_the_smoke_inputs_pass_check_result(runtime):
    serving = runtime.definition("embeddings")
    assert len(serving.smoke) == 2
    for sample in serving.smoke:
        serving.check_result(runtime.run("embeddings", sample))


@pytest.mark.parametrize(
    "result, message",
    [
        ({"embedding": [1.0]}, "lacks dimensions"),
        ({"dimensions": 3, "embedding": [0.1, 0.2], "model": "m", "truncated": False}, "dimensions=3 but"),
        ({"dimensions": 2, "embedding": [0.1, float("nan")], "model": "m", "truncated": False}, "NaN"),
        ({"dimensions": 2, "embedding": [0.0, 0.0], "model": "m", "truncated": False}, "all zeros"),
    ],
)
def test_check_result_refuses_a_malformed_result(result, message):
    with pytest.raises(ServingFailed, match=message):
        embeddings.check_result(result)


def test_max_length_comes_from_sentence_bert_config_when_present(tiny_encoder, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_encoder, tmp_path / "sbert")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8}))
    runtime = Runtime({"embeddings": {"model": str(folder)}}, device="cpu")
    try:
        assert runtime.serving("embeddings").model.max_length == 8
        assert runtime.run("embeddings", "i love this movie and the story and the acting")["truncated"] is True
    finally:
        runtime.close()


@pytest.mark.parametrize("option, message", [({"max_length": 0}, "max_length=0: use 1 or more"),
                                             ({"max_chars": "many"}, "max_chars='many': send an integer")])
def test_factory_options_are_range_checked_when_built(option, message):
    with pytest.raises(InvalidInput, match=message):
        mlservices.build("embeddings", **option)


def test_the_default_model_is_pinned_and_offline_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_OFFLINE", "1")
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path))
    serving = mlservices.build("embeddings")
    with pytest.raises(ModelNotInstalled) as missing:
        serving.setup("cpu")
    message = str(missing.value)
    assert "sentence-transformers/all-MiniLM-L6-v2@c9745ed" in message
    assert "EMBEDDINGS_MODEL" in message and "python manage.py models import embeddings PATH" in message


# --- the front ends: REST (in-process site), CLI, the page ----------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_job_through_the_rest_api_of_the_in_process_site(settings, tiny_encoder):
    settings.MLSERVICES_MODE = "inprocess"
    mlservices.configure({"embeddings": {"model": str(tiny_encoder), "batch_timeout_ms": 1}}, device="cpu")
    try:
        client = Client()
        servings = {s["name"]: s for s in client.get("/api/servings").json()["servings"]}
        assert servings["embeddings"]["spec"]["options"]["properties"]["normalize"]["type"] == "boolean"
        response = client.post(
            "/api/jobs", data=json.dumps({"serving": "embeddings", "input": {"text": "a great film"}}),
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
        job_id = response.json()["id"]

        def finished():
            job = client.get(f"/api/jobs/{job_id}").json()
            return job if job["status"] in ("done", "failed") else None

        job = wait_until(finished, timeout=60, what=f"job {job_id}")
        assert job["status"] == "done", job
        assert job["result"]["dimensions"] == HIDDEN
        assert norm(job["result"]["embedding"]) == pytest.approx(1, abs=1e-5)
        assert job["model_version"] == job["result"]["model"]
        refused = client.post("/api/jobs", data=json.dumps({"serving": "embeddings", "input": {"text": " "}}),
                              content_type="application/json")
        assert refused.status_code == 400 and "the text is empty" in refused.json()["error"]["message"]
    finally:
        mlservices.configure({})


def test_the_cli_prints_the_embedding(tiny_encoder, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mlservices", "run", "embeddings", "--text", "i love it",
         "-o", f"model={tiny_encoder}", "-o", "normalize=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "MLSERVICES_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["dimensions"] == HIDDEN and norm(result["embedding"]) != pytest.approx(1, abs=1e-3)
    alone = Runtime({"embeddings": {"model": str(tiny_encoder)}}, device="cpu")
    try:
        expected = alone.run("embeddings", {"text": "i love it", "normalize": False})
    finally:
        alone.close()
    assert result["embedding"] == pytest.approx(expected["embedding"], abs=1e-5)


@pytest.fixture(scope="module")
def embeddings_site(playwright_browser, tmp_path_factory, tiny_encoder, tiny_sentiment_model) -> Site:  # noqa: F811
    """The site in in-process mode, configured only by EMBEDDINGS_MODEL (no settings edit)."""
    tmp_path = tmp_path_factory.mktemp("embeddings-site")
    log = tmp_path / "daphne.log"
    with live_database(tmp_path) as database_url:
        env = base_env(
            DATABASE_URL=database_url, EMBEDDINGS_MODEL=str(tiny_encoder),
            SENTIMENT_MODEL=str(tiny_sentiment_model), DJANGO_MEDIA_ROOT=str(tmp_path / "media"),
            MLSERVICES_MODE="inprocess",
        )
        env.pop("REDIS_URL", None)
        with asgi_server(env, log) as url:
            yield Site(url, log)


@pytest.mark.browser
def test_the_generic_page_embeds_a_text(page, embeddings_site):  # noqa: F811
    from playwright.sync_api import expect

    site = embeddings_site
    with server_log_on_failure(site):
        open_page(page, site, "/s/embeddings/")
        expect(page.locator("h1")).to_have_text("Embed text")
        expect(page.locator("[data-testid=nav] [data-serving=embeddings]")).to_have_attribute("aria-current", "page")
        normalize = page.locator("[data-testid=options]").get_by_label("Normalize")
        expect(normalize).to_have_attribute("type", "checkbox")
        expect(normalize).to_be_checked()
        page.locator("#text").fill("i loved this movie")
        page.locator("[data-testid=submit-job]").click()

        job = page.locator("#jobs > li").first
        expect(job).to_have_attribute("data-status", "done", timeout=RESULT_TIMEOUT_MS)
        expect(job.locator("[data-testid=job-result] [data-field=dimensions]")).to_have_text(str(HIDDEN))
        expect(job.locator("[data-testid=job-result] [data-field=truncated]")).to_have_text("false")
        job_id = job.get_attribute("data-job-id")
        stored = page.request.get(f"{site.url}/api/jobs/{job_id}").json()
        assert stored["result"]["dimensions"] == HIDDEN
        assert norm(stored["result"]["embedding"]) == pytest.approx(1, abs=1e-5)
