"""The model store: versions added from files, folders and archives, verified, listed, removed.

Every input is built for real in tmp_path (tiny safetensors, ONNX and Hugging
Face folders, real zip and tar archives, hostile ones crafted byte by byte).
The Hugging Face Hub cannot be reached from here. ``pull`` is tested for real
where it must fail (downloads switched off; an endpoint on a closed loopback
port, where the real client fails to connect), and its success and refusal
paths against ``FakeHub``, a stand-in server on a loopback port that answers
the real ``huggingface_hub`` client: those tests show our download and
verification code at work, not that the real Hub still answers this way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import struct
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import mlservices
from mlservices import (
    IntegrityError,
    InvalidInput,
    ModelNotInstalled,
    Runtime,
    model_repository,
)
from mlservices.model_repository import Repository, StoredVersion, repository_dir
from mlservices.model_store import MANIFEST, ModelSource, locate, sha256_of
from tests.live_server import free_port

mlservices.discover()

PINNED = "714eb0fa89d2f80546fda750413ed43d93601a13"


@pytest.fixture
def repo(tmp_path) -> Repository:
    return Repository(tmp_path / "repository")


@pytest.fixture
def weights(tmp_path) -> Path:
    from safetensors.numpy import save_file

    path = tmp_path / "inputs" / "tiny.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file({"weight": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(path))
    return path


@pytest.fixture
def onnx_model(tmp_path) -> Path:
    """A one-node ONNX model: y = x + 1."""
    import onnx
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "plus_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "inputs" / "exported.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, str(path))
    return path


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def folder_members(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tar_of(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def assert_nothing_left(repo: Repository, serving: str = "sentiment", version: str = "v1") -> None:
    assert not (repo.root / serving / version).exists()
    leftovers = [p.name for p in repo.root.iterdir() if p.name.startswith(".")] if repo.root.exists() else []
    assert leftovers == []
    assert repo.versions(serving) == []


# --- adding -------------------------------------------------------------------


def test_a_safetensors_file_is_stored_as_model_safetensors_with_a_manifest(repo, weights):
    stored = repo.add("sentiment", "v1", weights)
    digest = sha256_of(weights)
    assert stored.path == repo.root / "sentiment" / "v1"
    assert sorted(p.name for p in stored.path.iterdir()) == [MANIFEST, "model.safetensors"]
    assert stored.files == {"model.safetensors": digest}
    assert stored.sha256 == digest
    assert stored.size == weights.stat().st_size
    assert stored.source == {"kind": "path", "path": str(weights)}
    manifest = json.loads((stored.path / MANIFEST).read_text())
    assert manifest == {
        "serving": "sentiment",
        "version": "v1",
        "source": stored.source,
        "files": {"model.safetensors": digest},
        "size": stored.size,
        "created_at": stored.created_at,
    }
    assert stored.as_json() == {
        "version": "v1",
        "serving": "sentiment",
        "sha256": digest,
        "size": stored.size,
        "source": stored.source,
        "created_at": stored.created_at,
        "path": str(stored.path),
    }
    assert repo.get("sentiment", "v1") == stored == repo.verify("sentiment", "v1")


def test_an_onnx_file_is_stored_as_model_onnx_and_runs(repo, onnx_model):
    import onnxruntime

    stored = repo.add("background_removal", "u2", onnx_model, source={"kind": "upload", "name": "exported.onnx"})
    assert stored.files == {"model.onnx": sha256_of(onnx_model)}
    assert stored.source == {"kind": "upload", "name": "exported.onnx"}
    session = onnxruntime.InferenceSession(str(stored.path / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([1.0, 2.0], dtype=np.float32)})
    assert y.tolist() == [2.0, 3.0]


def test_a_hugging_face_folder_is_stored_and_served(repo, tiny_sentiment_model):
    stored = repo.add("sentiment", "v2", tiny_sentiment_model)
    originals = folder_members(tiny_sentiment_model)
    assert set(stored.files) == set(originals) and "model.safetensors" in originals and len(originals) > 1
    assert stored.sha256 == {name: sha256_of(tiny_sentiment_model / name) for name in originals}
    assert stored.size == sum(len(data) for data in originals.values())
    runtime = Runtime({"sentiment": {"model": str(stored.path), "batch_timeout_ms": 1}}, device="cpu")
    try:
        result = runtime.run("sentiment", "i love this movie")
    finally:
        runtime.close()
    assert result["label"] in ("NEGATIVE", "POSITIVE")
    assert result["model"].startswith("v2@sha256:" + stored.files["model.safetensors"][:12])


def test_model_store_checks_a_stored_folder_against_its_manifest(repo, tiny_sentiment_model):
    stored = repo.add("sentiment", "v2", tiny_sentiment_model)
    assert locate(ModelSource(str(stored.path))).sha256 == stored.files["model.safetensors"]
    with open(stored.path / "model.safetensors", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(IntegrityError, match="corrupt or not the pinned version"):
        locate(ModelSource(str(stored.path)))


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.xz", "w:xz")])
def test_tar_archives_are_unpacked_with_their_single_top_folder_stripped(
    repo, tmp_path, tiny_sentiment_model, suffix, mode
):
    archive = tmp_path / f"model{suffix}"
    with tarfile.open(archive, mode) as tf:
        tf.add(tiny_sentiment_model, arcname="tiny-sentiment")
    stored = repo.add("sentiment", "v1", archive)
    assert stored.files == {
        name: sha256_of(tiny_sentiment_model / name) for name in folder_members(tiny_sentiment_model)
    }
    assert stored.source == {"kind": "archive", "name": archive.name}


def test_a_zipped_folder_is_unpacked_and_mac_junk_left_out(repo, tmp_path, tiny_sentiment_model):
    members = folder_members(tiny_sentiment_model, prefix="tiny-sentiment/")
    members["__MACOSX/tiny-sentiment/._model.safetensors"] = b"resource fork"
    members["tiny-sentiment/.DS_Store"] = b"finder"
    archive = zip_of(tmp_path / "model.zip", members)
    stored = repo.add("sentiment", "v1", archive, source={"kind": "upload", "name": "model.zip"})
    assert set(stored.files) == set(folder_members(tiny_sentiment_model))
    assert stored.source == {"kind": "upload", "name": "model.zip"}
    assert repo.verify("sentiment", "v1") == stored


def test_a_folder_holding_model_onnx_is_accepted(repo, tmp_path, onnx_model):
    folder = tmp_path / "onnx-folder"
    (folder / "extra").mkdir(parents=True)
    shutil.copy(onnx_model, folder / "model.onnx")
    (folder / "extra" / "labels.txt").write_text("cat\ndog\n")
    stored = repo.add("background_removal", "v1", folder)
    assert stored.sha256 == {
        "model.onnx": sha256_of(onnx_model),
        "extra/labels.txt": sha256_of(folder / "extra" / "labels.txt"),
    }


def test_an_existing_version_is_refused_and_kept(repo, weights, onnx_model):
    stored = repo.add("sentiment", "v2", weights)
    with pytest.raises(InvalidInput, match="version v2 of sentiment exists; pick another name"):
        repo.add("sentiment", "v2", onnx_model)
    assert repo.verify("sentiment", "v2") == stored
    assert [p.name for p in repo.root.iterdir()] == ["sentiment"]


@pytest.mark.parametrize("name", ["", "a/b", "v@2", ".hidden", "..", "-v", "has space", "x" * 65])
def test_bad_version_names_are_refused(repo, weights, name):
    with pytest.raises(InvalidInput, match=r"version name .*use 1 to 64 letters"):
        repo.add("sentiment", name, weights)
    assert not repo.root.exists() or list(repo.root.iterdir()) == []


def test_a_bad_serving_name_is_refused(repo, weights):
    with pytest.raises(InvalidInput, match="serving name '../x'"):
        repo.add("../x", "v1", weights)


def test_versions_lists_oldest_first_and_remove_deletes(repo, weights, onnx_model):
    first = repo.add("sentiment", "b-first", weights)
    second = repo.add("sentiment", "a-second", onnx_model)
    assert [v.version for v in repo.versions("sentiment")] == (
        ["b-first", "a-second"] if first.created_at < second.created_at else ["a-second", "b-first"]
    )
    assert repo.versions("transcription") == []
    repo.remove("sentiment", "b-first")
    assert [v.version for v in repo.versions("sentiment")] == ["a-second"]
    assert sorted(p.name for p in repo.root.iterdir()) == ["sentiment"]
    with pytest.raises(ModelNotInstalled, match="version b-first of sentiment is not in the model store.*a-second"):
        repo.get("sentiment", "b-first")
    with pytest.raises(ModelNotInstalled, match="models import sentiment PATH --version b-first"):
        repo.remove("sentiment", "b-first")


def test_the_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path / "store"))
    monkeypatch.delenv("MLSERVICES_MODEL_REPOSITORY", raising=False)
    assert repository_dir() == tmp_path / "store" / "repository" == Repository().root
    monkeypatch.setenv("MLSERVICES_MODEL_REPOSITORY", str(tmp_path / "elsewhere"))
    assert Repository().root == tmp_path / "elsewhere"


# --- refusals: each leaves nothing behind ---------------------------------------


def test_pickle_weights_are_refused(repo, tmp_path, tiny_sentiment_model):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"\x80\x04not loaded, ever")
    with pytest.raises(InvalidInput, match=r"model.pt is a pickle file.*Convert it to safetensors"):
        repo.add("sentiment", "v1", checkpoint)
    members = folder_members(tiny_sentiment_model)
    members["pytorch_model.bin"] = b"\x80\x04pickle"
    with pytest.raises(InvalidInput, match=r"pytorch_model.bin is a pickle file.*Convert it to safetensors"):
        repo.add("sentiment", "v1", zip_of(tmp_path / "model.zip", members))
    folder = tmp_path / "folder"
    shutil.copytree(tiny_sentiment_model, folder)
    (folder / "optimizer.pkl").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidInput, match="optimizer.pkl is a pickle file"):
        repo.add("sentiment", "v1", folder)
    assert_nothing_left(repo)


def test_python_files_are_refused(repo, tmp_path, tiny_sentiment_model):
    members = folder_members(tiny_sentiment_model, prefix="m/")
    members["m/modeling_custom.py"] = b"import os; os.system('echo owned')"
    with pytest.raises(InvalidInput, match=r"modeling_custom.py is Python code; remote code is never run"):
        repo.add("sentiment", "v1", zip_of(tmp_path / "model.zip", members))
    assert_nothing_left(repo)


def test_a_folder_without_weights_is_refused(repo, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "nested").mkdir()
    (folder / "nested" / "model.safetensors").write_bytes(b"not at the top")
    with pytest.raises(InvalidInput, match=r"no model weights.*found config.json, nested/model.safetensors"):
        repo.add("sentiment", "v1", folder)
    assert_nothing_left(repo)


@pytest.mark.parametrize(
    "name, fake", [("model.safetensors", b"\x80\x04\x95pickle" * 4), ("model.onnx", b"PK\x03\x04zip")]
)
def test_weights_whose_bytes_lie_about_their_format_are_refused(repo, tmp_path, name, fake):
    path = tmp_path / name
    path.write_bytes(fake)
    with pytest.raises(InvalidInput, match=f"{name} is not a (ONNX|safetensors) file"):
        repo.add("sentiment", "v1", path)
    assert_nothing_left(repo)


def test_an_unknown_file_kind_is_refused(repo, tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(InvalidInput, match=r"model.h5: give a .onnx or .safetensors file, a folder, or an archive"):
        repo.add("sentiment", "v1", path)
    with pytest.raises(InvalidInput, match="does not exist"):
        repo.add("sentiment", "v1", tmp_path / "nowhere.onnx")
    assert_nothing_left(repo)


@pytest.mark.parametrize(
    "member, message",
    [
        ("../evil.txt", r"'\.\./evil.txt' contains '\.\.'"),
        ("m/../../evil.txt", r"contains '\.\.'"),
        ("..\\evil.txt", r"contains '\.\.'"),
        ("/tmp/evil.txt", "is an absolute path"),
        ("C:/evil.txt", "is an absolute path"),
    ],
)
def test_zip_members_escaping_the_folder_are_refused(repo, tmp_path, weights, member, message):
    archive = zip_of(tmp_path / "model.zip", {"model.safetensors": weights.read_bytes(), member: b"owned"})
    with pytest.raises(InvalidInput, match=message):
        repo.add("sentiment", "v1", archive)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert_nothing_left(repo)


def test_tar_members_escaping_the_folder_are_refused(repo, tmp_path, weights):
    for member in ("../evil.txt", "/tmp/evil.txt"):
        archive = tar_of(
            tmp_path / "model.tar",
            [(file_info("model.safetensors"), weights.read_bytes()), (file_info(member), b"owned")],
        )
        with pytest.raises(InvalidInput, match="contains '..'|is an absolute path"):
            repo.add("sentiment", "v1", archive)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert_nothing_left(repo)


@pytest.mark.parametrize(
    "info, kind",
    [
        (file_info("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (file_info("hard", tarfile.LNKTYPE, "model.safetensors"), "hard link"),
        (file_info("dev", tarfile.CHRTYPE), "device"),
        (file_info("pipe", tarfile.FIFOTYPE), "fifo"),
    ],
)
def test_tar_links_devices_and_fifos_are_refused(repo, tmp_path, weights, info, kind):
    archive = tar_of(
        tmp_path / "model.tar.gz", [(file_info("model.safetensors"), weights.read_bytes()), (info, None)], "w:gz"
    )
    with pytest.raises(InvalidInput, match=f"{info.name} is a {kind}; only files and folders are accepted"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_zip_symlinks_are_refused(repo, tmp_path, weights):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model.safetensors", weights.read_bytes())
        link = zipfile.ZipInfo("config.json")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidInput, match="config.json is a symbolic link"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_folder_symlinks_are_refused(repo, tmp_path, tiny_sentiment_model):
    folder = tmp_path / "folder"
    shutil.copytree(tiny_sentiment_model, folder)
    (folder / "secrets.txt").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match=r"secrets.txt is a symbolic link.*cp -rL"):
        repo.add("sentiment", "v1", folder)
    assert_nothing_left(repo)


def test_a_zip_bomb_is_refused_from_its_declared_sizes(repo, tmp_path, weights, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_MAX_BYTES", "1000000")
    archive = zip_of(tmp_path / "bomb.zip", {"model.safetensors": weights.read_bytes(), "zeros.txt": bytes(5_000_000)})
    assert archive.stat().st_size < 50_000
    with pytest.raises(
        InvalidInput, match=r"bomb.zip unpacks to more than 1,000,000 bytes \(MLSERVICES_MODEL_MAX_BYTES\)"
    ):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_declared_zip_sizes_are_checked_before_any_byte_is_read(repo, tmp_path, weights, monkeypatch):
    """The central directory claims 5 MB for a member holding 123,457 bytes: refused on the claim alone."""
    monkeypatch.setenv("MLSERVICES_MODEL_MAX_BYTES", "1000000")
    archive = zip_of(tmp_path / "claims.zip", {"model.safetensors": weights.read_bytes(), "zeros.txt": bytes(123_457)})
    data = bytes(archive.read_bytes())
    real = struct.pack("<I", 123_457)
    assert data.count(real) == 2
    archive.write_bytes(data.replace(real, struct.pack("<I", 5_000_000)))
    with pytest.raises(InvalidInput, match="claims.zip unpacks to more than 1,000,000 bytes"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_declared_tar_sizes_are_checked_before_the_member_is_read(repo, tmp_path, weights, monkeypatch):
    """The header claims 5 MB and the archive ends right after it: refused on the claim, not on the short read."""
    monkeypatch.setenv("MLSERVICES_MODEL_MAX_BYTES", "1000000")
    archive = tar_of(
        tmp_path / "claims.tar",
        [(file_info("model.safetensors"), weights.read_bytes()), (file_info("zeros.txt"), bytes(5_000_000))],
    )
    with open(archive, "r+b") as f:
        f.truncate(archive.stat().st_size - 4_900_000)
    with pytest.raises(InvalidInput, match="claims.tar unpacks to more than 1,000,000 bytes"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_a_zip_that_lies_about_its_sizes_is_refused(repo, tmp_path, weights):
    """The headers say 10 bytes, the data inflates to 5 MB: reading stops at 10 and the CRC fails."""
    archive = zip_of(tmp_path / "liar.zip", {"model.safetensors": weights.read_bytes(), "zeros.txt": bytes(5_000_000)})
    data = bytearray(archive.read_bytes())
    real = struct.pack("<I", 5_000_000)
    assert data.count(real) == 2  # the local header and the central directory
    archive.write_bytes(bytes(data).replace(real, struct.pack("<I", 10)))
    with pytest.raises(InvalidInput, match=r"liar.zip: not a readable archive \(BadZipFile"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_a_tar_bomb_stops_before_writing_the_oversized_member(repo, tmp_path, weights, monkeypatch):
    monkeypatch.setattr(model_repository, "MAX_BYTES", 1_000_000)
    monkeypatch.delenv("MLSERVICES_MODEL_MAX_BYTES", raising=False)
    archive = tar_of(
        tmp_path / "bomb.tar.xz",
        [(file_info("model.safetensors"), weights.read_bytes()), (file_info("zeros.txt"), bytes(5_000_000))],
        "w:xz",
    )
    with pytest.raises(InvalidInput, match="bomb.tar.xz unpacks to more than 1,000,000 bytes"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_bytes_are_counted_while_copying_a_folder(repo, tmp_path, weights, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_MAX_BYTES", str(weights.stat().st_size + 10))
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(weights, folder / "model.safetensors")
    (folder / "notes.txt").write_bytes(b"x" * 11)
    with pytest.raises(InvalidInput, match="unpacks to more than"):
        repo.add("sentiment", "v1", folder)
    (folder / "notes.txt").write_bytes(b"x" * 10)
    assert repo.add("sentiment", "v1", folder).size == weights.stat().st_size + 10


def test_too_many_files_are_refused(repo, tmp_path, weights, monkeypatch):
    monkeypatch.setattr(model_repository, "MAX_FILES", 3)
    members = {"model.safetensors": weights.read_bytes(), **{f"f{i}.txt": b"x" for i in range(3)}}
    with pytest.raises(InvalidInput, match=r"model.zip holds more than 3 files \(MLSERVICES_MODEL_MAX_FILES\)"):
        repo.add("sentiment", "v1", zip_of(tmp_path / "model.zip", members))
    tar = tar_of(tmp_path / "model.tar", [(file_info(name), data) for name, data in members.items()])
    with pytest.raises(InvalidInput, match="model.tar holds more than 3 files"):
        repo.add("sentiment", "v1", tar)
    assert_nothing_left(repo)


def test_duplicate_archive_members_are_refused(repo, tmp_path, weights):
    data = weights.read_bytes()
    archive = tar_of(
        tmp_path / "twice.tar", [(file_info("model.safetensors"), data), (file_info("model.safetensors"), data)]
    )
    with pytest.raises(InvalidInput, match="model.safetensors appears twice"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_a_corrupt_archive_is_refused(repo, tmp_path):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(InvalidInput, match="model.tar.gz: not a readable archive"):
        repo.add("sentiment", "v1", archive)
    assert_nothing_left(repo)


def test_a_malformed_limit_setting_names_the_variable(repo, weights, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_MAX_FILES", "lots")
    with pytest.raises(InvalidInput, match="MLSERVICES_MODEL_MAX_FILES='lots': set it to a positive whole number"):
        repo.add("sentiment", "v1", weights)
    assert_nothing_left(repo)


# --- verify -------------------------------------------------------------------


@pytest.fixture
def stored(repo, tiny_sentiment_model) -> StoredVersion:
    return repo.add("sentiment", "v1", tiny_sentiment_model)


def test_verify_finds_a_changed_byte(repo, stored):
    path = stored.path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"sentiment v1: model.safetensors has sha256 .*import it again"):
        repo.verify("sentiment", "v1")


def test_verify_finds_a_missing_file(repo, stored):
    (stored.path / "config.json").unlink()
    with pytest.raises(IntegrityError, match=r"sentiment v1: config.json is missing.*import it again"):
        repo.verify("sentiment", "v1")


def test_verify_finds_an_extra_file(repo, stored):
    (stored.path / "sub").mkdir()
    (stored.path / "sub" / "extra.json").write_text("{}")
    with pytest.raises(IntegrityError, match=r"sentiment v1: sub/extra.json is not in the manifest.*import it again"):
        repo.verify("sentiment", "v1")


def test_a_broken_manifest_is_an_integrity_error(repo, stored):
    (stored.path / MANIFEST).write_text("{not json")
    with pytest.raises(IntegrityError, match="unreadable manifest.*import it again"):
        repo.get("sentiment", "v1")


# --- pull: the Hub is out of reach here ------------------------------------------


def test_pull_needs_a_pinned_commit(repo):
    with pytest.raises(InvalidInput, match="pin the 40-hex commit"):
        repo.pull("sentiment", "org/model", "main")
    assert_nothing_left(repo, version="main")


def test_pull_offline_says_how_to_import_a_local_copy(repo, monkeypatch):
    monkeypatch.setenv("MLSERVICES_OFFLINE", "1")
    with pytest.raises(
        ModelNotInstalled,
        match=r"Hugging Face Hub is unreachable.*`python manage.py models import sentiment PATH --version NAME`",
    ):
        repo.pull("sentiment", "org/model", PINNED)
    assert_nothing_left(repo, version=PINNED[:12])


def test_pull_from_an_unreachable_hub_says_how_to_import_a_local_copy(repo, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("MLSERVICES_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    with pytest.raises(
        ModelNotInstalled,
        match=r"Hub is unreachable or refused org/model@714eb0f .*`python manage.py models import sentiment PATH",
    ):
        repo.pull("sentiment", "org/model", PINNED, version="hub-v1")
    assert_nothing_left(repo, version="hub-v1")


# --- pull against a stand-in Hub ---------------------------------------------------


class FakeHub:
    """A stand-in for the Hugging Face Hub on a loopback port: NOT the real Hub, which cannot be reached here.

    It answers the few endpoints the real ``huggingface_hub`` client calls (model info with file
    metadata, the file tree, file downloads) for one repo at one commit, so ``pull`` runs its real
    download and verification code. ``declared`` overrides the sha256 it declares for a file;
    ``requests`` records every path asked for.
    """

    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id, self.files, self.declared, self.requests = repo_id, files, {}, []

    def sha256(self, name: str) -> str:
        return self.declared.get(name) or hashlib.sha256(self.files[name]).hexdigest()

    def entry(self, name: str, path_key: str) -> dict:
        data = self.files[name]
        lfs = {"size": len(data), "sha256": self.sha256(name), "oid": self.sha256(name), "pointerSize": 130}
        large = name.endswith((".safetensors", ".onnx", ".bin"))
        return {path_key: name, "type": "file", "size": len(data), "oid": hashlib.sha1(data).hexdigest()} | (
            {"lfs": lfs} if large else {}
        )

    def respond(self, method: str, path: str) -> tuple[int, bytes, dict[str, str]]:
        self.requests.append(path)
        path = path.split("?")[0]
        api, resolve = f"/api/models/{self.repo_id}/", f"/{self.repo_id}/resolve/{PINNED}/"
        if path == f"{api}revision/{PINNED}":
            siblings = [self.entry(name, "rfilename") for name in self.files]
            body = {"id": self.repo_id, "modelId": self.repo_id, "sha": PINNED, "private": False, "siblings": siblings}
            return 200, json.dumps(body).encode(), {"Content-Type": "application/json"}
        if path == f"{api}tree/{PINNED}":
            tree = [self.entry(name, "path") for name in self.files]
            return 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}
        if path.startswith(resolve) and path[len(resolve) :] in self.files:
            data = self.files[path[len(resolve) :]]
            return 200, data, {"X-Repo-Commit": PINNED, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        return 404, b"{}", {"X-Error-Code": "EntryNotFound"}


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, tiny_sentiment_model):
    import huggingface_hub.constants as hub_constants

    hub = FakeHub("org/model", folder_members(tiny_sentiment_model))
    hub.files |= {"pytorch_model.bin": b"\x80\x04pickle", "modeling_custom.py": b"import os"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body, headers = hub.respond(self.command, self.path)
            self.send_response(status)
            for key, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    for name in ("MLSERVICES_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)  # both read HF_ENDPOINT at import
    monkeypatch.setattr(
        hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    yield hub
    server.shutdown()
    server.server_close()
    thread.join()


def test_pull_stores_the_pinned_snapshot_verified(repo, fake_hub, tiny_sentiment_model):
    stored = repo.pull("sentiment", "org/model", PINNED)
    expected = folder_members(tiny_sentiment_model)
    assert stored.version == PINNED[:12]
    assert stored.source == {"kind": "hub", "ref": "org/model", "revision": PINNED}
    assert stored.files == {name: hashlib.sha256(data).hexdigest() for name, data in expected.items()}
    assert not any(f.endswith((".bin", ".py")) for f in stored.files)  # never even downloaded
    assert not any("pytorch_model.bin" in r or "modeling_custom.py" in r for r in fake_hub.requests)
    assert repo.verify("sentiment", PINNED[:12]) == stored
    assert locate(ModelSource(str(stored.path))).sha256 == stored.files["model.safetensors"]
    assert sorted(p.name for p in repo.root.iterdir()) == ["sentiment"]
    asked = len(fake_hub.requests)
    with pytest.raises(InvalidInput, match=f"version {PINNED[:12]} of sentiment exists; pick another name"):
        repo.pull("sentiment", "org/model", PINNED)
    assert len(fake_hub.requests) == asked


def test_model_store_downloads_a_hub_snapshot_through_the_same_fetch(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path / "store"))
    located = locate(ModelSource("org/model", revision=PINNED))
    assert located.version == "org/model@714eb0f"
    assert located.sha256 == hashlib.sha256(fake_hub.files["model.safetensors"]).hexdigest()
    assert not (located.path / "pytorch_model.bin").exists() and not (located.path / ".cache").exists()
    with pytest.raises(ModelNotInstalled, match="could not download org/other@714eb0f from the Hugging Face Hub"):
        locate(ModelSource("org/other", revision=PINNED))  # a repo the Hub does not have
    fake_hub.repo_id = "org/other"
    with pytest.raises(IntegrityError, match="expected 0{64}"):
        locate(ModelSource("org/other", revision=PINNED, sha256="0" * 64))  # the pin wins over the Hub's hash
    assert list((tmp_path / "store" / "org--other").rglob("*")) == []  # nothing kept


def test_pull_refuses_weights_that_differ_from_the_declared_sha256(repo, fake_hub):
    fake_hub.declared["model.safetensors"] = "0" * 64
    with pytest.raises(IntegrityError, match=r"org/model/model.safetensors: sha256 is [0-9a-f]{64}, expected 0{64}"):
        repo.pull("sentiment", "org/model", PINNED, version="v1")
    assert_nothing_left(repo)


def test_pull_refuses_a_snapshot_over_the_limit_before_downloading(repo, fake_hub, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_MAX_BYTES", "1000")
    with pytest.raises(InvalidInput, match=r"org/model@714eb0f unpacks to more than 1,000 bytes"):
        repo.pull("sentiment", "org/model", PINNED, version="v1")
    assert not any("/resolve/" in r for r in fake_hub.requests)
    assert_nothing_left(repo)
