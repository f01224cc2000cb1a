"""Header probing against files written by real encoders (OpenCV and Pillow)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from img2dataset_ng.stages.imageinfo import is_truncated_jpeg, probe


def pillow(fmt: str, size: tuple[int, int], mode: str = "RGB", **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red").save(out, fmt, **save)
    return out.getvalue()


def opencv(ext: str, size: tuple[int, int], params: tuple[int, ...] = ()) -> bytes:
    ok, data = cv2.imencode(ext, np.zeros((size[1], size[0], 3), np.uint8), list(params))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(
    "data, fmt, size",
    [
        (opencv(".jpg", (321, 123)), "jpg", (321, 123)),
        (pillow("JPEG", (77, 55), progressive=True), "jpg", (77, 55)),
        (pillow("JPEG", (40, 30), mode="CMYK"), "jpg", (40, 30)),
        (opencv(".png", (500, 2)), "png", (500, 2)),
        (opencv(".webp", (129, 65), (cv2.IMWRITE_WEBP_QUALITY, 80)), "webp", (129, 65)),
        (opencv(".webp", (129, 65), (cv2.IMWRITE_WEBP_QUALITY, 101)), "webp", (129, 65)),  # lossless
        (pillow("WEBP", (33, 44), mode="RGBA"), "webp", (33, 44)),
        (pillow("GIF", (12, 34)), "gif", (12, 34)),
        (opencv(".bmp", (31, 17)), "bmp", (31, 17)),
        (pillow("TIFF", (300, 70)), "tiff", (300, 70)),
        (pillow("TIFF", (300, 70), compression="tiff_lzw"), "tiff", (300, 70)),
    ],
)
def test_probe_reads_format_and_size_from_the_header(data, fmt, size):
    info = probe(data)
    assert (info.format, info.width, info.height) == (fmt, *size)


def test_unknown_and_damaged():
    assert probe(b"<html>") is None and probe(b"") is None
    damaged = probe(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    assert damaged.format == "jpg" and damaged.width is None


def test_truncated_jpeg_is_detected():
    data = opencv(".jpg", (200, 100))
    assert not is_truncated_jpeg(data) and not is_truncated_jpeg(data + b"trailer after the end")
    assert is_truncated_jpeg(data[: len(data) // 2])
    assert is_truncated_jpeg(data[:20])  # the headers, no scan
    # a thumbnail in an APP1 segment brings its own scan and end-of-image marker before the main scan
    thumbnail = opencv(".jpg", (16, 8))
    with_thumbnail = data[:2] + b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail + data[2:]
    assert not is_truncated_jpeg(with_thumbnail)
    assert is_truncated_jpeg(with_thumbnail[:-100])  # cut in the main scan


def test_a_pngs_decode_memory_counts_libspngs_copy_of_the_file():
    ok, data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    info = probe(data.tobytes())
    assert info.bytes_per_pixel == 3 and info.buffer_bytes == len(data)
