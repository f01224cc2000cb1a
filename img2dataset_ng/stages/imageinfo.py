"""Reads an encoded image's format, size and decoded pixel layout from its header, without decoding it.

This is how decompression bombs (a small file that declares 30000x30000 pixels) are refused before
any pixel buffer is allocated, and how the memory a decode will take is known beforehand. Every
size decision is taken from this probe, so it must read the header the way the decoder (OpenCV's
`imdecode`, with libjpeg-turbo, libpng, libwebp, libtiff and its own GIF and BMP readers) will:

- JPEG: markers are found as libjpeg finds them (bytes that are not a marker are skipped, `FF 00`
  too); the frame header (SOF) before the first scan gives the size. A file with several frame
  headers is refused as ambiguous (libjpeg refuses it too, but only after reading them).
- PNG: IHDR must be the first chunk (libpng's rule); bit depth and colour type give the layout;
  an animated PNG keeps several canvas-sized frame buffers while it decodes, libspng a copy of the file.
- WebP: the VP8X canvas of an extended file; a still image's frame must have the same size, and a
  file whose canvas and frame disagree is refused as ambiguous.
- GIF: the logical screen (the decoder's canvas; frames outside it are refused by the decoder).
- BMP: the info header's size, the sign of the height meaning top-down rows.
- TIFF: the first directory (the page `imdecode` reads); repeated size tags, or size tags of a type
  libtiff would convert, are refused as ambiguous; the strip or tile buffer is counted.

After decoding, the resizer checks that the pixels have the probed size; any disagreement left
fails the sample.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from ..options import EncodeFormat

JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}
JPEG_SOS, JPEG_EOI = 0xDA, 0xD9
AMBIGUOUS = "ambiguous image header"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}  # colour type -> channels at most (palette and gray+alpha: BGRA)
APNG_FRAME_BUFFERS = 3  # the current, next and previous frame, each a full BGRA canvas

WEBP_ALPHA, WEBP_ANIMATION = 0x10, 0x02  # VP8X flags
WEBP_ANIMATION_BUFFERS = 2  # libwebp's animation decoder keeps a BGRA canvas and the previous one

GIF_CANVAS_CHANNELS = 4  # OpenCV's GIF reader composes frames on a BGRA canvas

TIFF_WIDTH, TIFF_HEIGHT, TIFF_BITS, TIFF_SAMPLES, TIFF_ROWS_PER_STRIP, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH = (
    256,
    257,
    258,
    277,
    278,
    322,
    323,
)
TIFF_SHORT, TIFF_LONG = 3, 4


@dataclass(frozen=True)
class ImageInfo:
    format: str  # jpg, png, webp, gif, bmp, tiff
    width: int | None  # None when the header is too damaged to tell
    height: int | None
    bytes_per_pixel: int = 4  # of the pixels `imdecode(..., IMREAD_UNCHANGED)` returns (channels x bytes each)
    buffer_bytes: int = 0  # what the decoder holds besides those pixels while it decodes (frames, strips, tiles)
    problem: str | None = None  # why the file must be refused although its size was read (AMBIGUOUS)


def probe(data: bytes) -> ImageInfo | None:
    """Format, declared size and decoded layout of `data`; None when it is no image format we know."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == PNG_SIGNATURE:
        return _png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _tiff(data)
    return None


