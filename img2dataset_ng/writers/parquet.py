"""output_format="parquet": `NNNNN.parquet` holds every row and the image bytes, in a binary column
named after the image format (null for failures), streamed in row groups to a file that appears
complete when the shard closes."""

from __future__ import annotations

import contextlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..naming import shard_file
from ..sample import Sample
from ..storage import Folder
from .base import ShardWriter

ROW_GROUP = 256


class ParquetWriter(ShardWriter):
    suffixes = (".parquet",)

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
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.file_schema))
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
