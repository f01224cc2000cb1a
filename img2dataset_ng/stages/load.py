"""The first stage when existing shards are the input (reader/datasets.py): the row's image, read from its
input shard, instead of a download."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..sample import Sample, StageError, Status
from .base import Stage

MEMBER = "__member"  # the row's place in its input shard (reader.datasets.MEMBER)


class Load(Stage):
    """Fills `sample.source` and `sample.data` with the row's stored image from the input shard."""

    failure = Status.FAILED_TO_DOWNLOAD

    def __init__(self, images: Callable[[Any], bytes | None]):
        self.images = images

    def __call__(self, sample: Sample) -> None:
        member = sample.row.get(MEMBER)
        data = self.images(member) if member is not None else None
        if not data:
            raise StageError("no image for this row in the input shard")
        sample.source = sample.data = data
