"""output_format="parquet": `NNNNN.parquet` holds every row and the image bytes, in a binary column
named after the image format (null for failures), streamed in row groups to a file that appears
complete when the shard closes. `ParquetImages` reads a finished file's images back."""

from __future__ import annotations

import contextlib
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import arrow
from ..naming import shard_file
from ..sample import Sample
from ..storage import Folder
from .base import ShardWriter, StoredImages

ROW_GROUP = 256
CACHED_GROUPS = 4  # row groups of images kept while reading back (img2dataset 1.47's rows are only nearly in order)


class ParquetImages(StoredImages):
    """The image column of a shard's parquet, indexed by key from the key column; read a row group at a time."""

    def __init__(self, file: IO[bytes], image_format: str):
        self.file, self.image_format = file, image_format
        self.parquet = pq.ParquetFile(file)
        self.where: dict[str, tuple[int, int]] = {}
        for group in range(self.parquet.num_row_groups):
            keys = self.parquet.read_row_group(group, columns=["key"]).column(0).to_pylist()
            self.where.update((key, (group, row)) for row, key in enumerate(keys))
        self.groups: dict[int, pa.ChunkedArray] = {}

    def get(self, key: str) -> bytes:
        group, row = self.where[key]
        if group not in self.groups:
            if len(self.groups) >= CACHED_GROUPS:
                del self.groups[next(iter(self.groups))]
            self.groups[group] = self.parquet.read_row_group(group, columns=[self.image_format]).column(0)
        data = self.groups[group][row].as_py()
        if data is None:
            raise KeyError(key)
        return data

    def close(self) -> None:
        self.groups = {}
        self.parquet.close()
        self.file.close()


class ParquetWriter(ShardWriter):
    suffixes = (".parquet",)
    reads_back = True

    @classmethod
    def stored_images(cls, folder: Folder, shard_name: str, image_format: str) -> StoredImages:
        return ParquetImages(folder.open(shard_file(shard_name, ".parquet")), image_format)

    @classmethod
    def own_columns(cls, image_format: str) -> tuple[str, ...]:
        return (image_format,)

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.file_schema = schema.append(pa.field(image_format, pa.binary()))
        self.file = folder.atomic(shard_file(shard_name, ".parquet"))
        self.parquet = pq.ParquetWriter(self.file.file, self.file_schema)
        self.rows: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        self.rows.append({**self.record(sample), self.image_format: sample.data if sample.ok else None})
        if len(self.rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.parquet.write_table(arrow.table(self.rows, self.file_schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.parquet.close()
        self.file.commit()

    def abort(self) -> None:
        self.rows = []
        with contextlib.suppress(Exception):  # the file is discarded: its footer may fail to be written
            self.parquet.close()
        self.file.abort()
