"""The writer contract, the registry of output formats, and the metadata parquet every format shares.

A writer is made by the shard worker for one shard and used as a context manager: `write(sample)`
once per sample of the shard, in sample order, success or failure alike; then `close()` makes
its files visible complete, or, when the shard failed, `abort()` discards what was written.
The shard's stats file is not the writer's: the worker writes it last, after `close()`.

Writers open their files with `Folder.atomic` (or `Folder.atomic_folder`), so that no file of a
killed or failed shard shows under a shard name. When `close()` fails (a full disk), `abort()`
runs; an `abort()` that fails itself is logged, never raised: the error that failed the shard is
the one the user must see, and every handle is closed either way.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from .. import arrow
from ..naming import shard_file
from ..registry import Builtin, Registry
from ..sample import Sample
from ..storage import AtomicFile, Folder

logger = logging.getLogger(__name__)


class StoredImages(ABC):
    """The stored images of a finished shard, read back by key (incremental_mode="retry_failed" carries them
    into the rewritten shard); read when asked for, so that a shard's images are never all in memory."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The stored image of the sample `key`; KeyError when the shard holds none."""

    def close(self) -> None:  # noqa: B027 - optional: most hold an open file
        """Release the files read."""


class ShardWriter(ABC):
    # what the writer makes in the output folder, as suffixes of the shard name (`.tar`, or "" for
    # a folder named like the shard): removed before the shard is run again
    suffixes: ClassVar[tuple[str, ...]] = ()
    # whether `stored_images` reads a finished shard's images back; with the metadata rows of `NNNNN.parquet`
    # that is what incremental_mode="retry_failed" needs to rewrite a shard
    reads_back: ClassVar[bool] = False

    @classmethod
    def own_columns(cls, image_format: str) -> tuple[str, ...]:
        """Columns the writer adds next to the metadata ones (checked against them before any work)."""
        return ()

    @classmethod
    def stored_images(cls, folder: Folder, shard_name: str, image_format: str) -> StoredImages:
        """The images of the finished shard `shard_name` in `folder`, by key (only when `reads_back`)."""
        raise NotImplementedError(f"{cls.__name__} cannot read its shards back")

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        """`schema`: the metadata columns; `image_format`: the stored images' extension (`jpg`)."""
        self.folder = folder
        self.shard_name = shard_name
        self.schema = schema
        self.image_format = image_format

    @abstractmethod
    def write(self, sample: Sample) -> None:
        """One sample: its metadata row always, its image (`sample.data`) when it succeeded."""

    @abstractmethod
    def close(self) -> None:
        """Commit: every file of the shard is complete and visible."""

    @abstractmethod
    def abort(self) -> None:
        """The shard failed: discard what was written where the filesystem allows it."""

    def record(self, sample: Sample) -> dict[str, Any]:
        """The sample's metadata row, in schema order."""
        return sample.metadata(self.schema.names)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None:
            self._abort_quietly()
            return
        try:
            self.close()
        except BaseException:
            self._abort_quietly()
            raise

    def _abort_quietly(self) -> None:
        try:
            self.abort()
        except Exception as error:  # noqa: BLE001 - must not replace the error that failed the shard
            logger.warning(
                "shard %s: discarding its files failed too: %s: %s", self.shard_name, type(error).__name__, error
            )


class MetadataParquet:
    """`NNNNN.parquet` with one row per sample, written whole when the shard closes (rows are small)."""

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema):
        self.folder, self.name, self.schema = folder, shard_file(shard_name, ".parquet"), schema
        self.rows: list[dict[str, Any]] = []
        self.file: AtomicFile | None = None

    def add(self, record: dict[str, Any]) -> None:
        self.rows.append(record)

    def close(self) -> None:
        table = arrow.table(self.rows, self.schema)
        self.file = self.folder.atomic(self.name)
        pq.write_table(table, self.file.file)
        self.file.commit()

    def abort(self) -> None:
        """Remove the file when it was (being) written: the shard failed after it."""
        self.rows = []
        if self.file is not None:
            self.file.abort()


class ImagesAndMetadataWriter(ShardWriter):
    """The common shape of a format: every row goes to `NNNNN.parquet`, each success also to the
    format's own files through `write_image`; `close_images` commits those before the metadata."""

    def __init__(self, folder: Folder, shard_name: str, schema: pa.Schema, image_format: str):
        super().__init__(folder, shard_name, schema, image_format)
        self.metadata = MetadataParquet(folder, shard_name, schema)

    @abstractmethod
    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        """Store one successful sample, its metadata row given."""

    @abstractmethod
    def close_images(self) -> None:
        """Commit the format's own files (before the metadata parquet)."""

    def abort_images(self) -> None:
        """Discard the format's own files; never raises (by default there is nothing to discard)."""

    def write(self, sample: Sample) -> None:
        record = self.record(sample)
        self.metadata.add(record)
        if sample.ok:
            self.write_image(sample, record)

    def close(self) -> None:
        self.close_images()
        self.metadata.close()

    def abort(self) -> None:
        self.abort_images()
        self.metadata.abort()


WRITERS: Registry[type[ShardWriter]] = Registry(
    "output_format",
    "img2dataset_ng.writers",
    builtins={
        "files": Builtin("img2dataset_ng.writers.files:FilesWriter"),
        "webdataset": Builtin("img2dataset_ng.writers.webdataset:WebDatasetWriter"),
        "parquet": Builtin("img2dataset_ng.writers.parquet:ParquetWriter"),
        "tfrecord": Builtin("img2dataset_ng.writers.tfrecord:TFRecordWriter"),
        "metadata": Builtin("img2dataset_ng.writers.metadata:MetadataWriter"),
        "dummy": Builtin("img2dataset_ng.writers.dummy:DummyWriter"),
    },
)


def register_writer(name: str, writer: type[ShardWriter]) -> None:
    """Make `output_format=name` use `writer`; third-party packages may instead declare an entry
    point in the `img2dataset_ng.writers` group."""
    WRITERS.register(name, writer)
