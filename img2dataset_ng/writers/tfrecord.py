"""output_format="tfrecord": `NNNNN.tfrecord` with one `tf.train.Example` per success, streamed
through fsspec (TensorFlow is not needed; the encoding is in `codecs/tfrecord.py`); every row in
`NNNNN.parquet`. `TFRecordImages` reads a finished file's images back."""

from __future__ import annotations

from typing import IO, Any

import pyarrow as pa

from ..naming import shard_file
from ..sample import Sample
from ..storage import Folder
from .base import ImagesAndMetadataWriter, StoredImages
from .codecs.tfrecord import bytes_features, crc32c_function, read_records, sample_example, write_record

RECORD_FRAMING = 12  # bytes before a record's data: its length and the length's checksum (4 more follow the data)


class TFRecordImages(StoredImages):
    """The image feature of each Example, indexed by its `key` feature in one pass that verifies every
    checksum; a record is read again when its image is asked for."""

    def __init__(self, file: IO[bytes], image_format: str):
        self.file, self.image_format = file, image_format
        self.where: dict[str, tuple[int, int]] = {}
        offset = 0
        for data in read_records(file):
            keys = bytes_features(data, ["key"]).get("key")
            if keys:
                self.where[keys[0].decode("utf-8")] = (offset, len(data))
            offset += len(data) + RECORD_FRAMING + 4

    def get(self, key: str) -> bytes:
        offset, length = self.where[key]
        self.file.seek(offset + RECORD_FRAMING)
        images = bytes_features(self.file.read(length), [self.image_format]).get(self.image_format)
        if not images:
            raise KeyError(key)
        return images[0]

    def close(self) -> None:
        self.file.close()


class TFRecordWriter(ImagesAndMetadataWriter):
    suffixes = (".tfrecord", ".parquet")
    reads_back = True

    @classmethod
    def stored_images(cls, folder: Folder, shard_name: str, image_format: str) -> StoredImages:
        return TFRecordImages(folder.open(shard_file(shard_name, ".tfrecord")), image_format)

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
