"""The command line, run as a real process: text servings (tiny BERT), file servings (tiny U2Net).

``python -m mlservices run|download|list``: one JSON line per input, files under
--output, one ``error:`` line and exit 2 for whatever stops the command, exit 1
when some inputs failed.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import mlservices
from mlservices import Runtime
from mlservices.cli import Input, Outputs, ProgressBar, run_inputs
from mlservices.registry import SERVING_OPTIONS
from tests.conftest import ROOT
from tests.conftest import build_tiny_u2net, photo

mlservices.discover()
HOME = tempfile.mkdtemp(prefix="mlservices-cli-home-")  # caches land here, not in the repo
BG = "background_removal"


def cli(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "mlservices", *args],
        cwd=ROOT, input=stdin.encode() if isinstance(stdin, str) else stdin, capture_output=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "MLSERVICES_OFFLINE": "1", "HOME": HOME},
    )
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def one_error_line(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ")
    assert message in done.stderr, done.stderr


@pytest.fixture(scope="module")
def tiny_u2net(tmp_path_factory) -> Path:
    return build_tiny_u2net(tmp_path_factory.mktemp("cli-u2net") / "tiny.onnx", batch=1)


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(photo())
    (folder / "b.jpg").write_bytes(photo(format="JPEG"))
    (folder / "c.webp").write_bytes(photo(format="WEBP"))
    return folder


# --- text servings (moved from test_sentiment.py) ------------------------------


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


def test_cli_stdin_and_crlf_lines(tiny_sentiment_model):
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--input", "-", stdin="i love it\r\ngood\r\n")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2 and done.stderr == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "sentiment", "--model", "/nonexistent/model", "--text", "hi"], "does not exist"),
        (["run", "sentiment", "--text", "hi"], "downloads are off"),
        (["run", "sentimant", "--text", "hi"], "no serving named 'sentimant'; known servings: background_removal, embeddings, sentiment"),
        (["run", "sentiment", "-o", "colour=blue", "--text", "hi"], "unknown option"),
        (["run", "sentiment", "--input", "/nonexistent.txt"], "No such file"),
        (["run", "sentiment", "--device", "bogus", "--text", "hi"], "--device 'bogus': use cpu, cuda, cuda:N"),
        (["run", "sentiment", "-o", "max_chars=-1", "--text", "hi"], "option max_chars=-1: use 1 or more"),
        (["run", "sentiment", "-o", "threads=0", "--text", "hi"], "option threads=0: use 1 or more"),
        (["run", "sentiment", "-o", "max_chars", "--text", "hi"], "write it as KEY=VALUE"),
        (["run", "sentiment", "--only-mask", "--text", "hi"],
         "--only-mask: serving 'sentiment' has no request option only_mask; its request options: none"),
        (["run", "sentiment", "--bgcolor", "#ffffff", "--text", "hi"], "--bgcolor: serving 'sentiment' has no"),
        (["run", "sentiment", "--input", "/tmp"], "is a folder; serving 'sentiment' reads text"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args, message):
    one_error_line(cli(*args), message)


def test_cli_input_that_is_not_utf8_is_one_error_line(tiny_sentiment_model, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café\nna\xefve\n".encode("latin-1"))
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--input", str(tmp_path / "latin1.txt"))
    one_error_line(done, f"{tmp_path / 'latin1.txt'}: not valid UTF-8 (byte 0xe9 at offset 3); save it as UTF-8")
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--input", "-", stdin=b"ok\n\xff\n")
    one_error_line(done, "stdin: not valid UTF-8 (byte 0xff at offset 3)")


def test_cli_text_with_a_lone_surrogate_is_refused_clearly(tiny_sentiment_model):
    # an argument holding the byte 0xff reaches Python as the lone surrogate U+DCFF
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--text", "caf\udcff")
    one_error_line(done, "lone surrogate (U+DCFF) at character 4, which is not valid Unicode")


def test_cli_device_this_machine_lacks_is_one_error_line(tiny_sentiment_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = cli("run", "sentiment", "--model", str(tiny_sentiment_model), "--device", "cuda:3", "--text", "hi")
    one_error_line(done, "could not load sentiment on cuda:3: ")


@pytest.mark.shared
def test_real_model_cli_says_positive(shared_sentiment_model):
    done = cli("run", "sentiment", "--model", str(shared_sentiment_model), "--text", "I love it")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "POSITIVE"


# --- list ---------------------------------------------------------------------


def test_list_shows_factory_options_and_the_input_spec():
    done = cli("list")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "sentiment: Sentiment of English text" in text
    assert "  factory options: model='distilbert/distilbert-base-uncased-finetuned-sst-2-english', revision=None" in text
    assert "  input: text; limits: none" in text
    assert "  input: image (jpeg, png, webp, gif, bmp, tiff); limits: max_bytes=15,000,000, max_pixels=40,000,000" in text
    assert "    background (string, one of transparent|color|blur; default 'transparent'): what goes behind" in text
    assert "    threshold (number, -1..1; default -1.0): -1: soft mask" in text
    assert "  serving options: batch_size=4, batch_timeout_ms=0, parallel_batches=1" in text  # then any others


# --- file servings ------------------------------------------------------------


def test_one_photo_to_one_file(tiny_u2net, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(photo(format="JPEG"))
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(tmp_path / "photo.jpg"),
               "--output", str(tmp_path / "out" / "cutout.png"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cutout"] == {
        "name": "cutout.png", "file": str(tmp_path / "out" / "cutout.png"), "content_type": "image/png",
        "size": (tmp_path / "out" / "cutout.png").stat().st_size,
    }
    assert result["mask"]["file"] == str(tmp_path / "out" / "cutout-mask.png")  # the second artifact: beside it
    assert Image.open(tmp_path / "out" / "cutout.png").mode == "RGBA"
    assert Image.open(tmp_path / "out" / "cutout-mask.png").mode == "L"
    assert "error" not in done.stderr
    assert done.stderr.startswith("[########################] 1/1, ") and done.stderr.count("\n") == 1


def test_only_mask_to_one_file_and_no_output_describes_without_writing(tiny_u2net, tmp_path):
    (tmp_path / "photo.png").write_bytes(photo())
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(tmp_path / "photo.png"),
               "--output", str(tmp_path / "mask.png"), "--only-mask")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mask"]["file"] == str(tmp_path / "mask.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "photo.png"]
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(tmp_path / "photo.png"))
    result = json.loads(done.stdout)
    assert result["cutout"]["file"] is None and result["cutout"]["size"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "photo.png"]


def test_a_folder_of_photos_with_bad_files(tiny_u2net, photos, tmp_path):
    (photos / "notes.jpg").write_text("a text file renamed .jpg")
    (photos / "a.jpg").write_bytes(photo(format="JPEG"))  # a.png and a.jpg: the stems clash
    (photos / ".DS_Store").write_bytes(b"hidden: skipped")
    (photos / "sub").mkdir()  # folders: skipped
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(photos), "--output", str(tmp_path / "out"))
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 5  # a.jpg a.png b.jpg c.webp notes.jpg, sorted
    assert [("error" in line) for line in lines] == [False, False, False, False, True]
    assert lines[0]["cutout"]["file"] == str(tmp_path / "out" / "a.jpg-cutout.png")
    assert lines[2]["mask"]["file"] == str(tmp_path / "out" / "b-mask.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.jpg-cutout.png", "a.jpg-mask.png", "a.png-cutout.png", "a.png-mask.png",
        "b-cutout.png", "b-mask.png", "c-cutout.png", "c-mask.png",
    ]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {photos / 'notes.jpg'}: {BG}: the file is not a file type it can read; "
        "send one of: jpeg, png, webp, gif, bmp, tiff"
    ]
    assert done.stderr.splitlines()[-1].startswith("[########################] 5/5, 1 failed, ")


def test_a_folder_with_one_artifact_each_gets_stem_dot_ext(tiny_u2net, photos, tmp_path):
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(photos), "--output", str(tmp_path / "masks"),
               "-o", "only_mask=true")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["a.png", "b.png", "c.png"]


def test_an_input_is_never_overwritten(tiny_u2net, photos):
    before = (photos / "a.png").read_bytes()
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(photos), "--output", str(photos), "--only-mask")
    assert done.returncode == 1
    assert (photos / "a.png").read_bytes() == before
    assert f"error: {photos / 'a.png'}: --output: {photos / 'a.png'} is an input; choose another --output" in done.stderr
    assert (photos / "b.png").is_file() and (photos / "c.png").is_file()


def test_options_go_to_the_factory_or_the_request(tiny_u2net, tmp_path):
    (tmp_path / "p.png").write_bytes(photo())
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(tmp_path / "p.png"), "--output", str(tmp_path / "o"),
               "-o", "threads=1", "-o", "batch_size=2", "-o", "background=color", "--bgcolor", "#00ff00", "--avatar",
               "-o", "threshold=0.5")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "avatar_box" in result
    avatar = Image.open(result["cutout"]["file"])
    assert avatar.size == (512, 512) and avatar.mode == "RGB" and avatar.getpixel((1, 1)) == (0, 255, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-o", "colour=red"], "unknown option(s) colour; factory options: model, sha256, threads, max_bytes, "
         f"max_pixels, {', '.join(SERVING_OPTIONS)}; request options: background, bgcolor, avatar, "
         "only_mask, threshold, feather"),
        (["-o", "background=purple"], "option background='purple': choose one of 'transparent', 'color', 'blur'"),
        (["-o", "threshold=2"], "option threshold=2: use 1 or less"),
        (["-o", "max_pixels=0"], "option max_pixels=0: use 1 or more"),
        (["--revision", "abc"], "unknown option(s) revision"),
        (["--text", "hi"], "serving 'background_removal' reads image files; pass --input FILE|DIR, not --text"),
        (["--device", "gpu"], "--device 'gpu'"),
    ],
)
def test_file_serving_usage_errors_are_one_line(tiny_u2net, photos, args, message):
    where = [] if "--text" in args else ["--input", str(photos / "a.png")]
    one_error_line(cli("run", BG, "--model", str(tiny_u2net), *where, *args), message)


def test_several_inputs_need_an_output_folder_and_an_empty_folder_is_an_error(tiny_u2net, photos, tmp_path):
    (tmp_path / "file.png").write_bytes(b"x")
    one_error_line(cli("run", BG, "--model", str(tiny_u2net), "--input", str(photos), "--output", str(tmp_path / "file.png")),
                   "is a file; give a folder for 3 inputs")
    (tmp_path / "empty").mkdir()
    one_error_line(cli("run", BG, "--model", str(tiny_u2net), "--input", str(tmp_path / "empty")), "the folder holds no files")


def test_a_wrong_output_extension_fails_that_input(tiny_u2net, photos, tmp_path):
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(photos / "a.png"), "--output", str(tmp_path / "x.jpg"))
    assert done.returncode == 1
    assert "the result's cutout.png is a .png file; name the output x.png" in done.stderr
    assert not (tmp_path / "x.jpg").exists()


def test_a_file_over_max_bytes_fails_alone_without_being_read(tiny_u2net, photos):
    big = photos / "big.png"
    big.write_bytes(photo((400, 400), (0, 0, 10, 10)) + b"\0" * 2000)
    limit = big.stat().st_size - 1
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", str(photos), "-o", f"max_bytes={limit}")
    assert done.returncode == 1
    assert f"error: {big}: {BG}: the file is {limit + 1:,} bytes; the limit is {limit:,}" in done.stderr
    assert [("error" in json.loads(line)) for line in done.stdout.splitlines()] == [False, False, True, False]


def test_a_photo_on_stdin(tiny_u2net):
    done = cli("run", BG, "--model", str(tiny_u2net), "--input", "-", stdin=photo())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["width"] == 64


# --- the pieces, in process -----------------------------------------------------


def test_progress_bar_redraws_in_place_on_a_terminal():
    stream = io.StringIO()
    bar = ProgressBar(4, stream, tty=True, width=8)
    bar.advance()
    bar.note("error: x.jpg: broken")
    bar.advance(failed=True)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[........] 0/4, ")
    assert "\r[##......] 1/4, " in text
    assert "\rerror: x.jpg: broken\n" in text  # the bar is cleared before a note
    assert "\r[####....] 2/4, 1 failed, " in text and text.endswith(" s\n")
    assert text.count("\n") == 2


def test_progress_bar_without_a_terminal_prints_one_final_line():
    stream = io.StringIO()
    bar = ProgressBar(2, stream, tty=False, width=4)
    bar.advance()
    bar.advance()
    bar.close()
    assert stream.getvalue().startswith("[####] 2/2, ") and stream.getvalue().count("\n") == 1
    assert "\r" not in stream.getvalue()


def test_inputs_share_batches(tmp_path):
    model = build_tiny_u2net(tmp_path / "dynamic.onnx", batch=None)
    runtime = Runtime({BG: {"model": str(model), "batch_timeout_ms": 200}}, device="cpu")
    try:
        items = [
            Input(f"p{i}", f"p{i}", lambda i=i: {"file": photo(box=(i, i, 40, 30)), "only_mask": True})
            for i in range(8)
        ]
        stdout = io.StringIO()
        failures = run_inputs(runtime, BG, items, Outputs(tmp_path / "out", True, frozenset()), stdout, None)
        assert failures == 0
        lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
        assert [line["subject_box"][0] for line in lines] == list(range(8))  # in input order
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"p{i}.png" for i in range(8)]
        assert max(r.size for r in runtime.batcher(BG).records()) > 1
    finally:
        runtime.close()
