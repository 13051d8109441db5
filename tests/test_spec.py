"""The input spec, format sniffing and artifacts: pure functions on tiny inputs."""

from __future__ import annotations

import pytest

from mlservices import Artifact, InputSpec, InvalidInput, Option, ServingFailed
from mlservices.artifacts import collect, replace
from mlservices.formats import sniff

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8


@pytest.mark.parametrize(
    "head, format",
    [
        (PNG, "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
        (b"GIF89a", "gif"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86", "webm"),
        (b"\x00\x00\x00\x20ftypisom", "mp4"),
        (b"ID3\x04\x00", "mp3"),
        (b"\xff\xfb\x90\x64", "mp3"),
        (b"\xff\xf1\x50\x80", "aac"),
        (b"hello, world", None),
        (b"", None),
    ],
)
def test_sniff_names_formats_by_their_first_bytes(head, format):
    assert sniff(head) == format


@pytest.mark.parametrize(
    "option, value, expected",
    [
        (Option("n", int, 1), "3", 3),
        (Option("n", int, 1), 4.0, 4),
        (Option("x", float, 0.5), "0.25", 0.25),
        (Option("b", bool, False), "true", True),
        (Option("b", bool, False), "off", False),
        (Option("b", bool, True), None, True),
        (Option("s", str, "a", choices=("a", "b")), "b", "b"),
    ],
)
def test_options_are_typed_and_defaulted(option, value, expected):
    assert option.coerce("toy", value) == expected


@pytest.mark.parametrize(
    "option, value, words",
    [
        (Option("n", int, 1, minimum=1, maximum=5), 9, "n=9: use 5 or less"),
        (Option("n", int, 1, minimum=1), 0, "use 1 or more"),
        (Option("n", int, 1), "many", "send an integer"),
        (Option("n", int, 1), True, "send an integer"),
        (Option("n", int, 1), 2.5, "send an integer"),
        (Option("x", float, 0.0), float("nan"), "finite"),
        (Option("b", bool, False), "maybe", "send a boolean"),
        (Option("s", str, "a", choices=("a", "b")), "c", "choose one of 'a', 'b'"),
        (Option("s", str, ""), "a\x00", "NUL"),
        (Option("s", str, ""), "\udc00", "lone surrogate"),
    ],
)
def test_bad_option_values_name_the_value_and_the_fix(option, value, words):
    with pytest.raises(InvalidInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        option.coerce("toy", value)


def test_a_text_spec_normalises_a_string_to_an_object_with_defaults():
    spec = InputSpec(kind="text", max_chars=10, options=(Option("times", int, 1),))
    assert spec.normalise("shout", "hi") == {"text": "hi", "times": 1}
    assert spec.normalise("shout", {"text": "hi", "times": "2"}) == {"text": "hi", "times": 2}
    with pytest.raises(InvalidInput, match="the text is 11 characters; the limit is 10"):
        spec.normalise("shout", "x" * 11)
    with pytest.raises(InvalidInput, match="unknown input field\\(s\\) loud; known: text, times"):
        spec.normalise("shout", {"text": "hi", "loud": True})
    with pytest.raises(InvalidInput, match="the input is int"):
        spec.normalise("shout", 3)


def test_a_file_spec_checks_size_and_sniffed_format():
    spec = InputSpec(kind="image", formats=("png",), max_bytes=100, options=(Option("flip", bool, False),))
    assert spec.normalise("files", {"file": PNG}) == {"file": PNG, "flip": False}
    with pytest.raises(InvalidInput, match="the file is a jpeg file; send one of: png"):
        spec.normalise("files", {"file": b"\xff\xd8\xff\xe0" + b"\x00" * 20})
    with pytest.raises(InvalidInput, match="not a file type it can read"):
        spec.normalise("files", {"file": b"plain text"})
    with pytest.raises(InvalidInput, match="the file is 108 bytes; the limit is 100"):
        spec.normalise("files", {"file": PNG + b"\x00" * 92})
    with pytest.raises(InvalidInput, match="empty"):
        spec.normalise("files", {"file": b""})


def test_a_malformed_spec_fails_when_built():
    with pytest.raises(InvalidInput, match="kind='video'"):
        InputSpec(kind="video")
    with pytest.raises(InvalidInput, match="must name its accepted formats"):
        InputSpec(kind="audio")
    with pytest.raises(InvalidInput, match="formats heic are not known"):
        InputSpec(kind="image", formats=("heic",))
    with pytest.raises(InvalidInput, match="options text clash"):
        InputSpec(kind="text", options=(Option("text"),))


def test_as_json_publishes_limits_formats_and_an_options_schema():
    spec = InputSpec(kind="image", formats=("png", "jpeg"), max_bytes=5, options=(Option("n", int, 2, "how many", minimum=1),))
    assert spec.as_json() == {
        "kind": "image",
        "formats": ["png", "jpeg"],
        "content_types": ["image/jpeg", "image/png"],
        "limits": {"max_bytes": 5},
        "options": {"type": "object", "properties": {"n": {"type": "integer", "default": 2, "description": "how many",
                                                           "minimum": 1}}, "additionalProperties": False},
        "renderer": "image",
    }


def test_artifacts_are_found_anywhere_and_replaced_in_place():
    result = {"a": Artifact("a.png", b"1", "image/png"), "more": [1, {"b": Artifact("b.txt", b"22")}]}
    assert [a.name for a in collect(result)] == ["a.png", "b.txt"]
    assert replace(result, lambda a: len(a.data)) == {"a": 1, "more": [1, {"b": 2}]}
    with pytest.raises(ServingFailed, match="two artifacts named a.png"):
        collect([Artifact("a.png", b""), Artifact("a.png", b"")])
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ServingFailed, match="artifact name"):
            Artifact(bad, b"")
