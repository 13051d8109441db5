"""Background removal: a U2Net salient-object mask, then a cutout, a colour, a blur or an avatar.

Input: ``{"file": <jpeg/png/webp/gif/bmp/tiff bytes>, **options}``. Output::

    {"width": 1280, "height": 853,
     "cutout": Artifact("cutout.png", <RGBA PNG>, "image/png"),
     "mask": Artifact("mask.png", <grey PNG, original size>, "image/png"),
     "model": "u2netp@sha256:5d33d51a43f1", "subject_box": [212, 40, 1010, 853]}

Request options (``spec.options``; the web form and ``python -m mlservices
run background_removal -o KEY=VALUE`` both take them):

- ``background``: ``transparent`` (default; RGBA cutout), ``color`` (over
  ``bgcolor``) or ``blur`` (over its own background, blurred);
- ``bgcolor``: ``'#RRGGBB'``; set alone it means ``background=color``
  (default: white when ``background=color``);
- ``avatar``: the cutout becomes a 512×512 square around the subject
  (``avatar_box`` in the result says where, in original pixels);
- ``only_mask``: return only the mask (background and avatar do not apply);
- ``threshold``: -1 (default) keeps the mask soft; 0..1 makes it hard
  (alpha ≥ threshold → opaque);
- ``feather``: blur radius in pixels on the mask's edges (default 0).

``subject_box`` is ``[x0, y0, x1, y1]`` (x1/y1 exclusive) around the pixels
whose mask is ≥ 0.5, or ``null`` when the model found no subject.

Factory options (settings, ``MLSERVICES_CONFIG``, or ``-o`` on the command line):

- ``model``: ``u2netp`` (default, 4.6 MB) or ``u2net`` (176 MB): the public
  U2Net ONNX exports, downloaded once by URL and checked against their pinned
  sha256; or a local ``.onnx`` file, or a folder holding ``model.onnx``
  (e.g. ``../shared/models/u2netp/model.onnx``); or an https URL with ``sha256``;
- ``sha256``: pin the weights' hash (pinned already for ``u2netp``/``u2net``);
- ``threads``: ONNX Runtime intra-op threads (default: its own choice);
- ``max_bytes`` (15 MB) and ``max_pixels`` (40 megapixels): the largest file
  and image accepted; the pixel count is read from the header before decoding;
- ``batch_size`` (4), ``batch_timeout_ms`` (0: a photo alone goes at once; batches
  still form while the model is busy): the batcher's.

The model's input size is read from the model (320×320 for U2Net). A model
whose batch axis is dynamic runs a batch in one call; one fixed at 1 (the
bundled ``u2netp`` is ``[1,3,320,320]``) is called once per image. Outputs
may be NHWC ``[N,H,W,1]`` or NCHW ``[N,1,H,W]``; the first output is used.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import images
from ..artifacts import Artifact
from ..devices import onnx_providers
from ..errors import InvalidInput, ModelNotInstalled, ServingFailed
from ..model_store import ModelSource, is_url, locate
from ..registry import register
from ..serving import Prepared, Serving
from ..spec import InputSpec, Option

log = logging.getLogger(__name__)

NAME = "background_removal"
FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff")
RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0"
INSTALL_HINT = (
    "Install it with `python -m mlservices download background_removal` on a machine that reaches "
    "github.com, or point the model option at a local ONNX file "
    "(e.g. -o model=../shared/models/u2netp/model.onnx, or BACKGROUND_REMOVAL_MODEL for the site)."
)
# The public U2Net ONNX exports (weights: U-2-Net, Apache-2.0; ONNX files published by rembg).
MODELS = {
    "u2netp": ModelSource(
        f"{RELEASES}/u2netp.onnx",
        weights="u2netp.onnx",
        sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
        install_hint=INSTALL_HINT,
    ),
    "u2net": ModelSource(
        f"{RELEASES}/u2net.onnx",
        weights="u2net.onnx",
        sha256="8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
        install_hint=INSTALL_HINT,
    ),
}
AVATAR_SIZE = 512
BACKGROUNDS = ("transparent", "color", "blur")

OPTIONS = (
    Option("background", str, "transparent", "what goes behind the subject", choices=BACKGROUNDS),
    Option("bgcolor", str, "", "'#RRGGBB' for background=color (white if empty); set alone it implies color"),
    Option("avatar", bool, False, "the cutout as a 512×512 square around the subject"),
    Option("only_mask", bool, False, "return only the grey mask (background and avatar do not apply)"),
    Option("threshold", float, -1.0, "-1: soft mask; 0..1: hard mask (alpha ≥ threshold)", minimum=-1, maximum=1),
    Option("feather", float, 0.0, "blur radius in pixels on the mask's edges", minimum=0, maximum=100),
)
# Ranges of the factory options (checked when the serving is built).
SETTINGS = (
    Option("threads", int, None, "ONNX Runtime intra-op threads", minimum=1, maximum=1024),
    Option("max_bytes", int, 15_000_000, "largest file accepted", minimum=1),
    Option("max_pixels", int, 40_000_000, "largest image accepted (width × height)", minimum=1),
)


@dataclasses.dataclass
class U2Net:
    session: Any  # onnxruntime.InferenceSession
    input_name: str
    output_name: str
    size: tuple[int, int]  # the model's input (width, height)
    fixed_batch: int | None  # the batch axis when fixed in the model, else None
    providers: list[str]
    version: str


@dataclasses.dataclass(frozen=True)
class Context:
    """What travels beside the batch item: the upload and what to make of the mask."""

    data: bytes
    size: tuple[int, int]  # the original (width, height), upright
    options: dict


def request_options(input: dict) -> dict:
    """The input's options, checked together; ``background`` resolved (``bgcolor`` alone means color)."""
    options = {o.name: input.get(o.name, o.default) for o in OPTIONS}
    threshold = options["threshold"]
    if -1 < threshold < 0:
        raise InvalidInput(f"{NAME}: option threshold={threshold!r}: use -1 (soft mask) or a value from 0 to 1")
    if options["bgcolor"]:
        images.parse_color(options["bgcolor"], NAME)
        if options["background"] == "blur":
            raise InvalidInput(
                f"{NAME}: background=blur and bgcolor={options['bgcolor']!r} contradict; "
                "drop bgcolor, or use background=color"
            )
        if options["background"] == "transparent":
            options["background"] = "color"
    return options


