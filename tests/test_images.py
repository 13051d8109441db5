"""mlservices.images: decoding that never trusts the file, tensors, masks, cutouts, PNGs.

Every test builds its tiny image in memory: no model, no ../shared.
"""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from mlservices import InvalidInput
from mlservices.images import (
    MEAN,
    STD,
    avatar_square,
    crop_square,
    cutout,
    decode,
    encode_png,
    mask_image,
    normalise_output,
    on_blur,
    on_color,
    open_image,
    parse_color,
    refine,
    subject_box,
    to_rgb,
    to_tensor,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, format: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def halves(size=(16, 8), left=RED, right=BLUE) -> Image.Image:
    """Left half ``left``, right half ``right``: orientation is visible."""
    image = Image.new("RGB", size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height, followed by one tiny IDAT: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def png_chunks(data: bytes) -> list[bytes]:
    kinds, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kinds.append(data[at + 4 : at + 8])
        at += 12 + length
    return kinds


def colour_at(image: Image.Image, xy) -> tuple:
    return image.convert("RGB").getpixel(xy)


# --- decoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("L", (4, 4), 128), (128, 128, 128)),
        (Image.new("1", (4, 4), 1), (255, 255, 255)),
        (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), WHITE),  # transparent: flattened onto white
        (Image.new("LA", (4, 4), (0, 0)), WHITE),
        (Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
        (Image.new("F", (4, 4), 0.5), (255, 255, 255)),  # scaled by its maximum
    ],
    ids=["L", "1", "CMYK", "RGBA-opaque", "RGBA-transparent", "LA-transparent", "LA-opaque", "F"],
)
def test_every_mode_becomes_rgb(image, expected):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert rgb.getpixel((1, 1)) == expected


def test_a_palette_image_with_a_transparent_index_is_flattened_onto_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    rgb = decode(encoded(image), None).image
    assert rgb.getpixel((0, 0)) == WHITE and rgb.getpixel((1, 1)) == RED


def test_sixteen_bit_grey_is_scaled_by_its_maximum():
    values = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)  # a 12-bit sensor's range
    image = Image.fromarray(values).convert("I;16")
    decoded = decode(encoded(image), None)
    assert decoded.image.mode == "RGB"
    assert [decoded.image.getpixel(xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 64, 128, 255]


@pytest.mark.parametrize("orientation, size, top_left", [(1, (16, 8), RED), (6, (8, 16), RED), (8, (8, 16), BLUE), (3, (16, 8), BLUE)])
def test_exif_orientation_is_applied(orientation, size, top_left):
    data = encoded(halves(), "JPEG", exif=with_orientation(orientation), quality=95)
    decoded = decode(data, None)
    assert decoded.size == size and decoded.image.size == size
    assert max(abs(a - b) for a, b in zip(decoded.image.getpixel((1, 1)), top_left)) < 40


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_keeps_its_original_size():
    data = encoded(halves((256, 128)), "JPEG", exif=with_orientation(6), quality=95)
    decoded = decode(data, None, reduce_to=32)
    assert decoded.size == (128, 256)  # upright
    assert decoded.image.size == (32, 64)  # 1/4 scale: the largest that keeps 32 pixels a side
    assert decode(data, None).image.size == (128, 256)  # without reduce_to: full size
    assert decode(encoded(halves((256, 128))), None, reduce_to=32).image.size == (256, 128)  # PNG: no draft


def test_a_decompression_bomb_is_refused_from_its_header_before_any_decoding():
    bomb = png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"the image is 10,000,000,000 pixels; the limit is 40,000,000\."):
        decode(bomb, max_pixels=40_000_000)
    with pytest.raises(InvalidInput, match="the image is 10,000,000,000 pixels; the limit is 1,000"):
        open_image(bomb, max_pixels=1_000)
    assert time.monotonic() - started < 1
    smaller = png_header_only(10_000, 5_000)  # under Pillow's own limit: our check names both sides
    with pytest.raises(InvalidInput, match=r"10000×5000 = 50,000,000 pixels; the limit is 40,000,000\."):
        decode(smaller, max_pixels=40_000_000)


