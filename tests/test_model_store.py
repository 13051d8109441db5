"""Where weights come from: local folders, pinned Hub snapshots, verified hashes.

The Hub cannot be reached from here, so the download path is exercised up to
the network: an endpoint on a closed loopback port stands in for an offline
machine (no mock: the real client fails to connect).
"""

from __future__ import annotations

import json
import shutil

import pytest

from mlservices import IntegrityError, InvalidInput, ModelNotInstalled
from mlservices.model_store import MANIFEST, ModelSource, locate, sha256_of, snapshot_dir
from tests.live_server import free_port

PINNED = "714eb0fa89d2f80546fda750413ed43d93601a13"


def test_local_folder_is_versioned_by_its_weights_hash(tiny_sentiment_model):
    located = locate(ModelSource(str(tiny_sentiment_model)))
    digest = sha256_of(tiny_sentiment_model / "model.safetensors")
    assert located.sha256 == digest
    assert located.version == f"{tiny_sentiment_model.name}@sha256:{digest[:12]}"


def test_pinned_sha256_that_does_not_match_is_refused(tiny_sentiment_model):
    with pytest.raises(IntegrityError, match="expected 000000"):
        locate(ModelSource(str(tiny_sentiment_model), sha256="0" * 64))


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(ModelNotInstalled, match="pytorch_model.bin, a pickle format"):
        locate(ModelSource(str(tmp_path)))
    with pytest.raises(InvalidInput, match="only safetensors or ONNX"):
        locate(ModelSource(str(tmp_path), weights="pytorch_model.bin"))


def test_hub_model_needs_a_pinned_commit():
    with pytest.raises(InvalidInput, match="pin the 40-hex commit"):
        locate(ModelSource("org/model", revision="main"))


def test_offline_setting_gives_install_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("MLSERVICES_OFFLINE", "1")
    with pytest.raises(ModelNotInstalled, match="downloads are off.*Install it like so"):
        locate(ModelSource("org/model", revision=PINNED, install_hint="Install it like so."))


def test_unreachable_hub_is_a_clear_not_installed_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("MLSERVICES_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelNotInstalled, match=r"could not download org/model@714eb0f .*offline"):
        locate(ModelSource("org/model", revision=PINNED))
    assert not snapshot_dir(ModelSource("org/model", revision=PINNED)).exists()


def test_store_snapshot_is_checked_against_its_manifest(tmp_path, monkeypatch, tiny_sentiment_model):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path))
    source = ModelSource("org/model", revision=PINNED)
    folder = snapshot_dir(source)
    shutil.copytree(tiny_sentiment_model, folder)
    digest = sha256_of(folder / "model.safetensors")
    (folder / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": digest}}))
    assert locate(source).version == "org/model@714eb0f"
    (folder / MANIFEST).write_text(json.dumps({"files": {"model.safetensors": "f" * 64}}))
    with pytest.raises(IntegrityError, match="corrupt or not the pinned version"):
        locate(source)
