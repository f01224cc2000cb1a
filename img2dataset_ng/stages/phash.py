"""The perceptual hash stage: a `phash` column with the DCT hash of the stored image (after resize).

The hash is the one the `imagehash` library's `phash` computes, so that hashes made here and
hashes made from the stored files with `imagehash.phash(PIL.Image.open(path))` can be compared:

1. luma, as PIL's `convert("L")` makes it: (19595 R + 38470 G + 7471 B + 32768) >> 16, alpha ignored;
2. a 32x32 resize with PIL's Lanczos filter (what imagehash asks PIL for): a separable convolution
   whose support widens with the downscale factor, with PIL's 22-bit fixed-point weights and 8-bit
   rounding after each pass (done here as two small matrix products, exact in float64);
3. the 2-D DCT-II (`cv2.dct`, orthonormal; its first row and column are scaled by sqrt(2) to give the
   relative scale of the unnormalised DCT imagehash uses, which the median comparison depends on);
4. the top-left 8x8 coefficients, each bit `coefficient > median of the 64`, row-major, first bit the
   most significant: 64 bits, written as 16 lowercase hex digits (imagehash's `str(hash)`).

Given the same pixels the result is imagehash's exactly. During a download the stage hashes the pixels
the resize stage encoded (`Sample.pixels`), so it never decodes the image a second time; what it
hashes differs from a decode of the stored file only by the encoder's loss (a few bits at most, for
jpg and webp). Without those pixels (a stage order where resize did not keep them,
`disable_all_reencoding`) it decodes the stored bytes, under the same checks and memory budget as the
resize stage; an image it cannot decode gets a null `phash`, as unreadable EXIF gets a null `exif`.
"""

from __future__ import annotations

import functools
import logging
import math

import cv2
import numpy as np
import pyarrow as pa

from .. import budget
from ..config import ResizeConfig
from ..sample import Sample
from .base import Stage
from .resize import BGRA, decode, inspect, to_uint8

logger = logging.getLogger(__name__)
COLUMN = pa.field("phash", pa.string())

HASH_SIDE = 8  # the hash is the sign pattern of HASH_SIDE x HASH_SIDE low frequencies: 64 bits
SIDE = 32  # the image is resized to SIDE x SIDE first (imagehash: hash_size 8 x highfreq_factor 4)
HEX_DIGITS = HASH_SIDE * HASH_SIDE // 4
LANCZOS_LOBES = 3.0  # PIL's Lanczos filter support
PRECISION_BITS = 22  # PIL's fixed-point weights for 8-bit images (32 - 8 - 2)
# large images are converted and filtered this many pixels at a time (a 256x256 image in one go): a
# hash's working memory stays ~2 MB, so hashing kept pixels takes nothing more from the decode budget
CHUNK_PIXELS = 1 << 16
BAND_BYTES = 32  # per pixel of a band: its luma sums, its float64 copy, temporaries
MAX_CACHED_SIZE = 4096  # sides whose weights are kept (at most 1 MB each); others are computed each time
# PIL's ITU-R 601-2 luma in 16-bit fixed point, in OpenCV's channel order (B, G, R)
LUMA_BGR = (7471, 38470, 19595)


def phash(gray_or_bgr: np.ndarray) -> int:
    """The 64-bit perceptual hash of an image: 2-D gray, or BGR / BGRA (as OpenCV decodes), 8-bit.

    Deeper images (16-bit, float) are scaled to 8 bits as the resize stage does."""
    img = gray_or_bgr
    if img.dtype != np.uint8:
        img = to_uint8(img.copy())
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim != 2 and not (img.ndim == 3 and img.shape[2] in (3, 4)):
        raise ValueError(f"phash takes gray, BGR or BGRA pixels; got an array of shape {img.shape}")
    small = _lanczos_32(img)
    coefficients = cv2.dct(small.astype(np.float64))[:HASH_SIDE, :HASH_SIDE]
    # cv2.dct is orthonormal: its first row and column are sqrt(2) smaller, relative to the others,
    # than in the unnormalised DCT-II imagehash uses; the median comparison needs the same scale
    coefficients[0, :] *= math.sqrt(2)
    coefficients[:, 0] *= math.sqrt(2)
    bits = (coefficients > np.median(coefficients)).ravel()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def to_hex(value: int) -> str:
    """A hash as 16 lowercase hex digits, as `str(imagehash.phash(...))` writes it."""
    return f"{value:0{HEX_DIGITS}x}"


def from_hex(text: str) -> int:
    """A hash from its 16 hex digits (any case); ValueError for anything else."""
    if len(text) != HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"a phash is {HEX_DIGITS} hex digits; got {text!r}")
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    """How many of the 64 bits of two hashes differ (0: same image for the hash; a few: near duplicates)."""
    return bin(a ^ b).count("1")