def sniff_format(data: bytes) -> EncodeFormat | None:
    """The format of encoded image bytes, when it is one we can also write."""
    if data[:3] == b"\xff\xd8\xff":
        return EncodeFormat.JPG
    if data[:8] == PNG_SIGNATURE:
        return EncodeFormat.PNG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return EncodeFormat.WEBP
    return None


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG with no scan, or whose last scan is not followed by an end-of-image marker, was cut short.

    Looked for from the last end-of-image marker, which a whole file ends with: no scan after it. (Looking
    for the last scan from the end crossed the whole entropy-coded data of a baseline JPEG: 0.16 ms.)"""
    end = data.rfind(b"\xff\xd9")
    return end < 0 or data.find(b"\xff\xda") < 0 or data.find(b"\xff\xda", end) >= 0


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    """`struct.unpack_from`, or as many Nones when `data` is too short."""
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        return (None,) * len(struct.unpack(fmt, bytes(struct.calcsize(fmt))))


def _damaged(fmt: str) -> ImageInfo:
    return ImageInfo(fmt, None, None)


# --- JPEG


def jpeg_markers(data: bytes):
    """(marker, offset of its length field) for each marker before the first scan, found as libjpeg's
    `next_marker` does: anything but `FF xx` (xx not 00 or FF) between segments is skipped."""
    i = 2
    while i + 1 < len(data):
        if data[i] != 0xFF:  # garbage between segments: libjpeg skips it (with a warning)
            i += 1
            continue
        if data[i + 1] == 0xFF:  # fill byte
            i += 1
            continue
        if data[i + 1] == 0x00:  # a stuffed zero is no marker either
            i += 2
            continue
        marker = data[i + 1]
        yield marker, i + 2
        if marker in (JPEG_SOS, JPEG_EOI):
            return
        if marker in JPEG_NO_LENGTH:
            i += 2
            continue
        (length,) = _unpack(">H", data, i + 2)
        if length is None or length < 2:
            return
        i += 2 + length


def _jpeg(data: bytes) -> ImageInfo:
    frames = [at for marker, at in jpeg_markers(data) if marker in JPEG_SOF]
    if not frames:
        return _damaged("jpg")
    precision, height, width, components = _unpack(">BHHB", data, frames[0] + 2)
    if width is None:
        return _damaged("jpg")
    channels = 1 if components == 1 else 3  # CMYK and YCCK come out as BGR
    depth = 2 if precision > 8 else 1  # 12- and 16-bit (lossless) JPEGs decode to 16 bits
    return ImageInfo("jpg", width, height, channels * depth, problem=AMBIGUOUS if len(frames) > 1 else None)


# --- PNG


def _png(data: bytes) -> ImageInfo:
    length, kind = _unpack(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:  # libpng refuses any other first chunk
        return _damaged("png")
    width, height, bit_depth, colour_type = _unpack(">IIBB", data, 16)
    if width is None or colour_type not in PNG_CHANNELS:
        return _damaged("png")
    bytes_per_pixel = PNG_CHANNELS[colour_type] * (2 if bit_depth == 16 else 1)
    frames = APNG_FRAME_BUFFERS * width * height * 4 * (2 if bit_depth == 16 else 1) if _is_apng(data) else 0
    # libspng (stages/decoders.py) decodes from a copy of the file's bytes
    return ImageInfo("png", width, height, bytes_per_pixel, frames + len(data))


def _is_apng(data: bytes) -> bool:
    """An animation control chunk before the first image data."""
    return b"acTL" in png_chunks_before_data(data)


def png_chunks_before_data(data: bytes) -> list[bytes]:
    """The kinds of a PNG's chunks before its first image data (IDAT) or its end."""
    kinds, i = [], 8
    while i + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind in (b"IDAT", b"IEND"):
            break
        kinds.append(kind)
        i += 12 + length
    return kinds


# --- WebP


def _webp_chunks(data: bytes):
    """(kind, body offset, body length) of each RIFF chunk; chunks are padded to an even size."""
    i = 12
    while i + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, i)
        yield kind, i + 8, length
        i += 8 + length + (length & 1)


def _webp_frame(data: bytes, kind: bytes, at: int) -> tuple[int | None, int | None, bool]:
    """Width, height and alpha of a `VP8 ` or `VP8L` bitstream starting at `at`."""
    if kind == b"VP8 ":
        start, width, height = _unpack("<3sHH", data, at + 3)
        if start != b"\x9d\x01\x2a":
            return None, None, False
        return width & 0x3FFF, height & 0x3FFF, False
    if kind == b"VP8L":
        signature, bits = _unpack("<BI", data, at)
        if signature != 0x2F:
            return None, None, False
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), bool(bits >> 28 & 1)
    return None, None, False


