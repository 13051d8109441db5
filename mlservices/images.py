"""Images in and out of a model: safe decoding, input tensors, masks, cutouts, PNGs.

Pure functions on bytes, Pillow images and numpy arrays; nothing here knows a
model or a serving::

    decoded = decode(jpeg_bytes, max_pixels=40_000_000, reduce_to=320)
    decoded.size                        # -> (4000, 3000): the original size, EXIF orientation applied
    decoded.image.size                  # -> (500, 375): decoded at 1/8 scale (JPEG only)
    x = to_tensor(decoded.image, (320, 320))       # float32 [3, 320, 320], ImageNet-normalised
    mask = mask_image(normalise_output(y), decoded.size)   # 'L' mask at the original size
    png = encode_png(cutout(decode(jpeg_bytes, 40_000_000).image, mask))   # RGBA PNG, no metadata

Decoding never trusts the file: the pixel count is checked from the header
before any pixel is decoded (decompression bombs), only the named formats'
decoders are tried, truncated or corrupt files are refused, EXIF orientation
is applied, and every mode (P, LA, RGBA, CMYK, I;16, 1, L, ...) becomes RGB
(transparent parts flattened onto white). Pillow's own process-wide
``Image.MAX_IMAGE_PIXELS`` is left as it is: ``max_pixels`` is the limit here,
and Pillow's ``DecompressionBombError`` (images past twice its own limit) is
turned into the same ``InvalidInput``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import zlib

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .errors import InvalidInput

# mlservices.formats names -> Pillow's decoder names
DECODERS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet, as U2Net was trained
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
WHITE = (255, 255, 255)
COLOR = re.compile(r"^#([0-9a-fA-F]{6})$")
ORIENTATION = 0x0112  # the EXIF tag
SWAPS_SIDES = (5, 6, 7, 8)  # orientations that turn the image by 90°
SHOWN = [0] + [255] * 255  # a mask's point table: every pixel it does not hide entirely


@dataclasses.dataclass(frozen=True)
class Decoded:
    image: Image.Image  # RGB, upright; smaller than ``size`` when decoded at reduced scale
    size: tuple[int, int]  # the original (width, height), upright


def open_image(data: bytes, max_pixels: int | None, formats=tuple(DECODERS), who: str = "image") -> Image.Image:
    """The image's header only (no pixel decoded yet), its size checked against ``max_pixels``."""
    try:
        image = Image.open(io.BytesIO(data), formats=[DECODERS[f] for f in formats])
    except Image.DecompressionBombError as exc:  # past twice Pillow's own limit: checked inside open()
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "too large"
        limit = f"{max_pixels:,}" if max_pixels is not None else f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} (Pillow's)"
        raise InvalidInput(f"{who}: the image is {size}; the limit is {limit}. Send a smaller image") from None
    except Exception:  # UnidentifiedImageError, or a header too broken to parse
        raise InvalidInput(
            f"{who}: the file is not an image it can read; send one of: {', '.join(formats)}"
        ) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(f"{who}: the image is {width}×{height} pixels; send an image with pixels in it")
    if max_pixels is not None and width * height > max_pixels:
        raise InvalidInput(
            f"{who}: the image is {width}×{height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,}. Send a smaller image"
        )
    return image


def decode(
    data: bytes,
    max_pixels: int | None,
    reduce_to: int | None = None,
    formats=tuple(DECODERS),
    who: str = "image",
) -> Decoded:
    """Decode safely to an upright RGB image.

    ``reduce_to``: the model needs only about this many pixels per side, so a
    JPEG may be decoded at 1/2, 1/4 or 1/8 scale (never below ``reduce_to``
    per side); ``Decoded.size`` keeps the original size either way.
    """
    image = open_image(data, max_pixels, formats, who)
    width, height = image.size
    try:
        if reduce_to and image.format == "JPEG":
            image.draft("RGB", (reduce_to, reduce_to))
        image.load()
        orientation = image.getexif().get(ORIENTATION, 1)
        ImageOps.exif_transpose(image, in_place=True)
        rgb = to_rgb(image)
    except InvalidInput:
        raise
    except Exception:  # OSError("image file is truncated"), SyntaxError, ValueError, EOFError, ...
        raise InvalidInput(f"{who}: the image is truncated or corrupt; send the whole file again") from None
    size = (height, width) if orientation in SWAPS_SIDES else (width, height)
    return Decoded(rgb, size)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode as RGB: 16/32-bit and float greys scaled by their maximum, alpha flattened onto white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.clip(np.asarray(image, dtype=np.float32), 0, None)
        top = float(values.max())
        grey = values * (255.0 / top) if top > 0 else values
        image = Image.fromarray(np.rint(grey).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError:
        raise InvalidInput(f"the image's colour mode {image.mode} is not supported; save it as RGB") from None


def to_tensor(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """RGB image → float32 [3, height, width]: resized, divided by its maximum, ImageNet mean/std."""
    resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    values = np.asarray(resized, dtype=np.float32)
    top = float(values.max())
    if top > 0:
        values = values / top
    return np.ascontiguousarray(((values - MEAN) / STD).transpose(2, 0, 1), dtype=np.float32)


def normalise_output(output: np.ndarray) -> np.ndarray:
    """The model's mask min-max normalised to [0, 1] (a flat output is only clipped)."""
    values = np.asarray(output, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-6:
        return np.clip(values, 0.0, 1.0)
    return (values - low) / (high - low)


def mask_image(probabilities: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A [h, w] mask in [0, 1] as an 'L' image resized (bilinear) to ``size`` (width, height)."""
    grey = Image.fromarray(np.rint(np.clip(probabilities, 0, 1) * 255).astype(np.uint8), "L")
    return grey if grey.size == tuple(size) else grey.resize(size, Image.Resampling.BILINEAR)


def refine(mask: Image.Image, threshold: float = -1, feather: float = 0) -> Image.Image:
    """``threshold`` in [0, 1]: hard mask (alpha ≥ threshold → opaque); -1 keeps it soft.
    ``feather`` > 0: Gaussian blur of that radius (pixels) on the edges, after thresholding."""
    if threshold >= 0:
        mask = mask.point([255 if v / 255 >= threshold else 0 for v in range(256)])
    if feather > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(feather))
    return mask


def subject_box(mask: Image.Image, level: float = 0.5) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), x1/y1 exclusive, around the mask's pixels ≥ ``level``; None when there are none."""
    return mask.point([255 if v / 255 >= level else 0 for v in range(256)]).getbbox()


def parse_color(text: str, who: str = "image") -> tuple[int, int, int]:
    """'#RRGGBB' → (r, g, b)."""
    match = COLOR.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise InvalidInput(f"{who}: colour {text!r}: write it as '#RRGGBB', e.g. '#ffffff' for white")
    value = int(match.group(1), 16)
    return (value >> 16, (value >> 8) & 0xFF, value & 0xFF)


def cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """RGBA: the image with the mask as its alpha. Where the mask is 0 the pixel is
    (0, 0, 0, 0): it looks the same, but the removed background does not survive
    in the file, which is about half the size as a PNG and twice as fast to write."""
    rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))
    rgba.paste(image, mask=mask.point(SHOWN))
    rgba.putalpha(mask)
    return rgba


def on_color(image: Image.Image, mask: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """RGB: the subject over a solid colour."""
    return Image.composite(image, Image.new("RGB", image.size, color), mask)


def on_blur(image: Image.Image, mask: Image.Image, radius: float = 8) -> Image.Image:
    """RGB: the subject over its own background blurred (at ≤ 512 px per side, then scaled back)."""
    factor = max(1, max(image.size) // 512)
    small = image.reduce(factor) if factor > 1 else image
    blurred = small.filter(ImageFilter.GaussianBlur(radius)).resize(image.size, Image.Resampling.BILINEAR)
    return Image.composite(image, blurred, mask)


def avatar_square(
    box: tuple[int, int, int, int] | None, size: tuple[int, int], margin: float = 0.1
) -> tuple[int, int, int, int]:
    """A square around ``box`` with ``margin`` of its side on each side, kept inside the image
    when it fits (else centred on the subject, the outside transparent); no box: the centre square."""
    width, height = size
    if box is None:
        side = min(width, height)
        cx, cy = width / 2, height / 2
    else:
        x0, y0, x1, y1 = box
        side = math.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = _place(cx - side / 2, side, width)
    top = _place(cy - side / 2, side, height)
    return (left, top, left + side, top + side)


def _place(start: float, side: int, length: int) -> int:
    if side <= length:
        return int(min(max(round(start), 0), length - side))
    return round(start)


def crop_square(
    image: Image.Image, mask: Image.Image, square: tuple[int, int, int, int], out: int = 512
) -> tuple[Image.Image, Image.Image]:
    """The image and mask cropped to ``square`` and resized to out×out (outside the image: mask 0)."""
    return (
        image.crop(square).resize((out, out), Image.Resampling.LANCZOS),
        mask.crop(square).resize((out, out), Image.Resampling.BILINEAR),
    )


def encode_png(image: Image.Image, compress_level: int = 3) -> bytes:
    """PNG bytes of the pixels alone: no EXIF, GPS, ICC profile, text or DPI from the upload.

    zlib's run-length strategy: on the 12 photos of ../shared, cutouts come out 3 % smaller
    and 25 % faster to write than with its default strategy, masks 13 % smaller and 20 % faster."""
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, "PNG", compress_level=compress_level, compress_type=zlib.Z_RLE)
    return buffer.getvalue()
