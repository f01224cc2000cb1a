"""The resize stage: turns downloaded bytes into the stored image (decode, size filters, geometry,
encode) and records the stored and original sizes.

`Resizer.__call__` returns a `Resized` value or raises `ResizeError` with a short reason.

The bytes come from sites we do not trust, so nothing is allocated on the file's word alone:

- sizes come from `imageinfo.probe`, which reads headers as the decoder does and refuses ambiguous
  ones; after decoding, pixels whose size differs from the probed one fail the sample;
- every intermediate of the resize path (the decoded pixels, the resize target, the padded output)
  must be within `max_image_pixels`: a 1x10000 image in `center_crop` would otherwise be resized to
  256x2,560,000 before its crop. For `center_crop` of such extreme shapes, only the source region
  that ends up in the crop is resized (normal shapes keep the full resize, whose output is the
  reference);
- the bytes a decode and its intermediates take (from the probed size and decoded bytes per pixel)
  are taken from the process's decode budget (`budget.decodes`) before decoding and given back
  after: threads wait rather than allocate, and a decode that can never fit is refused.

OpenCV's own `OPENCV_IO_MAX_IMAGE_PIXELS` is not used as a backstop: OpenCV reads it once, when the
library is loaded (often before this module, by the caller), and it is one limit for the whole
process while ours is per configuration. Its default (2^30 pixels) stays the decoder's last word.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from .. import budget
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
BGRA = 4  # bytes of a pixel once converted to 8-bit BGR(A), the most any later step holds per pixel
# past this many times the output's area, a center crop resizes only the region it keeps
CROP_FIRST_AREA = 16
TOO_LARGE = "image dimensions too large"


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
        self.resizer = Resizer(config)

    def columns(self) -> list[pa.Field]:
        return list(COLUMNS)

    def __call__(self, sample: Sample) -> None:
        try:
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


# decodes are single-threaded (workers set OpenCV to one thread): more at once than cores gains nothing
_decode_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))


@dataclass(frozen=True)
class Plan:
    """How one image is decoded and resized, and the most memory that takes."""

    reduction: int  # the JPEG decode is this many times smaller on each side
    decoded: tuple[int, int]  # width, height of the decoded pixels
    target: tuple[int, int] | None  # the resize target before any crop or pad; None: not resized
    crop_first: bool  # center crop: resize only the region of the source that is kept
    memory: int  # bytes


class Resizer:
    """Decodes, checks, resizes and encodes images (thread-safe).

    Every decode takes its memory from `decode_budget`, by default the process's (`budget.decodes`),
    which all the resizers of a process share.
    """

    def __init__(self, config: ResizeConfig, decode_budget: budget.Budget | None = None):
        self.config = config
        self.max_pixels = config.max_image_pixels
        self.budget = decode_budget or budget.decodes(config.memory_budget, config.processes_per_machine)
        c = config
        if c.encode_format is EncodeFormat.JPG:
            self.encode_params = [cv2.IMWRITE_JPEG_QUALITY, c.encode_quality]
        elif c.encode_format is EncodeFormat.PNG:
            self.encode_params = [cv2.IMWRITE_PNG_COMPRESSION, c.encode_quality]
        else:
            self.encode_params = [cv2.IMWRITE_WEBP_QUALITY, max(1, c.encode_quality)]
        self.extension = "." + c.encode_format.value

    def __call__(self, data: bytes, boxes: Any = None) -> Resized:
        if self.config.disable_all_reencoding:
            return Resized(data, None, None, None, None)
        info = inspect(data, self.max_pixels)
        self._check_size(info.width, info.height)
        plan = self.plan(info, blurred=bool(boxes))
        if not self.budget.acquire(plan.memory):  # waits while others hold the memory; False: can never fit
            raise ResizeError(TOO_LARGE)
        try:
            with _decode_slots:
                return self._resize(data, info, plan, boxes)
        finally:
            self.budget.release(plan.memory)

    def plan(self, info: ImageInfo, blurred: bool = False) -> Plan:
        """The decode and resize of an image of `info`; raises ResizeError when an intermediate
        would have more than `max_image_pixels` pixels."""
        c = self.config
        target = self._target_size(info.width, info.height)
        reduction = self._reduction(info, target)
        decoded = (math.ceil(info.width / reduction), math.ceil(info.height / reduction))
        square = c.image_size * c.image_size
        crop_first = (
            c.resize_mode is ResizeMode.CENTER_CROP and target is not None and _area(target) > CROP_FIRST_AREA * square
        )
        resized = square if crop_first else _area(target or (0, 0))
        output = square if target is not None and c.resize_mode in (ResizeMode.CENTER_CROP, ResizeMode.BORDER) else 0
        if max(_area(decoded), resized, output) > self.max_pixels:
            raise ResizeError(TOO_LARGE)
        pixels = _area(decoded)
        decode_bytes = pixels * info.bytes_per_pixel + info.buffer_bytes // (reduction * reduction)
        # the 8-bit BGR(A) copy, a blurred copy, and the Gaussian pyramid of an area downscale (1/4 + 1/16 + ...)
        working = pixels * BGRA * (1 + (2 if blurred else 0) + 1)
        memory = decode_bytes + working + (resized + output) * BGRA * 2  # resized, output and the encoded bytes
        return Plan(reduction, decoded, target, crop_first, memory)

    def _resize(self, data: bytes, info: ImageInfo, plan: Plan, boxes: Any) -> Resized:
        c = self.config
        original_width, original_height = info.width, info.height
        img = decode(data, plan.reduction)
        if (img.shape[1], img.shape[0]) != plan.decoded:
            raise ResizeError("image size differs from its header")
        target = plan.target
        blurred = bool(boxes)
        if blurred:
            img = blur_boxes(img, boxes)
        unchanged = target is None or (
            target == (original_width, original_height)
            and (c.resize_mode not in (ResizeMode.CENTER_CROP, ResizeMode.BORDER) or original_width == original_height)
        )
        if unchanged and not blurred and c.skip_reencode and sniff_format(data) is c.encode_format:
            return Resized(data, original_width, original_height, original_width, original_height)
        if plan.crop_first:
            img = self._crop_first(img, target)
        elif target is not None:
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

    def _crop_first(self, img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
        """The center crop of `img` resized to `target`, made by resizing only the source region
        that the crop keeps: for shapes so elongated that the full resize would be huge."""
        c = self.config
        size = c.image_size
        height, width = img.shape[:2]
        scale_x, scale_y = target[0] / width, target[1] / height
        left, top = (target[0] - size) // 2, (target[1] - size) // 2
        x0, y0 = int(left / scale_x), int(top / scale_y)
        x1 = min(width, max(x0 + 1, math.ceil((left + size) / scale_x)))
        y1 = min(height, max(y0 + 1, math.ceil((top + size) / scale_y)))
        region = img[y0:y1, x0:x1]
        upscale = region.shape[1] < size or region.shape[0] < size
        interpolation = c.upscale_interpolation if upscale else c.downscale_interpolation
        return cv2.resize(region, (size, size), interpolation=INTERPOLATIONS[interpolation])

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


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def inspect(data: bytes, max_pixels: float = float("inf")) -> ImageInfo:
    """The header of encoded image bytes, refusing without decoding: unknown formats, damaged or
    ambiguous headers, images that declare more than `max_pixels` pixels, and truncated JPEGs."""
    info = probe(data)
    if info is None:
        raise ResizeError("unsupported image format")
    if info.problem is not None:
        raise ResizeError(info.problem)
    if info.width is None or info.height is None:
        raise ResizeError("Image decoding error")
    if info.width * info.height > max_pixels:
        raise ResizeError(TOO_LARGE)
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
        img = to_uint8(img)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 2:  # gray + alpha
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    return img


def to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit pixels of deeper ones, scaled so that the type's maximum (1.0 for floats) becomes 255.

    Works in place on `img` (which the decoder gave us) and makes one 8-bit copy: never a float64
    copy of the whole image (8 bytes per channel), which a 16-bit RGBA PNG made 32 bytes a pixel.
    16-bit values are divided as 1.47 did (v // 257, truncated); other types round.
    """
    if img.dtype == np.uint16:
        np.floor_divide(img, 257, out=img)
        return img.astype(np.uint8)
    if img.dtype.kind in "iu":
        np.maximum(img, 0, out=img)
        return cv2.convertScaleAbs(img, alpha=255.0 / np.iinfo(img.dtype).max)
    np.clip(img, 0.0, 1.0, out=img)
    return cv2.convertScaleAbs(img, alpha=255.0)


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
