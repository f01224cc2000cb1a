"""Output quality: for every resize mode, what we store is compared with a straightforward
full-resolution decode + area resize (+ crop or pad) of the same source; PSNR must stay above 35 dB,
whatever shortcut the resizer takes: large JPEGs decoded at reduced scale, halvings then bilinear in
place of one area resize, PNG decoded by libspng and WebP scaled by libwebp while decoding (every case
of those formats here takes those decoders: tests/test_decoders.py checks that they are taken).

The output is stored as PNG so that the comparison measures the resize path and not the encoder:
on this deliberately hard content (fine texture and sensor noise) JPEG at quality 95 alone costs
the full-resolution path itself about 35 dB."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from img2dataset_ng.config import Config
from img2dataset_ng.stages.resize import Resizer

SIZE = 256


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """Photo-like content: shaded shapes at several scales, fine texture and sensor noise."""
    rng = np.random.default_rng(seed)
    small = (max(8, width // 8), max(8, height // 8))
    y, x = np.mgrid[0 : small[1], 0 : small[0]].astype(np.float32)
    img = np.stack(
        [120 + 80 * np.sin(x / small[0] * rng.uniform(2, 9) + y / small[1] * rng.uniform(2, 9)) for _ in range(3)], -1
    )
    for _ in range(12):
        center = (int(rng.integers(0, small[0])), int(rng.integers(0, small[1])))
        axes = (int(rng.integers(2, small[0] // 3 + 3)), int(rng.integers(2, small[1] // 3 + 3)))
        cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    img += 20 * np.sin(np.mgrid[0:height, 0:width][1] / 3.0)[..., None]  # texture finer than the target pixels
    img += rng.normal(0, 6, (height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def reference(src: np.ndarray, mode: str) -> np.ndarray:
    """Full decode, area resize, then crop or pad: the straightforward way."""
    height, width = src.shape[:2]
    side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
    scale = SIZE / side
    target = (SIZE if side == width else round(width * scale), SIZE if side == height else round(height * scale))
    img = cv2.resize(src, target, interpolation=cv2.INTER_AREA)
    if mode == "center_crop":
        top, left = (img.shape[0] - SIZE) // 2, (img.shape[1] - SIZE) // 2
        img = img[top : top + SIZE, left : left + SIZE]
    elif mode == "border":
        top, left = (SIZE - img.shape[0]) // 2, (SIZE - img.shape[1]) // 2
        img = cv2.copyMakeBorder(
            img,
            top,
            SIZE - img.shape[0] - top,
            left,
            SIZE - img.shape[1] - left,
            cv2.BORDER_CONSTANT,
            value=(255, 255, 255),
        )
    return img


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


CASES = [
    ((4032, 3024), "jpg"),
    ((3000, 4000), "jpg"),
    ((1600, 1200), "jpg"),
    ((700, 520), "jpg"),
    ((4032, 3024), "png"),  # three halvings, then bilinear
    ((3000, 4000), "webp"),  # scaled by libwebp
    ((1155, 867), "webp"),  # odd sides
    # less than halving to the target, without a reduced decode: the bilinear shortcut of an area resize
    ((480, 360), "png"),
    ((777, 1201), "png"),  # one halving with an odd side left out
    ((500, 660), "webp"),
    ((300, 290), "jpg"),
    # a JPEG decoded at half size, then less than halved; one decoded whole (the bilinear shortcut both)
    ((1000, 750), "jpg"),
    ((640, 480), "jpg"),
]


@functools.cache
def encoded_source(size: tuple[int, int], source_format: str) -> tuple[bytes, np.ndarray]:
    """A photo-like source encoded as `source_format`, and its pixels as any decoder sees them."""
    params = {
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, 92],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 1],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, 90],
    }[source_format]
    ok, data = cv2.imencode("." + source_format, photo(*size, seed=size[0]), params)
    return data.tobytes(), cv2.imdecode(data, cv2.IMREAD_COLOR)


@pytest.mark.parametrize("mode", ["keep_ratio", "keep_ratio_largest", "center_crop", "border"])
@pytest.mark.parametrize("size, source_format", CASES)
def test_psnr_against_full_decode_and_area_resize(mode, size, source_format):
    data, source = encoded_source(size, source_format)
    options = {"resize_mode": mode, "encode_format": "png", "encode_quality": 1}
    ours = Resizer(Config.from_options(url_list="x", **options).resize)(data)
    stored = cv2.imdecode(np.frombuffer(ours.data, np.uint8), cv2.IMREAD_COLOR)
    expected = reference(source, mode)
    assert stored.shape == expected.shape
    assert psnr(stored, expected) > 35, f"{psnr(stored, expected):.1f} dB"
