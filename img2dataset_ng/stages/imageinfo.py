"""Reads an encoded image's format and declared size from its header, without decoding it.

This is how decompression bombs (a small file that declares 30000x30000 pixels) are refused
before any pixel buffer is allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..options import EncodeFormat

JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
JPEG_NO_LENGTH = {0x01, 0xD8, *range(0xD0, 0xD8)}


@dataclass(frozen=True)
class ImageInfo:
    format: str  # jpg, png, webp, gif, bmp, tiff
    width: int | None  # None when the header is too damaged to tell
    height: int | None


def probe(data: bytes) -> ImageInfo | None:
    """Format and declared size of `data`; None when it is no image format we know."""
    if data[:3] == b"\xff\xd8\xff":
        return ImageInfo("jpg", *_jpeg_size(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ImageInfo("png", *_unpack(">II", data, 16))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageInfo("webp", *_webp_size(data))
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ImageInfo("gif", *_unpack("<HH", data, 6))
    if data[:2] == b"BM":
        return ImageInfo("bmp", *_bmp_size(data))
    if data[:4] in (b"II*\0", b"MM\0*"):
        return ImageInfo("tiff", *_tiff_size(data))
    return None


def sniff_format(data: bytes) -> EncodeFormat | None:
    """The format of encoded image bytes, when it is one we can also write."""
    if data[:3] == b"\xff\xd8\xff":
        return EncodeFormat.JPG
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return EncodeFormat.PNG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return EncodeFormat.WEBP
    return None


def is_truncated_jpeg(data: bytes) -> bool:
    """A JPEG with no scan, or whose last scan is not followed by an end-of-image marker, was cut short."""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int | None, int | None]:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error:
        return None, None


def _jpeg_size(data: bytes) -> tuple[int | None, int | None]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None, None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in JPEG_NO_LENGTH:
            i += 2
            continue
        if marker in JPEG_SOF:
            height, width = _unpack(">HH", data, i + 5)
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            return None, None
        (length,) = struct.unpack_from(">H", data, i + 2)
        i += 2 + length
    return None, None


def _webp_size(data: bytes) -> tuple[int | None, int | None]:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = _unpack("<HH", data, 26)
        return (None, None) if width is None else (width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        (bits,) = _unpack("<I", data, 21)[:1]
        return (None, None) if bits is None else (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    return None, None


def _bmp_size(data: bytes) -> tuple[int | None, int | None]:
    (header_size,) = _unpack("<I", data, 14)[:1]
    if header_size == 12:
        return _unpack("<HH", data, 18)
    width, height = _unpack("<ii", data, 18)
    return (None, None) if width is None else (abs(width), abs(height))


def _tiff_size(data: bytes) -> tuple[int | None, int | None]:
    order = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, offset)
        size: dict[int, int] = {}
        for entry in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * entry)
            if tag in (256, 257):
                fmt = order + ("H" if kind == 3 else "I")
                size[tag] = struct.unpack_from(fmt, value)[0]
        return size.get(256), size.get(257)
    except struct.error:
        return None, None