def _lanczos_32(img: np.ndarray) -> np.ndarray:
    """SIDE x SIDE 8-bit luma of gray, BGR or BGRA pixels, as PIL resizes an "L" image with LANCZOS:
    a horizontal pass, rounded to 8 bits, then a vertical one. Large images go a band of rows at a time,
    so that no full-size copy of them is made."""
    height, width = img.shape[:2]
    columns = _weights(width)
    rows = max(1, CHUNK_PIXELS // width)
    bands = []
    for top in range(0, height, rows):
        band = _luma(img[top : top + rows])
        bands.append(band if columns is None else _round(_product(band.astype(np.float64), columns, transposed=True)))
    horizontal = np.concatenate(bands) if len(bands) > 1 else bands[0]
    lines = _weights(height)
    return horizontal if lines is None else _round(_product(lines, horizontal.astype(np.float64)))


def _product(a: np.ndarray, b: np.ndarray, transposed: bool = False) -> np.ndarray:
    """a @ b (or a @ b.T), by OpenCV: numpy's `@` goes to OpenBLAS, whose own threads spin beside the
    download threads (measured: 9 ms of CPU per sample for a 1 ms hash); OpenCV runs on the caller's thread
    (`worker.tune_process` sets its thread count to 1). Exact: integer sums far below 2**53."""
    return cv2.gemm(a, b, 1.0, None, 0.0, flags=cv2.GEMM_2_T if transposed else 0)


def _luma(img: np.ndarray) -> np.ndarray:
    """PIL's `convert("L")` of 8-bit pixels: (19595 R + 38470 G + 7471 B + 32768) >> 16; alpha ignored."""
    if img.ndim == 2:
        return img
    total = np.full(img.shape[:2], 1 << 15, np.uint32)
    for channel, weight in enumerate(LUMA_BGR):
        total += img[:, :, channel].astype(np.uint32) * weight
    return (total >> 16).astype(np.uint8)


def _weights(size: int) -> np.ndarray | None:
    """SIDE x size matrix of PIL's fixed-point Lanczos weights for resizing `size` pixels to SIDE; None
    when there is nothing to resize (PIL skips that pass). Those of the usual sizes are kept."""
    if size == SIDE:
        return None
    return _cached_weights(size) if size <= MAX_CACHED_SIZE else _make_weights(size)


@functools.lru_cache(maxsize=64)
def _cached_weights(size: int) -> np.ndarray:
    return _make_weights(size)


def _make_weights(size: int) -> np.ndarray:
    scale = size / SIDE
    filter_scale = max(scale, 1.0)  # a downscale widens the filter: it averages what it drops
    support = LANCZOS_LOBES * filter_scale
    matrix = np.zeros((SIDE, size))
    for out in range(SIDE):
        center = (out + 0.5) * scale
        first = max(0, int(center - support + 0.5))  # int(): truncation toward zero, as C's cast
        last = min(size, int(center + support + 0.5))
        x = (np.arange(first, last) - center + 0.5) / filter_scale
        weights = np.where((x >= -LANCZOS_LOBES) & (x < LANCZOS_LOBES), np.sinc(x) * np.sinc(x / LANCZOS_LOBES), 0.0)
        total = weights.sum()
        if total != 0:
            weights = weights / total
        scaled = weights * (1 << PRECISION_BITS)
        matrix[out, first:last] = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))
    matrix.setflags(write=False)
    return matrix


def _round(sums: np.ndarray) -> np.ndarray:
    """PIL's 8-bit result of fixed-point sums: (sum + half) >> PRECISION_BITS, clipped to 0-255.
    The sums are integers well below 2**53, so float64 holds them exactly."""
    return np.clip(np.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)), 0, 255).astype(np.uint8)


class PHash(Stage):
    """The `phash` column: 16 hex digits, the perceptual hash of the stored image; null on failed rows
    and when the stored bytes cannot be decoded. Never fails a sample."""

    def __init__(self, config: ResizeConfig):
        self.max_pixels = config.max_image_pixels
        self.config = config
        self._budget: budget.Budget | None = None

    def columns(self) -> list[pa.Field]:
        return [COLUMN]

    def __call__(self, sample: Sample) -> None:
        value = phash(sample.pixels) if sample.pixels is not None else self._decode_and_hash(sample)
        sample.fields[COLUMN.name] = None if value is None else to_hex(value)

    def _decode_and_hash(self, sample: Sample) -> int | None:
        """The hash of the stored bytes, decoded as PIL opens them (EXIF orientation ignored): checked
        against max_image_pixels first and decoded within the process's decode budget."""
        if sample.data is None:
            return None
        try:
            info = inspect(sample.data, self.max_pixels)
            # the decoded pixels, an 8-bit BGR(A) copy of deeper ones, and the luma of a band
            memory = (
                info.width * info.height * (info.bytes_per_pixel + BGRA) + info.buffer_bytes + CHUNK_PIXELS * BAND_BYTES
            )
            if self._budget is None:
                self._budget = budget.decodes(self.config.memory_budget, self.config.processes_per_machine)
            if not self._budget.acquire(memory):
                return None
            try:
                return phash(decode(sample.data))
            finally:
                self._budget.release(memory)
        except Exception:  # noqa: BLE001 - stored bytes that are no image have no hash, the sample stands
            logger.debug("phash of %s: stored bytes not decodable", sample.key, exc_info=True)
            return None