def masks_from_output(output: np.ndarray) -> np.ndarray:
    """[N, H, W] from the model's first output: NHWC [N,H,W,1], NCHW [N,1,H,W] or [N,H,W]."""
    array = np.asarray(output)
    if array.ndim == 3:
        return array
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim == 4 and array.shape[3] == 1:
        return array[..., 0]
    raise ServingFailed(
        f"{NAME}: the model's first output has shape {list(array.shape)}; "
        "expected a one-channel mask [N,H,W,1] or [N,1,H,W]"
    )


def inference(model: U2Net, items: list) -> list[np.ndarray]:
    batch = np.stack(items).astype(np.float32, copy=False)
    step = model.fixed_batch or len(batch)
    masks: list[np.ndarray] = []
    for start in range(0, len(batch), step):
        chunk = batch[start : start + step]
        real = len(chunk)
        if real < step:  # a fixed batch larger than what is left: pad with zeros
            chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), np.float32)])
        (output,) = model.session.run([model.output_name], {model.input_name: chunk})
        masks.extend(masks_from_output(output)[:real])
    return masks


def _model_source(model: str, sha256: str | None) -> tuple[ModelSource, Path | None]:
    """The source of ``model`` and, for a local path, the path (resolved at load, not at build)."""
    if model in MODELS:
        source = MODELS[model]
        return (dataclasses.replace(source, sha256=sha256) if sha256 else source), None
    if is_url(model):
        return ModelSource(model, weights=Path(model.split("?")[0]).name, sha256=sha256, install_hint=INSTALL_HINT), None
    return ModelSource("", sha256=sha256, install_hint=INSTALL_HINT), Path(model).expanduser().absolute()


def _local_source(path: Path, source: ModelSource) -> ModelSource:
    if path.is_dir():
        return dataclasses.replace(source, ref=str(path), weights="model.onnx")
    if path.suffix != ".onnx":
        raise InvalidInput(
            f"{NAME}: model={str(path)!r}: only ONNX weights are loaded; "
            "give a .onnx file or a folder holding model.onnx"
        )
    return dataclasses.replace(source, ref=str(path), weights=path.name)


def _providers(device: str) -> list:
    providers = onnx_providers(device)
    if device.startswith("cuda") and "CUDAExecutionProvider" not in providers:
        import onnxruntime

        raise ModelNotInstalled(
            f"{NAME}: device {device!r} asks for CUDA, but this onnxruntime has no CUDAExecutionProvider "
            f"(it has {', '.join(onnxruntime.get_available_providers())}). Install onnxruntime-gpu for "
            "your CUDA version in place of onnxruntime, or run on the CPU (device cpu)"
        )
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
    return [(p, {"device_id": index}) if p == "CUDAExecutionProvider" else p for p in providers]


def _input_geometry(name: str, shape: list, path: Path) -> tuple[tuple[int, int], int | None]:
    if len(shape) != 4 or shape[1] != 3:
        raise ServingFailed(
            f"{NAME}: {path} takes {name!r} of shape {shape}; expected an NCHW image [N,3,H,W] (U2Net)"
        )
    height = shape[2] if isinstance(shape[2], int) else 320
    width = shape[3] if isinstance(shape[3], int) else 320
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return (width, height), batch


