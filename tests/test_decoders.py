"""The decoders used instead of OpenCV's where they were measured to win (stages/decoders.py): libspng for
8-bit RGB(A) PNG gives OpenCV's pixels exactly, and every other PNG layout is left to OpenCV; libwebp's
scaled decode is taken for a WebP downscale and gives what an area resize gives; damaged files fall back to
OpenCV and fail as they did. The PSNR of both paths through the whole resizer: tests/test_quality.py."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from img2dataset_ng.config import Config
from img2dataset_ng.stages import decoders
from img2dataset_ng.stages.resize import ResizeError, Resizer, decode, inspect, onto_white
from tests.test_quality import photo, psnr


def encode(img: np.ndarray, ext: str, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, img, list(params))
    assert ok
    return data.tobytes()


def opencv(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """`png` with a chunk inserted right after IHDR."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[:33] + chunk + png[33:]


RGB = photo(301, 203, seed=1)
RGBA = np.dstack([RGB, np.linspace(0, 255, 301 * 203).reshape(203, 301).astype(np.uint8)])


@pytest.mark.parametrize("pixels", [RGB, RGBA], ids=["rgb", "rgba"])
@pytest.mark.parametrize("compression", [0, 3, 9])
def test_libspng_gives_opencvs_pixels_for_8_bit_rgb_and_rgba(pixels, compression):
    data = encode(pixels, ".png", cv2.IMWRITE_PNG_COMPRESSION, compression)
    ours = decoders.png(data)
    assert ours is not None, "the libspng path was not taken"
    assert ours.shape == pixels.shape and ours.dtype == np.uint8
    assert np.array_equal(ours, opencv(data))
    assert np.array_equal(decode(data), opencv(data))


def test_other_png_layouts_are_left_to_opencv():
    gray = encode(RGB[:, :, 0], ".png")
    sixteen = encode(RGB.astype(np.uint16) * 257, ".png")
    rgb = encode(RGB, ".png")
    transparent_colour = with_chunk(rgb, b"tRNS", b"\x00\x00\x00\x00\x00\x00")
    animated = with_chunk(rgb, b"acTL", struct.pack(">II", 1, 0))
    for data in (gray, sixteen, transparent_colour, animated, encode(RGB, ".jpg"), b"\x89PNG\r\n\x1a\n"):
        assert decoders.png(data) is None
    assert np.array_equal(decode(gray), cv2.cvtColor(RGB[:, :, 0], cv2.COLOR_GRAY2BGR))
    assert np.array_equal(decode(sixteen), RGB)


def test_a_damaged_png_falls_back_to_opencv_and_fails_with_its_reason():
    data = encode(RGB, ".png", cv2.IMWRITE_PNG_COMPRESSION, 1)
    idat = data.index(b"IDAT")
    damaged = data[: idat + 100] + bytes(len(data) - idat - 100)  # the compressed pixels zeroed from there
    assert decoders.png(damaged) is None
    with pytest.raises(ResizeError, match="decoding error"):
        Resizer(Config.from_options(url_list="x").resize)(damaged)
    assert decoders.png(data[: len(data) // 2]) is None  # cut short


@pytest.mark.parametrize(
    "pixels, params", [(RGB, (cv2.IMWRITE_WEBP_QUALITY, 90)), (RGBA, (cv2.IMWRITE_WEBP_QUALITY, 101))]
)
def test_libwebp_scales_while_decoding_as_an_area_resize_would(pixels, params):
    data = encode(pixels, ".webp", *params)  # lossy RGB, lossless RGBA
    ours = decoders.webp(data, (100, 67), (301, 203))
    assert ours is not None, "the scaled libwebp path was not taken"
    assert ours.shape == (67, 100, pixels.shape[2])
    area = cv2.resize(opencv(data), (100, 67), interpolation=cv2.INTER_AREA)
    if pixels.shape[2] == 4:  # libwebp scales premultiplied colours: compare what is seen, on white
        ours, area = onto_white(ours), onto_white(area)
    assert psnr(ours, area) > 35
    assert decoders.webp(data, (100, 67), (300, 203)) is None  # not the size the header said


def test_the_resizer_takes_the_scaled_webp_path_only_to_downscale():
    def resizer(**options) -> Resizer:
        return Resizer(Config.from_options(url_list="x", resize_mode="keep_ratio", **options).resize)

    r = resizer(image_size=128)
    data = encode(RGB, ".webp", cv2.IMWRITE_WEBP_QUALITY, 90)
    assert r.plan(inspect(data)).scaled_to == (190, 128)
    stored = r(data)
    assert (stored.width, stored.height) == (190, 128)
    expected = cv2.resize(RGB, (190, 128), interpolation=cv2.INTER_AREA)
    assert psnr(cv2.imdecode(np.frombuffer(stored.data, np.uint8), cv2.IMREAD_COLOR), expected) > 30  # JPEG q95
    assert resizer(image_size=256).plan(inspect(data)).scaled_to is None  # an upscale
    assert resizer(image_size=128, downscale_interpolation="lanczos").plan(inspect(data)).scaled_to is None


def test_a_damaged_webp_falls_back_to_opencv_and_fails_with_its_reason():
    data = encode(RGB, ".webp", cv2.IMWRITE_WEBP_QUALITY, 90)
    cut = data[: len(data) // 2]
    assert decoders.webp(cut, (100, 67), (301, 203)) is None
    with pytest.raises(ResizeError):
        Resizer(Config.from_options(url_list="x", image_size=128).resize)(cut)


def test_a_png_whose_checksums_are_wrong_but_whose_pixels_decode_is_kept():
    data = bytearray(encode(RGB, ".png"))
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    data[idat + 4 + length] ^= 0xFF  # the first IDAT chunk's CRC
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED) is None  # libpng refuses it
    assert np.array_equal(decoders.png(bytes(data)), RGB)
