"""The resize stage: turns downloaded bytes into the stored image (decode, size filters, geometry,
encode) and records the stored and original sizes.

`Resizer.__call__` returns a `Resized` value or raises `ResizeError` with a short reason.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from ..config import ResizeConfig
from ..options import EncodeFormat, Interpolation, ResizeMode
from ..sample import BBOX, Sample, StageError, Status
from .base import Stage
from .imageinfo import ImageInfo, is_truncated_jpeg, probe, sniff_format

logger = logging.getLogger(__name__)
COLUMNS = (
    pa.field("width", pa.int32()),  # of the stored image
    pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()),  # of the downloaded one
    pa.field("original_height", pa.int32()),
)

INTERPOLATIONS = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.LINEAR: cv2.INTER_LINEAR,
    Interpolation.CUBIC: cv2.INTER_CUBIC,
    Interpolation.AREA: cv2.INTER_AREA,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}
WHITE = 255
# a decoded BGRA pixel, plus room for the resized copy and the encoder's buffers
BYTES_PER_DECODED_PIXEL = 12


class ResizeError(StageError):
    def __init__(self, message: str):
        super().__init__(message, Status.FAILED_TO_RESIZE)


@dataclass(frozen=True)
class Resized:
    data: bytes
    width: int | None
    height: int | None
    original_width: int | None
    original_height: int | None


class Resize(Stage):
    """Replaces `sample.data` with the resized image; fills width, height, original_width, original_height."""

    failure = Status.FAILED_TO_RESIZE

    def __init__(self, config: ResizeConfig):
        # decoding many large images at once costs memory, not speed: bound it by the cores
        concurrent_decodes = max(2, os.cpu_count() or 2)
        self.decode_slots = threading.BoundedSemaphore(concurrent_decodes)
        # every worker process of a machine decodes at once: the memory cap is shared by all of them
        self.resizer = Resizer(config, concurrent_decodes * config.processes_per_machine)

    def columns(self) -> list[pa.Field]:
        return list(COLUMNS)

    def __call__(self, sample: Sample) -> None:
        try:
            with self.decode_slots:
                resized = self.resizer(sample.source, sample.row.get(BBOX))
        except ResizeError:
            raise
        except Exception as error:  # noqa: BLE001 - a bad image never crashes a shard
            logger.debug("resize of %s failed", sample.key, exc_info=True)
            raise ResizeError(f"Image decoding error ({type(error).__name__})") from None
        sample.data = resized.data
        sample.fields.update(
            width=resized.width,
            height=resized.height,
            original_width=resized.original_width,
            original_height=resized.original_height,
        )


class Resizer:
    def __init__(self, config: ResizeConfig, concurrent_decodes: int = 1):
        self.config = config
        self.max_pixels = min(config.max_image_pixels, memory_pixel_cap(concurrent_decodes))
        c = config
        if c.encode_format is EncodeFormat.JPG:
            self.encode_params = [cv2.IMWRITE_JPEG_QUALITY, c.encode_quality]
        elif c.encode_format is EncodeFormat.PNG:
            self.encode_params = [cv2.IMWRITE_PNG_COMPRESSION, c.encode_quality]
        else:
            self.encode_params = [cv2.IMWRITE_WEBP_QUALITY, max(1, c.encode_quality)]
        self.extension = "." + c.encode_format.value

    def __call__(self, data: bytes, boxes: Any = None) -> Resized:
        c = self.config
        if c.disable_all_reencoding:
            return Resized(data, None, None, None, None)
        info = inspect(data, self.max_pixels)
        original_width, original_height = info.width, info.height
        self._check_size(original_width, original_height)
        target = self._target_size(original_width, original_height)
        img = decode(data, self._reduction(info, target))

        blurred = bool(boxes)
        if blurred:
            img = blur_boxes(img, boxes)
        unchanged = target is None or (
            target == (original_width, original_height)
            and (c.resize_mode not in (ResizeMode.CENTER_CROP, ResizeMode.BORDER) or original_width == original_height)
        )
        if unchanged and not blurred and c.skip_reencode and sniff_format(data) is c.encode_format:
            return Resized(data, original_width, original_height, original_width, original_height)
        if target is not None:
            img = self._fit(img, target, upscale=target[0] > original_width)
        if c.encode_format is EncodeFormat.JPG and img.ndim == 3 and img.shape[2] == 4:
            img = onto_white(img)
        ok, encoded = cv2.imencode(self.extension, img, self.encode_params)
        if not ok:
            raise ResizeError("Image encoding error")
        height, width = img.shape[:2]
        return Resized(encoded.tobytes(), width, height, original_width, original_height)

    def _check_size(self, width: int, height: int) -> None:
        c = self.config
        if min(width, height) < c.min_image_size:
            raise ResizeError("image too small")
        if width * height > c.max_image_area:
            raise ResizeError("image area too large")
        if max(width, height) / max(1, min(width, height)) > c.max_aspect_ratio:
            raise ResizeError("aspect ratio too large")

    def _target_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size an image of `width` x `height` is resized to before any crop or pad; None when
        it is left untouched (resize_mode no, or resize_only_if_bigger and it is not bigger)."""
        c = self.config
        size = c.image_size
        if c.resize_mode is ResizeMode.NO:
            return None
        keep_smaller_side = c.resize_mode in (ResizeMode.KEEP_RATIO, ResizeMode.CENTER_CROP)
        side = min(width, height) if keep_smaller_side else max(width, height)
        if c.resize_only_if_bigger and side <= size:
            return None
        scale = size / side
        return (
            size if side == width else max(1, round(width * scale)),
            size if side == height else max(1, round(height * scale)),
        )

    def _reduction(self, info: ImageInfo, target: tuple[int, int] | None) -> int:
        """1, 2, 4 or 8: how much smaller a JPEG can be decoded (in the DCT domain, far cheaper than a
        full decode and resize) while the final resize from it stays a downscale."""
        if info.format != "jpg" or target is None:
            return 1
        for factor in (8, 4, 2):
            if info.width // factor >= target[0] and info.height // factor >= target[1]:
                return factor
        return 1

    def _fit(self, img: np.ndarray, target: tuple[int, int], upscale: bool) -> np.ndarray:
        """Resize `img` to `target`, then crop or pad as the mode says."""
        c = self.config
        size = c.image_size
        if (img.shape[1], img.shape[0]) != target:
            interpolation = c.upscale_interpolation if upscale else c.downscale_interpolation
            if interpolation is Interpolation.AREA:
                # halving with a Gaussian pyramid first is cheaper than one large area resize, and as smooth
                while img.shape[1] // 2 >= 2 * target[0] and img.shape[0] // 2 >= 2 * target[1]:
                    img = cv2.pyrDown(img)
            img = cv2.resize(img, target, interpolation=INTERPOLATIONS[interpolation])
        height, width = img.shape[:2]
        if c.resize_mode is ResizeMode.CENTER_CROP:
            top, left = (height - size) // 2, (width - size) // 2
            img = img[top : top + size, left : left + size]
        elif c.resize_mode is ResizeMode.BORDER and (width, height) != (size, size):
            top, left = (size - height) // 2, (size - width) // 2
            fill = (WHITE,) * (img.shape[2] if img.ndim == 3 else 1)
            img = cv2.copyMakeBorder(
                img, top, size - height - top, left, size - width - left, cv2.BORDER_CONSTANT, value=fill
            )
        return img


