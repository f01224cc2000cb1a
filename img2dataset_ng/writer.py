"""Shard writers: webdataset, files, parquet, dummy (and tfrecord, in tfrecord.py). Each is a context manager.

`write(record, image)` takes one metadata row (a dict in schema order) and, for a success, the
image bytes. Every row lands in `NNNNN.parquet` (all formats but dummy); images go where the
format puts them. The shard's stats file is not theirs: the shard worker writes it last.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import OutputFormat, WriteConfig
from .layout import OutputFolder

PARQUET_ROW_GROUP = 256


def metadata_schema(input_schema: pa.Schema, config: WriteConfig) -> pa.Schema:
    """Input columns (additional, caption, url), then the columns every row gets, in contract order."""
    fields = list(input_schema)
    fields += [
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
    ]
    if config.extract_exif:
        fields.append(pa.field("exif", pa.string()))
    if config.compute_hash is not None:
        fields.append(pa.field(config.compute_hash.value, pa.string()))
    return pa.schema(fields)


class ShardWriter:
    """Base: buffers the metadata rows and writes them, ordered by key, to `NNNNN.parquet`."""

    def __init__(self, folder: OutputFolder, shard_name: str, schema: pa.Schema, extension: str):
        self.folder = folder
        self.fs = folder.fs
        self.shard_name = shard_name
        self.schema = schema
        self.extension = extension
        self.rows: list[dict[str, Any]] = []

    def __enter__(self) -> ShardWriter:
        self.fs.makedirs(self.folder.root, exist_ok=True)
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def open(self) -> None:
        """Open the format's own handles."""

    def write(self, record: dict[str, Any], image: bytes | None) -> None:
        self.rows.append(record)
        if image is not None:
            self.write_image(record, image)

    def write_image(self, record: dict[str, Any], image: bytes) -> None:
        """Store one successful sample."""

    def close(self, failed: bool = False) -> None:
        self.close_images(failed)
        if not failed:
            self.write_metadata()

    def close_images(self, failed: bool) -> None:
        """Close the format's own handles."""

    def write_metadata(self) -> None:
        rows = sorted(self.rows, key=lambda row: row["key"])
        table = pa.Table.from_pylist(rows, schema=self.schema)
        with self.fs.open(self.folder.path(f"{self.shard_name}.parquet"), "wb") as f:
            pq.write_table(table, f)


def close_file(file: Any, failed: bool) -> None:
    """Close `file`; after a failure, an upload that can be discarded (object stores) is discarded, not committed."""
    discard = getattr(file, "discard", None) if failed else None
    if discard is not None:
        discard()
    else:
        file.close()


def sample_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, default=str, ensure_ascii=False).encode("utf-8")


TAR_BLOCK, TAR_RECORD = 512, 20 * 512


def tar_member(name: str, data: bytes, mtime: int) -> bytes:
    """One regular file of a POSIX ustar archive: its 512-byte header, the data, zero padding."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = bytearray(
        encoded.ljust(100, b"\0")
        + b"0000444\0"  # mode: read-only for all
        + b"0000000\0" * 2  # uid, gid
        + b"%011o\0" % len(data)
        + b"%011o\0" % mtime
        + b" " * 8  # the checksum, counted as spaces while it is computed
        + b"0"  # a regular file
        + b"\0" * 100  # link name
        + b"ustar\x0000"
        + b"\0" * (32 + 32 + 8 + 8 + 155 + 12)  # user and group names, device numbers, prefix, padding
    )
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % TAR_BLOCK)


class WebDatasetWriter(ShardWriter):
    """`NNNNN.tar` with `KEY.jpg`, `KEY.json` and (with captions) `KEY.txt`, adjacent per sample.

    The tar is written directly (ustar headers are a fixed 512-byte layout), one write per sample,
    and ends like tarfile's: two zero blocks, padded to a 10 KiB record.
    """

    def open(self) -> None:
        self.file = self.fs.open(self.folder.path(f"{self.shard_name}.tar"), "wb")
        self.size = 0

    def write_image(self, record: dict[str, Any], image: bytes) -> None:
        key, now = record["key"], int(time.time())
        members = [tar_member(f"{key}{self.extension}", image, now)]
        if "caption" in record:
            members.append(tar_member(f"{key}.txt", str(record["caption"] or "").encode("utf-8"), now))
        members.append(tar_member(f"{key}.json", sample_json(record), now))
        sample = b"".join(members)
        self.file.write(sample)
        self.size += len(sample)

    def close_images(self, failed: bool) -> None:
        if not failed:
            end = self.size + 2 * TAR_BLOCK
            self.file.write(b"\0" * (end + -end % TAR_RECORD - self.size))
        close_file(self.file, failed)


class FilesWriter(ShardWriter):
    """Folder `NNNNN/` with `KEY.jpg`, `KEY.json` and (with captions) `KEY.txt` per success."""

    def open(self) -> None:
        self.fs.makedirs(self.folder.path(self.shard_name), exist_ok=True)

    def write_image(self, record: dict[str, Any], image: bytes) -> None:
        base = self.folder.path(self.shard_name, record["key"])
        self.fs.pipe_file(base + self.extension, image)
        if "caption" in record:
            self.fs.pipe_file(base + ".txt", str(record["caption"] or "").encode("utf-8"))
        self.fs.pipe_file(base + ".json", sample_json(record))


class ParquetWriter(ShardWriter):
    """`NNNNN.parquet` holds the metadata and the image bytes, in a column named after the format."""

    def open(self) -> None:
        self.image_column = self.extension.lstrip(".")
        self.schema = self.schema.append(pa.field(self.image_column, pa.binary()))
        self.file = self.fs.open(self.folder.path(f"{self.shard_name}.parquet"), "wb")
        self.parquet = pq.ParquetWriter(self.file, self.schema)

    def write(self, record: dict[str, Any], image: bytes | None) -> None:
        self.rows.append({**record, self.image_column: image})
        if len(self.rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self, failed: bool = False) -> None:
        try:
            if not failed:
                self._flush()
                self.parquet.close()
        finally:
            close_file(self.file, failed)


class DummyWriter(ShardWriter):
    """Writes nothing but the stats file (which the shard worker writes): for benchmarks."""

    def close(self, failed: bool = False) -> None:
        pass


from .tfrecord import TFRecordWriter  # noqa: E402 - it builds on ShardWriter, defined above

WRITERS: dict[OutputFormat, type[ShardWriter]] = {
    OutputFormat.WEBDATASET: WebDatasetWriter,
    OutputFormat.FILES: FilesWriter,
    OutputFormat.PARQUET: ParquetWriter,
    OutputFormat.TFRECORD: TFRecordWriter,
    OutputFormat.DUMMY: DummyWriter,
}


def writer_for(config: WriteConfig, shard_name: str, schema: pa.Schema) -> ShardWriter:
    if config.output_format not in WRITERS:
        raise NotImplementedError(f"output_format {config.output_format.value!r} is not available yet")
    return WRITERS[config.output_format](config.output_folder, shard_name, schema, "." + config.encode_format.value)