@register(NAME)
def background_removal(
    model: str = "u2netp",
    sha256: str | None = None,
    threads: int | None = None,
    max_bytes: int = 15_000_000,
    max_pixels: int = 40_000_000,
) -> Serving:
    threads, max_bytes, max_pixels = (
        setting.coerce(NAME, value) for setting, value in zip(SETTINGS, (threads, max_bytes, max_pixels))
    )
    source, path = _model_source(model, sha256)

    def load(device: str) -> U2Net:
        resolved = _local_source(path, source) if path else source
        located = locate(resolved)
        weights = located.path / resolved.weights
        import onnxruntime

        providers = _providers(device)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # Its threads share the cores with decoding and PNG writing (other requests', on other
        # threads) and with the web process or the worker: idle, they sleep instead of spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(str(weights), options, providers=providers)
        except Exception as exc:
            raise ServingFailed(
                f"{NAME}: ONNX Runtime could not load {weights} ({type(exc).__name__}: {str(exc)[:300]}); "
                "is it a U2Net ONNX export?"
            ) from exc
        in_use = session.get_providers()
        if device.startswith("cuda") and in_use[0] != "CUDAExecutionProvider":
            raise ServingFailed(
                f"{NAME}: CUDA was asked for but ONNX Runtime runs on {in_use[0]} (the CUDA provider failed "
                "to start: check the CUDA and cuDNN versions onnxruntime-gpu needs), or use device cpu"
            )
        first = session.get_inputs()[0]
        size, batch = _input_geometry(first.name, list(first.shape), weights)
        version = located.version
        if path and resolved.weights != "model.onnx":  # a file of its own name: name it, not its folder
            version = f"{Path(resolved.weights).stem}@sha256:{located.sha256[:12]}"
        log.info("%s: %s on %s, providers %s, input %s", NAME, version, device, in_use, first.shape)
        return U2Net(
            session=session,
            input_name=first.name,
            output_name=session.get_outputs()[0].name,
            size=size,
            fixed_batch=batch,
            providers=in_use,
            version=version,
        )

    def checked(input: dict) -> dict:
        request_options(input)
        images.open_image(input["file"], max_pixels, FORMATS, NAME)
        return input

    def preprocess(model: U2Net, input: dict) -> Prepared:
        options = request_options(input)
        decoded = images.decode(input["file"], max_pixels, reduce_to=max(model.size), formats=FORMATS, who=NAME)
        return Prepared(
            item=images.to_tensor(decoded.image, model.size),
            context=Context(bytes(input["file"]), decoded.size, options),
        )

    def postprocess(model: U2Net, output: np.ndarray, context: Context) -> dict:
        options = context.options
        mask = images.mask_image(images.normalise_output(output), context.size)
        mask = images.refine(mask, options["threshold"], options["feather"])
        box = images.subject_box(mask)
        width, height = context.size
        result: dict[str, Any] = {"width": width, "height": height}
        square = None
        if not options["only_mask"]:
            image = images.decode(context.data, max_pixels, formats=FORMATS, who=NAME).image
            cutout, square = compose(image, mask, box, options)
            result["cutout"] = Artifact("cutout.png", images.encode_png(cutout), "image/png")
        result["mask"] = Artifact("mask.png", images.encode_png(mask), "image/png")
        result["model"] = model.version
        result["subject_box"] = list(box) if box else None
        if square:
            result["avatar_box"] = list(square)
        return result

    return Serving(
        name=NAME,
        load=load,
        preprocess=preprocess,
        inference=inference,
        postprocess=postprocess,
        batch_size=4,
        batch_timeout_ms=0.0,
        warmup=({"file": _warmup_png()},),
        description="Remove the background of a photo: cutout (transparent, colour, blur or avatar) and mask.",
        title="Profile photo",
        spec=InputSpec(
            kind="image",
            formats=FORMATS,
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            options=OPTIONS,
            renderer="background_removal",
        ),
        validate=checked,
    )


def compose(image, mask, box, options: dict) -> tuple[Any, tuple[int, int, int, int] | None]:
    """The cutout ``options`` ask for, and the avatar's square (original pixels) when it is one."""
    square = None
    if options["avatar"]:
        square = images.avatar_square(box, image.size)
        image, mask = images.crop_square(image, mask, square, AVATAR_SIZE)
    if options["background"] == "color":
        return images.on_color(image, mask, images.parse_color(options["bgcolor"] or "#ffffff", NAME)), square
    if options["background"] == "blur":
        return images.on_blur(image, mask), square
    return images.cutout(image, mask), square


def _warmup_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()
