"""output_format="webdataset": `NNNNN.tar` with `KEY.jpg`, `KEY.txt` (with captions) and `KEY.json`
for each success, adjacent per sample; every row in `NNNNN.parquet`."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ..naming import sample_file, shard_file
from ..sample import CAPTION, Sample
from ..storage import Folder
from .base import ImagesAndMetadataWriter
from .codecs.tar import tar_end, tar_member


def sample_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, default=str, ensure_ascii=False).encode("utf-8")


def caption_text(record: dict[str, Any]) -> bytes:
    return str(record[CAPTION] or "").encode("utf-8")


class WebDatasetWriter(ImagesAndMetadataWriter):
    suffixes = (".tar", ".parquet")

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.captions = CAPTION in schema.names
        self.tar = folder.atomic(shard_file(shard_name, ".tar"))  # appears complete, on commit
        self.size = 0

    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        members = [tar_member(sample_file(sample.key, self.image_format), sample.data)]
        if self.captions:
            members.append(tar_member(sample_file(sample.key, "txt"), caption_text(record)))
        members.append(tar_member(sample_file(sample.key, "json"), sample_json(record)))
        data = b"".join(members)
        self.tar.write(data)
        self.size += len(data)

    def close_images(self) -> None:
        self.tar.write(tar_end(self.size))
        self.tar.commit()

    def abort_images(self) -> None:
        self.tar.abort()
