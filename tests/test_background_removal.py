"""The background_removal serving: on tiny random ONNX models built here, and on the real U2NetP.

The tiny models have U2Net's contract (input ``[N,3,320,320]``, first output
a sigmoid mask ``[N,320,320,1]`` or ``[N,1,320,320]``, a second output the
serving must ignore) and random positive weights, so brighter pixels are
"more subject": a bright square on a dark ground is a subject with a known box.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlservices
from mlservices import IntegrityError, InvalidInput, ModelNotInstalled, Runtime
from mlservices.servings.background_removal import masks_from_output, request_options
from tests.conftest import BOX, ROOT, SHARED, build_tiny_u2net, photo, require
from tests.live_server import free_port

mlservices.discover()
HOME = tempfile.mkdtemp(prefix="mlservices-cli-home-")  # caches land here, not in the repo

U2NETP_SHA256 = "5d33d51a43f1b30641b6dfe21f8263b887300d3ab82a8049f67f42d768631bdc"
def opened(artifact) -> Image.Image:
    image = Image.open(io.BytesIO(artifact.data))
    image.load()
    return image


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny-u2net")
    return {
        "fixed": build_tiny_u2net(folder / "fixed" / "model.onnx", batch=1),
        "dynamic": build_tiny_u2net(folder / "dynamic.onnx", batch=None),
        "nchw": build_tiny_u2net(folder / "nchw.onnx", batch=None, layout="nchw"),
    }


@pytest.fixture(scope="module")
def tiny(tiny_models):
    runtime = Runtime(
        {"background_removal": {"model": str(tiny_models["fixed"]), "batch_timeout_ms": 100}}, device="cpu"
    )
    yield runtime
    runtime.close()


class CountingSession:
    """The real session, counting its calls and the batch sizes it was given."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, names, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


# --- pure pieces --------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(2, 5, 7, 1), (2, 1, 5, 7), (2, 5, 7)], ids=["NHWC", "NCHW", "NHW"]
)
def test_masks_from_either_layout(shape):
    output = np.arange(70, dtype=np.float32).reshape(shape)
    masks = masks_from_output(output)
    assert masks.shape == (2, 5, 7)
    assert masks[1, 0, 0] == 35


def test_a_many_channel_output_is_refused():
    with pytest.raises(mlservices.ServingFailed, match=r"shape \[1, 3, 5, 5\]; expected a one-channel mask"):
        masks_from_output(np.zeros((1, 3, 5, 5)))


def test_bgcolor_alone_means_a_colour_background():
    assert request_options({"bgcolor": "#00ff00"})["background"] == "color"
    assert request_options({})["background"] == "transparent"
    assert request_options({"background": "color"})["bgcolor"] == ""


@pytest.mark.parametrize(
    "options, message",
    [
        ({"background": "blur", "bgcolor": "#000000"}, "contradict; drop bgcolor"),
        ({"bgcolor": "green"}, "write it as '#RRGGBB'"),
        ({"threshold": -0.5}, r"threshold=-0.5: use -1 \(soft mask\) or a value from 0 to 1"),
    ],
)
def test_contradictory_or_malformed_options_are_refused(options, message):
    with pytest.raises(InvalidInput, match=message):
        request_options(options)


def test_factory_options_are_range_checked():
    with pytest.raises(InvalidInput, match="threads=0: use 1 or more"):
        mlservices.build("background_removal", threads=0)
    with pytest.raises(InvalidInput, match="max_pixels=-1: use 1 or more"):
        mlservices.build("background_removal", max_pixels=-1)


def test_the_spec_is_published():
    spec = mlservices.build("background_removal", max_bytes=1000).spec.as_json()
    assert spec["kind"] == "image"
    assert spec["formats"] == ["jpeg", "png", "webp", "gif", "bmp", "tiff"]
    assert spec["limits"] == {"max_bytes": 1000, "max_pixels": 40_000_000}
    options = spec["options"]["properties"]
    assert options["background"] == {
        "type": "string", "default": "transparent", "description": "what goes behind the subject",
        "enum": ["transparent", "color", "blur"],
    }
    assert set(options) == {"background", "bgcolor", "avatar", "only_mask", "threshold", "feather"}