def test_without_our_limit_pillows_own_bomb_check_is_an_invalid_input_too():
    with pytest.raises(InvalidInput, match=r"10,000,000,000 pixels; the limit is 178,956,970 \(Pillow's\)"):
        decode(png_header_only(100_000, 100_000), max_pixels=None)


def test_an_image_over_the_pixel_limit_is_refused_with_its_size():
    with pytest.raises(InvalidInput, match=r"10×10 = 100 pixels; the limit is 99"):
        decode(encoded(Image.new("RGB", (10, 10))), max_pixels=99)
    assert decode(encoded(Image.new("RGB", (10, 10))), max_pixels=100).size == (10, 10)


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_a_truncated_image_is_refused(format):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encoded(noise, format)
    with pytest.raises(InvalidInput, match="the image is truncated or corrupt"):
        decode(data[: len(data) * 2 // 3], None)


def test_not_an_image_or_a_format_not_allowed_is_refused():
    with pytest.raises(InvalidInput, match="not an image it can read; send one of: jpeg, png"):
        decode(b"hello, I am text", None)
    gif = encoded(Image.new("RGB", (4, 4)), "GIF")
    with pytest.raises(InvalidInput, match="send one of: png"):
        decode(gif, None, formats=("png",))
    assert decode(gif, None).size == (4, 4)


# --- into the model -----------------------------------------------------------


def test_tensor_is_nchw_float32_divided_by_the_maximum_and_imagenet_normalised():
    image = Image.new("RGB", (7, 5), (200, 100, 0))
    x = to_tensor(image, (4, 3))
    assert x.shape == (3, 3, 4) and x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    expected = (np.array([200, 100, 0]) / 200 - MEAN) / STD  # divided by the image's max (200), not 255
    np.testing.assert_allclose(x[:, 1, 1], expected, rtol=1e-5)


def test_a_black_image_gives_a_finite_tensor():
    assert np.isfinite(to_tensor(Image.new("RGB", (4, 4)), (4, 4))).all()


# --- out of the model ---------------------------------------------------------


def test_output_is_min_max_normalised():
    np.testing.assert_allclose(normalise_output(np.array([[0.2, 0.4], [0.6, 0.2]])), [[0, 0.5], [1, 0]], atol=1e-6)
    np.testing.assert_allclose(normalise_output(np.full((2, 2), 0.7)), np.full((2, 2), 0.7), atol=1e-6)  # flat: kept


def test_mask_is_resized_bilinear_to_the_original_size():
    mask = mask_image(np.array([[0.0, 1.0], [0.0, 1.0]]), (8, 6))
    assert mask.mode == "L" and mask.size == (8, 6)
    row = [mask.getpixel((x, 3)) for x in range(8)]
    assert row[0] == 0 and row[-1] == 255 and row == sorted(row) and 0 < row[4] < 255  # a smooth ramp


def test_threshold_makes_the_mask_hard_and_feather_softens_its_edge():
    mask = Image.fromarray(np.array([[0, 127, 128, 255]] * 4, dtype=np.uint8), "L")
    assert list(np.asarray(refine(mask))[0]) == [0, 127, 128, 255]  # -1: soft, unchanged
    assert list(np.asarray(refine(mask, threshold=0.5))[0]) == [0, 0, 255, 255]
    hard = Image.fromarray(np.array([[0] * 8 + [255] * 8] * 16, dtype=np.uint8), "L")
    edge = np.asarray(refine(hard, threshold=0.5, feather=2))[8]
    assert edge[0] == 0 and edge[-1] == 255 and 0 < edge[7] < 255 and 0 < edge[8] < 255


def test_subject_box_is_around_the_pixels_at_least_half_opaque():
    mask = Image.new("L", (10, 8), 0)
    mask.paste(200, (2, 3, 6, 7))
    mask.putpixel((9, 0), 100)  # faint: not subject
    assert subject_box(mask) == (2, 3, 6, 7)
    assert subject_box(Image.new("L", (4, 4), 127)) is None


# --- composing ----------------------------------------------------------------


def test_cutout_takes_the_mask_as_alpha_and_keeps_no_colour_where_it_hides_all():
    mask = Image.fromarray(np.array([[0, 1, 128, 255]], dtype=np.uint8), "L")
    rgba = cutout(Image.new("RGB", (4, 1), RED), mask)
    assert rgba.mode == "RGBA"
    assert [rgba.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0, 0), (*RED, 1), (*RED, 128), (*RED, 255)]


@pytest.mark.parametrize("text, rgb", [("#ffffff", WHITE), ("#FF0000", RED), ("#0000ff", BLUE), (" #102030 ", (16, 32, 48))])
def test_parse_color(text, rgb):
    assert parse_color(text) == rgb


@pytest.mark.parametrize("bad", ["red", "#fff", "#gggggg", "ff0000", "", None])
def test_parse_color_refuses_with_the_form(bad):
    with pytest.raises(InvalidInput, match="write it as '#RRGGBB'"):
        parse_color(bad)


def test_subject_over_a_colour():
    mask = Image.fromarray(np.array([[0, 255, 128]], dtype=np.uint8), "L")
    out = on_color(Image.new("RGB", (3, 1), RED), mask, BLUE)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == BLUE and out.getpixel((1, 0)) == RED
    r, _, b = out.getpixel((2, 0))
    assert 100 < r < 160 and 100 < b < 160  # half and half


def test_subject_over_its_blurred_background():
    image = Image.new("RGB", (40, 40), WHITE)
    image.paste(RED, (0, 0, 20, 40))
    mask = Image.new("L", (40, 40), 0)
    mask.paste(255, (0, 0, 10, 40))
    out = on_blur(image, mask, radius=4)
    assert out.getpixel((5, 20)) == RED  # the subject is untouched
    blurred = out.getpixel((20, 20))
    assert blurred != RED and blurred != WHITE  # the background's edge is blurred


def test_avatar_square_has_a_margin_and_stays_inside_when_it_fits():
    assert avatar_square((40, 40, 60, 80), (200, 200)) == (26, 36, 74, 84)  # 40 tall + 10% each side = 48
    assert avatar_square((0, 0, 20, 20), (200, 200)) == (0, 0, 24, 24)  # shifted inside, not cut
    assert avatar_square((190, 90, 200, 110), (200, 200)) == (176, 88, 200, 112)
    assert avatar_square(None, (300, 200)) == (50, 0, 250, 200)  # no subject: the centre square


def test_avatar_square_larger_than_the_image_is_centred_on_the_subject():
    left, top, right, bottom = avatar_square((0, 0, 100, 50), (100, 50))
    assert right - left == bottom - top == 120
    assert (left, top) == (-10, -35)


def test_crop_square_resizes_and_leaves_outside_the_image_transparent():
    image, mask = Image.new("RGB", (10, 10), RED), Image.new("L", (10, 10), 255)
    cropped, cropped_mask = crop_square(image, mask, (-10, 0, 10, 20), out=32)
    assert cropped.size == cropped_mask.size == (32, 32)
    assert cropped_mask.getpixel((2, 2)) == 0 and cropped_mask.getpixel((28, 2)) == 255


# --- encoding -----------------------------------------------------------------


def test_png_carries_no_metadata_from_the_upload():
    exif = with_orientation(1)
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 0.0), 3: "E", 4: (13.0, 24.0, 0.0)}  # GPS
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    upload = encoded(halves(), "JPEG", exif=exif, icc_profile=icc, dpi=(300, 300))
    assert Image.open(io.BytesIO(upload)).info.get("icc_profile")  # the upload has them
    image = decode(upload, None).image
    png = encode_png(cutout(image, Image.new("L", image.size, 255)))
    assert set(png_chunks(png)) == {b"IHDR", b"IDAT", b"IEND"}
    reopened = Image.open(io.BytesIO(png))
    assert reopened.mode == "RGBA" and not reopened.getexif() and "icc_profile" not in reopened.info
    assert b"GPS" not in png and icc[:40] not in png


def test_png_round_trips_the_pixels():
    mask = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), "L")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(mask)))), np.asarray(mask))
