"""The EXIF stage: the downloaded image's EXIF tags as a JSON string, in the `exif` column.

The image comes from a site we do not trust, and exifread follows whatever offsets and counts the
file declares: given a whole file it reads past its own segment, and one crafted 800 KB JPEG kept a
shard busy for minutes (thousands of IFD entries, each asking for hundreds of values or for the
whole file as a string). So exifread is only ever handed the EXIF block itself (the TIFF structure
inside a JPEG APP1 `Exif` segment, a PNG `eXIf` chunk or a WebP `EXIF` chunk), at most
`MAX_EXIF_BYTES` of it, through a reader that counts what exifread does with it and stops it past
a budget of reads, bytes and time. EXIF that cannot be read within the budget is `None`, as EXIF
that cannot be read at all (img2dataset 1.47 behaviour); the sample itself still succeeds.

For the files img2dataset 1.47 reads (EXIF in the first APP1 segment of a JPEG, before its
quantisation tables) the tags are the same: exifread reads them from the same TIFF structure, at
the same offsets, with `details=False`.
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time

import exifread
import pyarrow as pa

from ..sample import Sample
from .base import Stage
from .imageinfo import jpeg_markers

COLUMN = pa.field("exif", pa.string())

MAX_EXIF_BYTES = 256 * 1024  # a JPEG APP1 segment holds at most 64 KiB; PNG and WebP chunks have no such bound
# a photo's EXIF (17 tags in 3 IFDs) takes ~100 reads of ~400 bytes in all, a 64 KiB thumbnail one read more;
# a crafted block can ask for millions of reads (thousands of entries x up to 999 values each) or gigabytes
MAX_READS = 20_000
MAX_READ_BYTES = 2 * MAX_EXIF_BYTES
MAX_SECONDS = 0.5

JPEG_LAST_HEADER_MARKERS = {0xDA, 0xD9, 0xDB}  # scan, end of image; exifread stops looking at the first DQT too
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WEBP_EXIF_FLAG = 0x08  # in the VP8X chunk's flags


# exifread warns once per damaged field: thousands of lines for one crafted file, about the file and not us
if logging.getLogger("exifread").level == logging.NOTSET:
    logging.getLogger("exifread").setLevel(logging.ERROR)


class ExifBudgetExceeded(Exception):
    """exifread did more work on one EXIF block than any real one needs."""


class BoundedReader(io.RawIOBase):
    """A read-only file over `data` that raises `ExifBudgetExceeded` once more than `max_reads`
    reads, `max_bytes` bytes read or `max_seconds` have gone into it.

    exifread's loops (IFD entries, values per entry, chained IFDs, sub-IFDs) all read through the
    file, so counting reads bounds every one of them, whatever counts and offsets the block declares.
    Offsets outside the block read nothing (exifread takes that as a zero value).
    """

    def __init__(
        self,
        data: bytes,
        max_reads: int = MAX_READS,
        max_bytes: int = MAX_READ_BYTES,
        max_seconds: float = MAX_SECONDS,
    ):
        super().__init__()
        self.data = memoryview(data)
        self.position = 0
        self.reads_left = max_reads
        self.bytes_left = max_bytes
        self.deadline = time.monotonic() + max_seconds

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.data)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read(self, size: int = -1) -> bytes:
        self._spend()
        end = len(self.data) if size is None or size < 0 else min(len(self.data), self.position + size)
        chunk = bytes(self.data[self.position : end]) if end > self.position else b""
        self.position = max(self.position, end)
        self.bytes_left -= len(chunk)
        if self.bytes_left < 0:
            raise ExifBudgetExceeded("too many bytes read")
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def _spend(self) -> None:
        self.reads_left -= 1
        if self.reads_left < 0:
            raise ExifBudgetExceeded("too many reads")
        if time.monotonic() > self.deadline:
            raise ExifBudgetExceeded("too slow")


def exif_block(data: bytes) -> bytes | None:
    """The TIFF structure holding the EXIF tags of a JPEG, PNG or WebP file; None when it has none.

    Raises ValueError when the block is larger than `MAX_EXIF_BYTES`.
    """
    if data[:3] == b"\xff\xd8\xff":
        block = _jpeg_exif(data)
    elif data[:8] == PNG_SIGNATURE:
        block = _png_exif(data)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        block = _webp_exif(data)
    else:
        return None
    if block is not None and len(block) > MAX_EXIF_BYTES:
        raise ValueError("EXIF block too large")
    return block


def _jpeg_exif(data: bytes) -> bytes | None:
    """The body after `Exif\\0\\0` of the first APP1 segment that is EXIF, looked for (as exifread
    does) among the segments before the first quantisation table, scan or end of image."""
    for marker, at in jpeg_markers(data):
        if marker in JPEG_LAST_HEADER_MARKERS:
            return None
        if marker == 0xE1:
            (length,) = struct.unpack_from(">H", data, at)
            body = data[at + 2 : at + length]
            if body[:4] == b"Exif":
                return body[6:]
    return None


def _png_exif(data: bytes) -> bytes | None:
    """The body of the first `eXIf` chunk, looked for among all chunks up to `IEND`, as exifread does."""
    i = len(PNG_SIGNATURE)
    while i + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        if kind == b"IEND":
            return None
        if kind == b"eXIf":
            if length > MAX_EXIF_BYTES:
                raise ValueError("EXIF block too large")
            return data[i + 8 : i + 8 + length]
        i += 12 + length
    return None


def _webp_exif(data: bytes) -> bytes | None:
    """The body of the `EXIF` chunk of an extended WebP (VP8X first) whose flags announce EXIF."""
    if data[12:16] != b"VP8X" or len(data) < 21 or not data[20] & WEBP_EXIF_FLAG:
        return None
    i = 12
    while i + 8 <= len(data):
        kind, length = struct.unpack_from("<4sI", data, i)
        if kind == b"EXIF":
            if length > MAX_EXIF_BYTES:
                raise ValueError("EXIF block too large")
            body = data[i + 8 : i + 8 + length]
            # some writers keep the JPEG `Exif\0\0` prefix in the chunk
            return body[6:] if body[:6] == b"Exif\0\0" else body
        i += 8 + length + (length & 1)  # chunks are padded to an even size
    return None


def read_exif(data: bytes) -> str | None:
    """EXIF tags as a JSON string: `{}` when there are none, None when they cannot be read (as 1.47)
    or reading them takes more than the budget."""
    try:
        block = exif_block(data)
        if block is None:
            return "{}"
        if block[:4] not in (b"II*\0", b"MM\0*"):
            return None  # not a TIFF structure: nothing exifread could read as EXIF
        tags = exifread.process_file(BoundedReader(block), details=False)
        return json.dumps({k: str(v).strip() for k, v in tags.items() if v is not None})
    except Exception:  # noqa: BLE001 - unreadable EXIF is not an error of the sample
        return None


class Exif(Stage):
    def columns(self) -> list[pa.Field]:
        return [COLUMN]

    def __call__(self, sample: Sample) -> None:
        sample.fields[COLUMN.name] = read_exif(sample.source)