# --- at the door (no model) ---------------------------------------------------


def test_a_bomb_and_a_text_file_are_refused_before_any_model_runs():
    serving = mlservices.build("background_removal", max_pixels=1000)
    with pytest.raises(InvalidInput, match="64×48 = 3,072 pixels; the limit is 1,000"):
        serving.check({"file": photo()})
    with pytest.raises(InvalidInput, match="not a file type it can read; send one of: jpeg, png"):
        serving.check({"file": b"just some text, renamed photo.jpg"})
    with pytest.raises(InvalidInput, match="unknown input field.*colour"):
        serving.check({"file": photo(), "colour": "red"})
    assert serving.check({"file": photo((20, 20), (0, 0, 5, 5)), "avatar": "true"})["avatar"] is True


# --- on the tiny models -------------------------------------------------------


def test_result_has_cutout_mask_and_the_subjects_box(tiny):
    result = tiny.run("background_removal", {"file": photo()})
    assert list(result) == ["width", "height", "cutout", "mask", "model", "subject_box"]
    assert (result["width"], result["height"]) == (64, 48)
    assert result["model"].startswith("fixed@sha256:")
    cutout, mask = opened(result["cutout"]), opened(result["mask"])
    assert (result["cutout"].name, result["cutout"].content_type) == ("cutout.png", "image/png")
    assert cutout.mode == "RGBA" and cutout.size == (64, 48)
    assert mask.mode == "L" and mask.size == (64, 48)
    assert cutout.getpixel((32, 24))[:3] == (250, 240, 230)  # the subject: untouched colours
    assert cutout.getpixel((32, 24))[3] >= 250 and cutout.getpixel((2, 2))[3] <= 5  # opaque on transparent
    x0, y0, x1, y1 = result["subject_box"]
    assert abs(x0 - BOX[0]) <= 1 and abs(y0 - BOX[1]) <= 1 and abs(x1 - BOX[2]) <= 1 and abs(y1 - BOX[3]) <= 1


def test_fixed_batch_model_is_called_once_per_image(tiny):
    loaded = tiny.serving("background_removal")
    assert loaded.model.fixed_batch == 1 and loaded.model.size == (320, 320)
    items = [loaded.prepare({"file": photo(box=box)})[0][0].item for box in (BOX, (0, 0, 10, 10), (30, 20, 60, 40))]
    alone = [loaded.infer([item])[0] for item in items]
    spy = loaded.model.session = CountingSession(loaded.model.session)
    try:
        together = loaded.infer(items)
    finally:
        loaded.model.session = spy.session
    assert spy.batches == [1, 1, 1]
    assert len(together) == 3 and all(m.shape == (320, 320) for m in together)
    for single, batched in zip(alone, together):
        np.testing.assert_allclose(single, batched, atol=1e-6)


@pytest.mark.parametrize("which", ["dynamic", "nchw"])
def test_dynamic_batch_model_runs_a_batch_in_one_call(tiny_models, which):
    runtime = Runtime({"background_removal": {"model": str(tiny_models[which])}}, device="cpu")
    try:
        loaded = runtime.serving("background_removal")
        assert loaded.model.fixed_batch is None
        assert loaded.version.startswith(f"{which}@sha256:")  # a file of its own name is named for it
        items = [loaded.prepare({"file": photo(box=box)})[0][0].item for box in (BOX, (0, 0, 10, 10), (30, 20, 60, 40))]
        alone = [loaded.infer([item])[0] for item in items]
        spy = loaded.model.session = CountingSession(loaded.model.session)
        together = loaded.infer(items)
        assert spy.batches == [3]
        for single, batched in zip(alone, together):
            np.testing.assert_allclose(single, batched, atol=1e-6)
        box = runtime.run("background_removal", {"file": photo()})["subject_box"]
        assert max(abs(a - b) for a, b in zip(box, BOX)) <= 1
    finally:
        runtime.close()


