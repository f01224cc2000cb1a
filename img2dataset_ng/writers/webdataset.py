"""output_format="webdataset": `NNNNN.tar` with `KEY.jpg`, `KEY.txt` (with captions) and `KEY.json`
for each success, adjacent per sample; every row in `NNNNN.parquet`. `TarImages` reads a finished
tar's images back (ours, or img2dataset 1.47's, whose members are in the order downloads finished)."""

from __future__ import annotations

import json
import tarfile
from typing import IO, Any

import pyarrow as pa

from ..naming import sample_file, shard_file
from ..sample import CAPTION, SIDECAR, Sample
from ..storage import Folder
from .base import ImagesAndMetadataWriter, StoredImages
from .codecs.tar import tar_end, tar_member


def sample_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, default=_plain, ensure_ascii=False).encode("utf-8")


def _plain(value: Any) -> Any:
    """A value JSON has no type for: a numpy array (a model's output) as a list of numbers, else its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def caption_text(record: dict[str, Any]) -> bytes:
    return str(record[CAPTION] or "").encode("utf-8")


def sidecars(sample: Sample) -> list[tuple[str, bytes]]:
    """(extension, bytes) of the files an input gave beside the image (image_folder's `.cls`)."""
    return [(n[len(SIDECAR) :], v) for n, v in sample.row.items() if n.startswith(SIDECAR) and v is not None]


class TarImages(StoredImages):
    """The `KEY.{image_format}` members of a tar, indexed from their headers (the data is read when asked for)."""

    def __init__(self, file: IO[bytes], image_format: str):
        self.file = file
        self.tar = tarfile.open(fileobj=file, mode="r:")  # noqa: SIM115 - closed in close()
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in self.tar:
            key, _, extension = member.name.rpartition("/")[2].partition(".")
            if extension == image_format and member.isfile():
                self.members[key] = member

    def get(self, key: str) -> bytes:
        data = self.tar.extractfile(self.members[key])
        assert data is not None  # a regular file's
        return data.read()

    def close(self) -> None:
        self.tar.close()
        self.file.close()


class WebDatasetWriter(ImagesAndMetadataWriter):
    suffixes = (".tar", ".parquet")
    reads_back = True

    @classmethod
    def stored_images(cls, folder: Folder, shard_name: str, image_format: str) -> StoredImages:
        return TarImages(folder.open(shard_file(shard_name, ".tar")), image_format)

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.captions = CAPTION in schema.names
        self.tar = folder.atomic(shard_file(shard_name, ".tar"))  # appears complete, on commit
        self.size = 0

    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        members = [tar_member(sample_file(sample.key, self.image_format), sample.data)]
        if self.captions:
            members.append(tar_member(sample_file(sample.key, "txt"), caption_text(record)))
        members += [tar_member(sample_file(sample.key, extension), data) for extension, data in sidecars(sample)]
        members.append(tar_member(sample_file(sample.key, "json"), sample_json(record)))
        data = b"".join(members)
        self.tar.write(data)
        self.size += len(data)

    def close_images(self) -> None:
        self.tar.write(tar_end(self.size))
        self.tar.commit()

    def abort_images(self) -> None:
        self.tar.abort()
