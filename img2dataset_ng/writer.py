"""Shard writers: webdataset, files, parquet, dummy (and tfrecord, in tfrecord.py). Each is a context manager.

`write(record, image)` takes one metadata row (a dict in schema order) and, for a success, the
image bytes. Every row lands in `NNNNN.parquet` (all formats but dummy); images go where the
format puts them. The shard's stats file is not theirs: the shard worker writes it last.
"""

from __future__ import annotations

import io
import json
import tarfile
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


class WebDatasetWriter(ShardWriter):
    """`NNNNN.tar` with `KEY.jpg`, `KEY.json` and (with captions) `KEY.txt`, adjacent per sample."""

    def open(self) -> None:
        self.file = self.fs.open(self.folder.path(f"{self.shard_name}.tar"), "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.USTAR_FORMAT)

    def write_image(self, record: dict[str, Any], image: bytes) -> None:
        key, now = record["key"], time.time()
        self._add(f"{key}{self.extension}", image, now)
        if "caption" in record:
            self._add(f"{key}.txt", str(record["caption"] or "").encode("utf-8"), now)
        self._add(f"{key}.json", sample_json(record), now)

    def _add(self, name: str, data: bytes, mtime: float) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), mtime, 0o444
        self.tar.addfile(info, io.BytesIO(data))

    def close_images(self, failed: bool) -> None:
        try:
            if not failed:
                self.tar.close()
        finally:
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