def test_concurrent_requests_share_batches(tiny_models):
    runtime = Runtime(
        {"background_removal": {"model": str(tiny_models["dynamic"]), "batch_timeout_ms": 200}}, device="cpu"
    )
    try:
        loaded = runtime.serving("background_removal")
        batcher = runtime.batcher("background_removal")
        prepared = [loaded.prepare({"file": photo(box=(i, i, 40 + i, 30 + i))})[0][0] for i in range(4)]
        futures = [batcher.submit(p.item, p.key) for p in prepared]
        results = [loaded.finish(f.result(30), p.context) for f, p in zip(futures, prepared)]
        assert [r["subject_box"][0] for r in results] == [0, 1, 2, 3]
        assert max(r.size for r in batcher.records()) == 4
    finally:
        runtime.close()


def test_only_mask_returns_the_mask_alone(tiny):
    result = tiny.run("background_removal", {"file": photo(), "only_mask": True})
    assert "cutout" not in result and opened(result["mask"]).size == (64, 48)


def test_avatar_is_a_512_square_around_the_subject(tiny):
    result = tiny.run("background_removal", {"file": photo(), "avatar": True})
    cutout = opened(result["cutout"])
    assert cutout.size == (512, 512) and cutout.mode == "RGBA"
    left, top, right, bottom = result["avatar_box"]
    assert right - left == bottom - top
    assert left <= result["subject_box"][0] and right >= result["subject_box"][2]
    assert cutout.getpixel((256, 256))[3] >= 250 and cutout.getpixel((2, 2))[3] <= 5
    assert opened(result["mask"]).size == (64, 48)  # the mask keeps the original size


def test_colour_and_blur_backgrounds_are_opaque(tiny):
    def near(pixel, expected):
        return max(abs(a - b) for a, b in zip(pixel, expected)) <= 5

    coloured = opened(tiny.run("background_removal", {"file": photo(), "bgcolor": "#00ff00"})["cutout"])
    assert coloured.mode == "RGB" and near(coloured.getpixel((2, 2)), (0, 255, 0))
    assert near(coloured.getpixel((32, 24)), (250, 240, 230))
    white = opened(tiny.run("background_removal", {"file": photo(), "background": "color"})["cutout"])
    assert near(white.getpixel((2, 2)), (255, 255, 255))
    blurred = opened(tiny.run("background_removal", {"file": photo(), "background": "blur"})["cutout"])
    assert blurred.mode == "RGB" and near(blurred.getpixel((32, 24)), (250, 240, 230))
    assert not near(blurred.getpixel((2, 2)), (0, 255, 0)) and not near(blurred.getpixel((2, 2)), (255, 255, 255))


def test_threshold_makes_a_hard_mask(tiny):
    mask = opened(tiny.run("background_removal", {"file": photo(), "threshold": 0.5})["mask"])
    assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_an_exif_rotated_jpeg_gives_an_upright_mask_at_its_original_size(tiny):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    result = tiny.run("background_removal", {"file": photo((640, 480), (160, 120, 480, 360), "JPEG", exif=exif)})
    assert (result["width"], result["height"]) == (480, 640)
    assert opened(result["mask"]).size == opened(result["cutout"]).size == (480, 640)
    x0, y0, x1, y1 = result["subject_box"]
    assert abs(x0 - 120) <= 4 and abs(y0 - 160) <= 4 and abs(x1 - 360) <= 4 and abs(y1 - 480) <= 4