def _webp(data: bytes) -> ImageInfo:
    chunks = list(_webp_chunks(data))
    if not chunks:
        return _damaged("webp")
    kind, at, _ = chunks[0]
    if kind in (b"VP8 ", b"VP8L"):
        width, height, alpha = _webp_frame(data, kind, at)
        return ImageInfo("webp", width, height, 4 if alpha else 3)
    if kind != b"VP8X" or len(data) < at + 10:
        return _damaged("webp")
    flags = data[at]
    width, height = (
        1 + int.from_bytes(data[at + 4 : at + 7], "little"),
        1 + int.from_bytes(data[at + 7 : at + 10], "little"),
    )
    if flags & WEBP_ANIMATION:
        return ImageInfo("webp", width, height, 4, WEBP_ANIMATION_BUFFERS * width * height * 4)
    frame = next(((k, a) for k, a, _ in chunks[1:] if k in (b"VP8 ", b"VP8L")), None)
    if frame is None:
        return _damaged("webp")
    frame_width, frame_height, _ = _webp_frame(data, *frame)
    problem = None if (frame_width, frame_height) == (width, height) else AMBIGUOUS
    return ImageInfo("webp", width, height, 4, problem=problem)


# --- GIF, BMP


def _gif(data: bytes) -> ImageInfo:
    width, height = _unpack("<HH", data, 6)
    if width is None:
        return _damaged("gif")
    return ImageInfo("gif", width, height, 4, width * height * GIF_CANVAS_CHANNELS)


def _bmp(data: bytes) -> ImageInfo:
    (header_size,) = _unpack("<I", data, 14)
    if header_size == 12:
        width, height, _, bit_count = _unpack("<HHHH", data, 18)
    else:
        width, height, _, bit_count = _unpack("<iiHH", data, 18)
    if width is None:
        return _damaged("bmp")
    return ImageInfo("bmp", abs(width), abs(height), 4 if bit_count == 32 else 3)


# --- TIFF


def _tiff(data: bytes) -> ImageInfo:
    """The first directory's size tags; the decoder reads that page only."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        tags = _tiff_directory(data, order)
    except (struct.error, ValueError):
        return _damaged("tiff")
    if tags is None:
        return ImageInfo("tiff", None, None, problem=AMBIGUOUS)
    width, height = tags.get(TIFF_WIDTH), tags.get(TIFF_HEIGHT)
    if width is None or height is None:
        return _damaged("tiff")
    samples = max(1, tags.get(TIFF_SAMPLES, 1))
    depth = max(1, math.ceil(tags.get(TIFF_BITS, 1) / 8))
    bytes_per_pixel = max(samples, 4) * depth  # OpenCV reads strips and tiles as BGRA at most
    if TIFF_TILE_WIDTH in tags or TIFF_TILE_LENGTH in tags:
        buffer_pixels = tags.get(TIFF_TILE_WIDTH, 0) * tags.get(TIFF_TILE_LENGTH, 0)
    else:
        buffer_pixels = width * min(height, tags.get(TIFF_ROWS_PER_STRIP, height))
    return ImageInfo("tiff", width, height, samples * depth, buffer_pixels * bytes_per_pixel)


def _tiff_directory(data: bytes, order: str) -> dict[int, int] | None:
    """The tags the probe needs from the first directory; None when one is repeated or of a type
    whose reading could differ from libtiff's (only SHORT and LONG, one value, are read here;
    BitsPerSample may hold one value per sample, all the same)."""
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    wanted = {TIFF_WIDTH, TIFF_HEIGHT, TIFF_BITS, TIFF_SAMPLES, TIFF_ROWS_PER_STRIP, TIFF_TILE_WIDTH, TIFF_TILE_LENGTH}
    tags: dict[int, int] = {}
    for entry in range(count):
        tag, kind, values, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * entry)
        if tag not in wanted:
            continue
        if tag in tags or kind not in (TIFF_SHORT, TIFF_LONG):
            return None
        if values != 1 and tag != TIFF_BITS:
            return None
        tags[tag] = _tiff_value(data, order, kind, values, value)
    return tags


def _tiff_value(data: bytes, order: str, kind: int, values: int, value: bytes) -> int:
    """The largest of an entry's values (BitsPerSample may differ per sample)."""
    fmt = "H" if kind == TIFF_SHORT else "I"
    size = struct.calcsize(fmt)
    if values * size <= 4:
        return max(struct.unpack_from(order + fmt * values, value))
    if values > 64:
        raise ValueError("too many values")
    (at,) = struct.unpack_from(order + "I", value)
    return max(struct.unpack_from(order + fmt * values, data, at))
