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

EXIF orientation (tag 0x0112) is ignored by default, as img2dataset 1.47 ignores it: the stored pixels
are the file's pixels as they are laid out. With `apply_exif_orientation` the resizer reads the tag of a
JPEG, PNG or WebP itself (`exif_orientation`, from the EXIF block alone) and turns the decoded pixels
upright before anything else (boxes, resize), on every decode path (the reduced-scale JPEG decode too):
sizes, size filters, `original_width` and `original_height` are then those of the upright image, and an
image whose orientation is not 1 is never stored as its downloaded bytes (`skip_reencode`).

OpenCV's own `OPENCV_IO_MAX_IMAGE_PIXELS` is not used as a backstop: OpenCV reads it once, when the
library is loaded (often before this module, by the caller), and it is one limit for the whole
process while ours is per configuration. Its default (2^30 pixels) stays the decoder's last word.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import struct
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
from . import decoders
from .base import Stage
from .exif import exif_block
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
FLOAT_BGRA = 4 * BGRA  # the same in float32
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
    # what was encoded (the downloaded image's pixels when `data` is the downloaded bytes), when asked for
    pixels: np.ndarray | None = dataclasses.field(default=None, compare=False)
    held: int = 0  # bytes of the decode budget still taken for `pixels`: the caller gives them back


class Resize(Stage):
    """Replaces `sample.data` with the resized image; fills width, height, original_width, original_height.

    With `keep_pixels`, the pixels it encoded stay in `sample.pixels` (counted in the decode budget until
    the sample drops them) for later stages, which then need not decode the stored image again.
    """

    failure = Status.FAILED_TO_RESIZE

    def __init__(self, config: ResizeConfig, keep_pixels: bool = False):
        self.resizer = Resizer(config)
        self.keep_pixels = keep_pixels

    def columns(self) -> list[pa.Field]:
        return list(COLUMNS)

    def __call__(self, sample: Sample) -> None:
        sample.drop_pixels()  # a sample started again (Deferred) may hold those of its last attempt
        try:
            resized = self.resizer(sample.source, sample.row.get(BBOX), keep_pixels=self.keep_pixels)
        except ResizeError:
            raise
        except Exception as error:  # noqa: BLE001 - a bad image never crashes a shard
            logger.debug("resize of %s failed", sample.key, exc_info=True)
            raise ResizeError(f"Image decoding error ({type(error).__name__})") from None
        sample.data = resized.data
        sample.pixels = resized.pixels
        if resized.held:
            sample.release_pixels = functools.partial(self.resizer.budget.release, resized.held)
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
    orientation: int = 1  # EXIF orientation applied after decoding (1: none); `decoded` is upright
    scaled_to: tuple[int, int] | None = None  # a WebP scaled to this while decoding (`decoded`: were it whole)


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

    def __call__(self, data: bytes, boxes: Any = None, keep_pixels: bool = False) -> Resized:
        """The stored image of downloaded `data`; with `keep_pixels`, also the pixels encoded, whose
        bytes (`Resized.held`) stay taken from the decode budget until the caller releases them."""
        if self.config.disable_all_reencoding:
            return Resized(data, None, None, None, None)
        info = inspect(data, self.max_pixels)
        orientation = exif_orientation(data) if self.config.apply_exif_orientation else 1
        if orientation >= FIRST_TRANSPOSED:  # the upright image is the stored one turned a quarter
            info = dataclasses.replace(info, width=info.height, height=info.width)
        self._check_size(info.width, info.height)
        plan = self.plan(info, blurred=bool(boxes), orientation=orientation)
        if not self.budget.acquire(plan.memory):  # waits while others hold the memory; False: can never fit
            raise ResizeError(TOO_LARGE)
        held = 0
        try:
            with _decode_slots:
                resized = self._resize(data, info, plan, boxes)
            if not keep_pixels:
                return dataclasses.replace(resized, pixels=None)
            pixels = resized.pixels
            if pixels.base is not None:  # a crop's view: do not keep the whole resized image alive through it
                pixels = pixels.copy()
            held = min(plan.memory, pixels.nbytes)
            return dataclasses.replace(resized, pixels=pixels, held=held)
        finally:
            self.budget.release(plan.memory - held)

    def plan(self, info: ImageInfo, blurred: bool = False, orientation: int = 1) -> Plan:
        """The decode and resize of an image of `info` (its upright size when `orientation` is applied);
        raises ResizeError when an intermediate would have more than `max_image_pixels` pixels."""
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
        # the 8-bit BGR(A) copy, a blurred copy, and the halvings of an area downscale (1/4 + 1/16 + ...);
        # turning it upright makes one copy, or two at once (transpose then flip) for orientation 7
        turned = 0 if orientation == 1 else 2
        working = pixels * BGRA * (1 + (2 if blurred else 0) + 1 + turned)
        memory = decode_bytes + working + (resized + output) * BGRA * 2  # resized, output and the encoded bytes
        if target is not None and target[0] > info.width and c.upscale_interpolation is Interpolation.LANCZOS:
            memory += (pixels + resized) * FLOAT_BGRA  # its float32 copies (`_lanczos`)
        # libwebp scales a WebP while decoding it, as an area resize would (the memory stays counted as for a
        # whole decode: a lossless WebP is decoded whole inside libwebp)
        scaled = (
            info.format == "webp"
            and target is not None
            and target[0] < info.width
            and target[1] < info.height
            and not crop_first
            and orientation == 1
            and c.downscale_interpolation is Interpolation.AREA
        )
        return Plan(reduction, decoded, target, crop_first, memory, orientation, target if scaled else None)

    def _resize(self, data: bytes, info: ImageInfo, plan: Plan, boxes: Any) -> Resized:
        c = self.config
        original_width, original_height = info.width, info.height
        img = self.decode(data, plan)
        target = plan.target
        blurred = bool(boxes)
        if blurred:
            img = blur_boxes(img, boxes)
        unchanged = target is None or (
            target == (original_width, original_height)
            and (c.resize_mode not in (ResizeMode.CENTER_CROP, ResizeMode.BORDER) or original_width == original_height)
        )
        stored_upright = plan.orientation == 1  # else the downloaded bytes would show it turned
        if unchanged and not blurred and stored_upright and c.skip_reencode and sniff_format(data) is c.encode_format:
            return Resized(data, original_width, original_height, original_width, original_height, img)
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
        return Resized(encoded.tobytes(), width, height, original_width, original_height, img)

    def decode(self, data: bytes, plan: Plan) -> np.ndarray:
        """The pixels `plan` decodes `data` to: scaled by libwebp, else decoded (at reduced scale) and turned
        upright; raises ResizeError when they are not the size the header gave."""
        img = decoders.webp(data, plan.scaled_to, plan.decoded) if plan.scaled_to else None
        if img is None:  # not scaled, or libwebp would not (an animation, damaged data): OpenCV decodes it
            img = upright(decode(data, plan.reduction), plan.orientation)
            if (img.shape[1], img.shape[0]) != plan.decoded:
                raise ResizeError("image size differs from its header")
        return img

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
                img = _shrink(img, target)
            elif interpolation is Interpolation.LANCZOS:
                img = _lanczos(img, target)
            else:
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


