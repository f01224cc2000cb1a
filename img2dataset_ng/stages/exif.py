"""The EXIF stage: the downloaded image's EXIF tags as a JSON string, in the `exif` column."""

from __future__ import annotations

import io
import json

import exifread
import pyarrow as pa

from ..options import EncodeFormat
from ..sample import Sample
from .base import Stage
from .imageinfo import sniff_format

COLUMN = pa.field("exif", pa.string())
EXIF_MARKERS = {EncodeFormat.JPG: b"Exif\0\0", EncodeFormat.PNG: b"eXIf", EncodeFormat.WEBP: b"EXIF"}


def read_exif(data: bytes) -> str | None:
    """EXIF tags as a JSON string: `{}` when there are none, None when they cannot be read (as 1.47)."""
    image_format = sniff_format(data)
    # a JPEG's EXIF block comes before its first scan: no need to look through the whole image
    end = data.find(b"\xff\xda") if image_format is EncodeFormat.JPG else -1
    if image_format is None or data.find(EXIF_MARKERS[image_format], 0, end if end > 0 else len(data)) < 0:
        return "{}"
    try:
        tags = exifread.process_file(io.BytesIO(data), details=False)
        return json.dumps({k: str(v).strip() for k, v in tags.items() if v is not None})
    except Exception:  # noqa: BLE001 - unreadable EXIF is not an error of the sample
        return None


class Exif(Stage):
    def columns(self) -> list[pa.Field]:
        return [COLUMN]

    def __call__(self, sample: Sample) -> None:
        sample.fields[COLUMN.name] = read_exif(sample.source)
