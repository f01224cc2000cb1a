"""output_format="files": folder `NNNNN/` with `KEY.jpg`, `KEY.txt` (with captions) and `KEY.json`
for each success; every row in `NNNNN.parquet`. The folder is written as `_partial_NNNNN.<token>/`
and renamed when complete, where the filesystem renames folders (not on object stores: there each
file appears as it is written, and the stats file says whether the shard is done). `FolderImages`
reads a finished shard's images back."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from ..naming import sample_file
from ..sample import CAPTION, Sample
from ..storage import Folder
from .base import ImagesAndMetadataWriter, StoredImages
from .webdataset import caption_text, sample_json, sidecars


class FolderImages(StoredImages):
    """`KEY.{image_format}` of a shard's folder, read when asked for."""

    def __init__(self, folder: Folder, image_format: str):
        self.folder, self.image_format = folder, image_format

    def get(self, key: str) -> bytes:
        try:
            return self.folder.fs.cat_file(self.folder.path(sample_file(key, self.image_format)))
        except FileNotFoundError:
            raise KeyError(key) from None


class FilesWriter(ImagesAndMetadataWriter):
    suffixes = ("", ".parquet")
    reads_back = True

    @classmethod
    def stored_images(cls, folder: Folder, shard_name: str, image_format: str) -> StoredImages:
        return FolderImages(folder.child(shard_name), image_format)

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.captions = CAPTION in schema.names
        self.pending = folder.atomic_folder(shard_name)
        self.images = self.pending.folder

    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        # each file on its own needs no rename: the folder they are in appears whole, or is an object store's
        self.images.write(sample_file(sample.key, self.image_format), sample.data, atomic=False)
        if self.captions:
            self.images.write(sample_file(sample.key, "txt"), caption_text(record), atomic=False)
        for extension, data in sidecars(sample):
            self.images.write(sample_file(sample.key, extension), data, atomic=False)
        self.images.write(sample_file(sample.key, "json"), sample_json(record), atomic=False)

    def close_images(self) -> None:
        self.pending.commit()

    def abort_images(self) -> None:
        self.pending.abort()
