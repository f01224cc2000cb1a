"""output_format="dummy": writes nothing (the worker still writes the stats file): for benchmarks."""

from __future__ import annotations

from ..sample import Sample
from .base import ShardWriter


class DummyWriter(ShardWriter):
    def write(self, sample: Sample) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
