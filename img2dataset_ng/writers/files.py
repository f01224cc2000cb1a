"""output_format="files": folder `NNNNN/` with `KEY.jpg`, `KEY.txt` (with captions) and `KEY.json`
for each success; every row in `NNNNN.parquet`."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..naming import sample_file
from ..sample import CAPTION, Sample
from ..storage import Folder
from .base import ImagesAndMetadataWriter
from .webdataset import caption_text, sample_json


class FilesWriter(ImagesAndMetadataWriter):
    suffixes = ("", ".parquet")

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.captions = CAPTION in schema.names
        self.images = folder.child(shard_name)
        self.images.makedirs()

    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        self.images.write(sample_file(sample.key, self.image_format), sample.data)
        if self.captions:
            self.images.write(sample_file(sample.key, "txt"), caption_text(record))
        self.images.write(sample_file(sample.key, "json"), sample_json(record))

    def close_images(self) -> None:
        """Each file is complete once written."""

    def abort(self) -> None:
        """Files already written stay until the shard runs again (they are removed before it does)."""
