"""One value per sample that every stage reads and fills, and the metadata row made from it.

A sample starts as one input row (its index in the shard, its key, its input columns) and goes
through the stages; each may fill `fields` (which become metadata columns), replace `data` (what
is stored), or fail it with a status and a reason. Success or failure, every sample ends as one
metadata row: the input columns, then `key`, `status`, `error_message`, then the stages' columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import numpy as np


class Status(str, Enum):
    SUCCESS = "success"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_RESIZE = "failed_to_resize"


class StageError(Exception):
    """Raised by a stage to fail the sample it works on: `message` becomes its `error_message`.

    The status is the stage's `failure` unless `status` is given.
    """

    def __init__(self, message: str, status: Status | None = None):
        super().__init__(message)
        self.message = message
        self.status = status


class Deferred(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a stage that cannot finish a sample now but may later (a throttled host): the sample
    starts again from the first stage at `at` (a `time.monotonic()` value). Raise it before changing the
    sample, and count the attempts (`Sample.attempts`) so that it ends."""

    def __init__(self, at: float):
        super().__init__(at)
        self.at = at


CORE_COLUMNS = (
    pa.field("key", pa.string()),
    pa.field("status", pa.string()),
    pa.field("error_message", pa.string()),
)
# the names input columns get in a sample's row, whatever the url list calls them
URL, CAPTION = "url", "caption"
PRIVATE_PREFIX = "__"  # input columns that stages read but the metadata does not keep:
BBOX, VERIFY_HASH = "__bbox", "__verify_hash"  # bbox_col, and verify_hash's column
INPUT_ERROR = "__input_error"  # set by the reader on a row it could not read: the row fails with it
SIDECAR = "__sidecar_"  # `__sidecar_cls`: bytes stored beside the image as `KEY.cls` (webdataset and files output)


@dataclass(slots=True)
class Sample:
    index: int  # the row's position in its shard
    key: str
    row: dict[str, Any]  # the input columns: url, caption, additional columns, private ones
    status: Status = Status.SUCCESS
    error_message: str | None = None
    source: bytes | None = None  # the downloaded bytes, as they came
    data: bytes | None = None  # what is stored: the downloaded bytes, then the resized image
    fields: dict[str, Any] = field(default_factory=dict)  # what stages add: width, exif, sha256, ...
    # called once when the downloaded bytes are dropped: gives back the memory budget they were counted in
    release_source: Callable[[], None] | None = None
    attempts: int = 0  # times a stage deferred it (`Deferred`)
    # the stored image's pixels (8-bit BGR or BGRA, upright), as the resize stage encoded them, kept
    # when a later stage reads them (compute_phash, the user's stages) so that none decodes `data` again;
    # None otherwise (and with disable_all_reencoding). Dropped with the downloaded bytes (`free_source`).
    pixels: np.ndarray | None = None
    # called once when `pixels` are dropped: gives back the decode budget they are counted in
    release_pixels: Callable[[], None] | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS

    def free_source(self) -> None:
        """Every stage has seen the downloaded bytes: drop them (and the stored image's `pixels`) and give
        back their memory budget. A failed sample stores nothing, so its `data` goes too; a stored copy of
        the bytes (`data`, when stored as downloaded) is the reorder buffer's to bound from here on (see
        `worker.in_order`)."""
        if not self.ok:
            self.data = None
        self.source = None
        release, self.release_source = self.release_source, None
        if release is not None:
            release()
        self.drop_pixels()

    def drop_pixels(self) -> None:
        """Drop the stored image's pixels (`pixels`) and give back their memory budget."""
        self.pixels = None
        release, self.release_pixels = self.release_pixels, None
        if release is not None:
            release()

    def fail(self, status: Status, message: str) -> None:
        self.status, self.error_message = status, message

    def metadata(self, names: Iterable[str]) -> dict[str, Any]:
        """The metadata row: a value for each of `names` (None where nothing filled it)."""
        values = {
            **self.row,
            **self.fields,
            "key": self.key,
            "status": self.status.value,
            "error_message": self.error_message,
        }
        return {name: values.get(name) for name in names}


def metadata_schema(input_schema: pa.Schema, stage_columns: Sequence[pa.Field]) -> pa.Schema:
    """The shard's metadata columns: input columns (all but private ones), core columns, stage columns."""
    inputs = [f for f in input_schema if not f.name.startswith(PRIVATE_PREFIX)]
    return pa.schema([*inputs, *CORE_COLUMNS, *stage_columns])
