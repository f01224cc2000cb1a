"""output_format="metadata": only `NNNNN.parquet`, one row per input row, no images. For runs whose
product is columns, not images: a model's embeddings (model=...) or hashes over existing shards,
which already hold the images."""

from __future__ import annotations

from typing import Any

from ..sample import Sample
from .base import ImagesAndMetadataWriter


class MetadataWriter(ImagesAndMetadataWriter):
    suffixes = (".parquet",)

    def write_image(self, sample: Sample, record: dict[str, Any]) -> None:
        pass  # the images stay where they are (or were never wanted)

    def close_images(self) -> None:
        pass
