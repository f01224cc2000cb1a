"""output_format="tfrecord": `NNNNN.tfrecord` with one `tf.train.Example` per success, streamed
through fsspec (TensorFlow is not needed; the encoding is in `codecs/tfrecord.py`); every row in
`NNNNN.parquet`."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..naming import shard_file
from ..sample import Sample
from ..storage import Folder
from .base import ImagesAndMetadataWriter
from .codecs.tfrecord import crc32c_function, sample_example, write_record


class TFRecordWriter(ImagesAndMetadataWriter):
    suffixes = (".tfrecord", ".parquet")

    @classmethod
    def own_columns(cls, image_format: str) -> tuple[str, ...]:
        return (image_format, "txt")  # features of each Example, next to the metadata columns

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.crc32c = crc32c_function()
        self.tfrecord = folder.atomic(shard_file(shard_name, ".tfrecord"))  # appears complete, on commit

    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        write_record(self.tfrecord, sample_example(record, sample.data, self.image_format), self.crc32c)

    def close_images(self) -> None:
        self.tfrecord.commit()

    def abort_images(self) -> None:
        self.tfrecord.abort()