def _shrink(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """`img` downscaled to `target`, as an area resize would, at a fraction of its cost.

    OpenCV's area resize by a fraction is a slow generic loop (4.4 ms for a megapixel to 341 x 256), its
    area resize by exactly 2 a fast vectorised one (0.3 ms; a Gaussian pyramid step is 2.2 ms). So the
    image is halved (each pixel the mean of 2 x 2; an odd last row or column left out) while it stays at
    least twice the target, then resampled bilinearly by the factor left (1 to 2), where bilinear reads the
    same one or two source pixels a side as area would. The last step maps every output pixel to where it
    lies in the original image, so that the rows and columns left out shift nothing.
    PSNR against a plain area resize: tests/test_quality.py.
    """
    height, width = img.shape[:2]
    halved, factor = img, 1
    while halved.shape[1] >= 2 * target[0] and halved.shape[0] >= 2 * target[1]:
        h, w = halved.shape[0] // 2, halved.shape[1] // 2
        halved = cv2.resize(halved[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
        factor *= 2
    if halved.shape[1] >= 2 * target[0] or halved.shape[0] >= 2 * target[1]:  # a side still twice: area
        return cv2.resize(img, target, interpolation=cv2.INTER_AREA)
    # output pixel x has its centre at (x + 0.5) * width / target in the original, which is pixel
    # (x + 0.5) * sx - 0.5 of the halved image
    sx, sy = width / (target[0] * factor), height / (target[1] * factor)
    to_source = np.array([[sx, 0, (sx - 1) / 2], [0, sy, (sy - 1) / 2]])
    return cv2.warpAffine(
        halved, to_source, target, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def _lanczos(img: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """OpenCV's Lanczos-4 resize of 8-bit pixels, computed on a float32 copy: OpenCV vectorises it for
    floats only (a thumbnail to 384 x 256: 1.0 instead of 2.0 ms); values differ from its 8-bit path by 1 at
    most (where that path rounds otherwise), in about 6% of them."""
    out = cv2.resize(img.astype(np.float32), target, interpolation=cv2.INTER_LANCZOS4)
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


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

    EXIF orientation is ignored, as img2dataset does (IMREAD_UNCHANGED never applies it, the reduced
    decode is told not to): width and height are those of the file's pixels. `upright` applies it.
    """
    img = decoders.png(data)
    if img is None:
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


ORIENTATION_TAG = 0x0112
FIRST_TRANSPOSED = 5  # orientations 5-8 swap width and height
TIFF_SHORT, TIFF_LONG = 3, 4
IFD_ENTRY = 12  # bytes: tag, type, count, value


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation (tag 0x0112, in the first IFD) of JPEG, PNG or WebP bytes: 1-8; 1 when there is
    none or it cannot be read. Reads the EXIF block alone (as the exif stage finds it), within its bounds."""
    try:
        block = exif_block(data)
    except ValueError:  # a block too large to be read
        return 1
    if block is None or len(block) < 8 or block[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if block[:2] == b"II" else ">"
    magic, ifd = struct.unpack_from(order + "HI", block, 2)
    if magic != 42 or ifd + 2 > len(block):
        return 1
    (count,) = struct.unpack_from(order + "H", block, ifd)
    for at in range(ifd + 2, min(ifd + 2 + count * IFD_ENTRY, len(block) - IFD_ENTRY + 1), IFD_ENTRY):
        tag, kind = struct.unpack_from(order + "HH", block, at)
        if tag != ORIENTATION_TAG:
            continue
        if kind not in (TIFF_SHORT, TIFF_LONG):
            return 1
        (value,) = struct.unpack_from(order + ("H" if kind == TIFF_SHORT else "I"), block, at + 8)
        return value if 1 <= value <= 8 else 1
    return 1


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels of an image stored with EXIF `orientation` turned as a viewer shows them (1: as they are)."""
    if orientation == 2:  # mirrored
        return cv2.flip(img, 1)
    if orientation == 3:  # upside down
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:  # mirrored upside down
        return cv2.flip(img, 0)
    if orientation == 5:  # mirrored along the main diagonal
        return cv2.transpose(img)
    if orientation == 6:  # turned a quarter counter-clockwise: a quarter clockwise makes it upright
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:  # mirrored along the other diagonal
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img