def memory_pixel_cap(concurrent_decodes: int) -> int:
    """The most pixels one decode may have so that `concurrent_decodes` of them fit in half the memory."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62
    return memory // 2 // max(1, concurrent_decodes) // BYTES_PER_DECODED_PIXEL


def inspect(data: bytes, max_pixels: float = float("inf")) -> ImageInfo:
    """The header of encoded image bytes, refusing without decoding: unknown formats, damaged
    headers, images that declare more than `max_pixels` pixels, and truncated JPEGs."""
    info = probe(data)
    if info is None:
        raise ResizeError("unsupported image format")
    if info.width is None or info.height is None:
        raise ResizeError("Image decoding error")
    if info.width * info.height > max_pixels:
        raise ResizeError("image dimensions too large")
    if info.format == "jpg" and is_truncated_jpeg(data):
        raise ResizeError("truncated image")
    return info


REDUCED_JPEG = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def decode(data: bytes, reduction: int = 1) -> np.ndarray:
    """BGR or BGRA uint8 pixels of encoded image bytes (a JPEG `reduction` times smaller); raises ResizeError.

    EXIF orientation is ignored, as img2dataset does: width and height are those of the stored pixels.
    """
    flags = REDUCED_JPEG[reduction] | cv2.IMREAD_IGNORE_ORIENTATION if reduction > 1 else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None or img.size == 0:
        raise ResizeError("Image decoding error")
    if img.dtype != np.uint8:
        img = (img / (np.iinfo(img.dtype).max / 255.0 if img.dtype.kind in "ui" else 1 / 255.0)).clip(0, 255)
        img = img.astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 2:  # gray + alpha
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    return img


def onto_white(img: np.ndarray) -> np.ndarray:
    """Composite a BGRA image onto a white background: bgr * a/255 + 255 * (1 - a/255)."""
    alpha = cv2.merge([img[:, :, 3]] * 3)
    return cv2.add(cv2.multiply(img[:, :, :3], alpha, scale=1 / 255), cv2.bitwise_not(alpha))


def blur_boxes(img: np.ndarray, boxes: Any) -> np.ndarray:
    """Gaussian-blur each `[x0, y0, x1, y1]` box (relative coordinates), widened by 10% of its larger side.

    `boxes` is a list of boxes, or its JSON text (as csv and tsv inputs hold it).
    """
    if isinstance(boxes, str):
        boxes = json.loads(boxes)
    height, width = img.shape[:2]
    pixel_boxes = []
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
        margin = 0.1 * max(x1 - x0, y1 - y0)
        pixel_boxes.append(
            (
                max(0, int(x0 - margin)),
                max(0, int(y0 - margin)),
                min(width, int(np.ceil(x1 + margin))),
                min(height, int(np.ceil(y1 + margin))),
            )
        )
    pixel_boxes = [b for b in pixel_boxes if b[2] > b[0] and b[3] > b[1]]
    if not pixel_boxes:
        return img
    largest = max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in pixel_boxes)
    sigma = max(1.0, largest / 10)
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma)
    out = img.copy()
    for x0, y0, x1, y1 in pixel_boxes:
        out[y0:y1, x0:x1] = blurred[y0:y1, x0:x1]
    return out