def test_a_truncated_upload_fails_alone(tiny):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG")
    data = buffer.getvalue()
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        tiny.batched_run("background_removal", {"file": data[: len(data) // 2]})
    assert tiny.batched_run("background_removal", {"file": photo()})["width"] == 64


# --- weights ------------------------------------------------------------------


def test_a_pinned_sha256_is_checked(tiny_models):
    digest = hashlib.sha256(tiny_models["fixed"].read_bytes()).hexdigest()
    good = mlservices.build("background_removal", model=str(tiny_models["fixed"]), sha256=digest)
    assert good.setup("cpu").version == f"fixed@sha256:{digest[:12]}"
    folder = mlservices.build("background_removal", model=str(tiny_models["fixed"].parent))
    assert folder.setup("cpu").version == f"fixed@sha256:{digest[:12]}"  # a folder holding model.onnx
    bad = mlservices.build("background_removal", model=str(tiny_models["fixed"]), sha256="0" * 64)
    with pytest.raises(IntegrityError, match="expected 0000"):
        bad.setup("cpu")


def test_a_missing_model_or_a_pickle_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotInstalled, match="does not exist.*python -m mlservices download background_removal"):
        mlservices.build("background_removal", model=str(tmp_path / "nowhere.onnx")).setup("cpu")
    (tmp_path / "model.pt").write_bytes(b"never unpickled")
    with pytest.raises(InvalidInput, match="only ONNX weights are loaded"):
        mlservices.build("background_removal", model=str(tmp_path / "model.pt")).setup("cpu")


def test_the_default_model_offline_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("MLSERVICES_OFFLINE", "1")
    with pytest.raises(ModelNotInstalled, match="u2netp.onnx is not in the model store.*downloads are off.*"
                       "python -m mlservices download background_removal"):
        mlservices.build("background_removal").setup("cpu")
    assert not any(tmp_path.rglob("*.onnx"))


def test_cuda_without_the_cuda_provider_fails_loudly(tiny_models):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    serving = mlservices.build("background_removal", model=str(tiny_models["fixed"]))
    with pytest.raises(ModelNotInstalled, match="no CUDAExecutionProvider.*onnxruntime-gpu.*device cpu"):
        serving.setup("cuda")


@pytest.fixture
def served_folder(tmp_path):
    """A real HTTP server on loopback serving ``tmp_path / "www"``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_url_model_is_downloaded_once_verified_and_kept(served_folder, tiny_models, tmp_path, monkeypatch):
    root, base = served_folder
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path / "store"))
    monkeypatch.delenv("MLSERVICES_OFFLINE", raising=False)
    (root / "tiny.onnx").write_bytes(tiny_models["dynamic"].read_bytes())
    digest = hashlib.sha256((root / "tiny.onnx").read_bytes()).hexdigest()
    url = f"{base}/tiny.onnx"

    with pytest.raises(InvalidInput, match="a URL needs the file's 64-hex sha256 pinned"):
        mlservices.build("background_removal", model=url).setup("cpu")
    with pytest.raises(IntegrityError, match="the download is corrupt or the file changed. Nothing was kept"):
        mlservices.build("background_removal", model=url, sha256="f" * 64).setup("cpu")
    assert not list((tmp_path / "store").rglob("tiny.onnx"))

    loaded = mlservices.build("background_removal", model=url, sha256=digest).setup("cpu")
    assert loaded.version == f"tiny.onnx@sha256:{digest[:12]}"
    (root / "tiny.onnx").unlink()  # kept in the store: no second download, offline is fine
    monkeypatch.setenv("MLSERVICES_OFFLINE", "1")
    assert mlservices.build("background_removal", model=url, sha256=digest).setup("cpu").version == loaded.version
    kept = next((tmp_path / "store").rglob("tiny.onnx"))
    kept.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="corrupt or not the pinned version"):
        mlservices.build("background_removal", model=url, sha256=digest).setup("cpu")


def test_an_unreachable_url_is_a_clear_not_installed_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSERVICES_MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("MLSERVICES_OFFLINE", raising=False)
    url = f"http://127.0.0.1:{free_port()}/u2netp.onnx"
    with pytest.raises(ModelNotInstalled, match=r"could not download .*Is this machine offline\?"):
        mlservices.build("background_removal", model=url, sha256="a" * 64).setup("cpu")


# --- the real model (../shared) ----------------------------------------------


@pytest.fixture(scope="module")
def shared_u2netp() -> Path:
    path = SHARED / "models" / "u2netp" / "model.onnx"
    require(path.is_file(), f"the real U2NetP model is not at {path}")
    return path


@pytest.fixture(scope="module")
def shared_photos() -> list[Path]:
    folder = SHARED / "data" / "images"
    require(folder.is_dir() and (SHARED / "data" / "masks").is_dir(), f"the photos and masks are not in {folder.parent}")
    return sorted(folder.iterdir())


@pytest.mark.shared
def test_real_model_matches_the_reference_masks(shared_u2netp, shared_photos):
    runtime = Runtime({"background_removal": {"model": str(shared_u2netp), "sha256": U2NETP_SHA256}}, device="cpu")
    try:
        ious = {}
        for path in shared_photos:
            result = runtime.batched_run("background_removal", {"file": path.read_bytes()})
            alpha = np.asarray(opened(result["cutout"]).getchannel("A")) >= 128
            reference = np.asarray(Image.open(SHARED / "data" / "masks" / f"{path.stem}.png").convert("L")) >= 128
            assert alpha.shape == reference.shape == (result["height"], result["width"])
            ious[path.name] = (alpha & reference).sum() / max((alpha | reference).sum(), 1)
        assert result["model"] == f"u2netp@sha256:{U2NETP_SHA256[:12]}"
    finally:
        runtime.close()
    assert len(ious) == 12
    assert np.mean(list(ious.values())) >= 0.90, ious
    assert min(ious.values()) >= 0.80, ious


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlservices", "run", "background_removal", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "MLSERVICES_OFFLINE": "1", "HOME": HOME},
    )


@pytest.mark.shared
def test_real_model_cli_writes_an_rgba_cutout(shared_u2netp, shared_photos, tmp_path):
    photo_path = next(p for p in shared_photos if p.name == "0003.jpg")
    done = cli("--model", os.path.relpath(shared_u2netp, ROOT), "--input", str(photo_path),
               "--output", str(tmp_path / "cutout.png"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cutout"]["file"] == str(tmp_path / "cutout.png")
    assert result["mask"]["file"] == str(tmp_path / "cutout-mask.png")
    cutout = Image.open(tmp_path / "cutout.png")
    assert cutout.format == "PNG" and cutout.mode == "RGBA" and cutout.size == Image.open(photo_path).size
    alpha = np.asarray(cutout.getchannel("A"))
    assert (alpha == 0).mean() > 0.05 and (alpha == 255).mean() > 0.05  # both transparent and opaque
    assert done.stderr.strip().startswith("[########################] 1/1")


@pytest.mark.shared
def test_real_model_cli_on_a_folder_with_a_bad_file(shared_u2netp, shared_photos, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    good = [p for p in shared_photos if p.name in ("0003.jpg", "girl.png", "rifle2.jpeg")]
    for p in good:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "notes.jpg").write_text("this is a text file renamed .jpg\n")
    done = cli("--model", str(shared_u2netp), "--input", str(photos), "--output", str(tmp_path / "out"), "--only-mask")
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [("error" in line) for line in lines] == [False, False, True, False]  # 0003, girl, notes, rifle2
    assert lines[2]["code"] == "invalid_input"
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {photos / 'notes.jpg'}: background_removal: the file is not a file type it can read; "
        "send one of: jpeg, png, webp, gif, bmp, tiff"
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0003.png", "girl.png", "rifle2.png"]
    for p in good:
        mask = Image.open(tmp_path / "out" / f"{p.stem}.png")
        assert mask.mode == "L" and mask.size == Image.open(p).size


@pytest.mark.shared
def test_real_model_cli_bgcolor_and_avatar(shared_u2netp, shared_photos, tmp_path):
    photo_path = next(p for p in shared_photos if p.name == "girl.png")
    done = cli("--model", str(shared_u2netp), "--input", str(photo_path), "--output", str(tmp_path / "red.png"),
               "--bgcolor", "#ff0000")
    assert done.returncode == 0, done.stderr
    red = np.asarray(Image.open(tmp_path / "red.png"))
    assert red.shape[2] == 3  # opaque RGB
    assert ((red == [255, 0, 0]).all(axis=2)).mean() > 0.2  # the background became red
    done = cli("--model", str(shared_u2netp), "--input", str(photo_path), "--output", str(tmp_path / "me.png"),
               "--avatar")
    assert done.returncode == 0, done.stderr
    avatar = Image.open(tmp_path / "me.png")
    assert avatar.size == (512, 512) and avatar.mode == "RGBA"
    assert json.loads(done.stdout)["avatar_box"][2] - json.loads(done.stdout)["avatar_box"][0] > 100
