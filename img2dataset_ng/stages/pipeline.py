"""The download path as a list of stages built from the configuration, and the checks on its columns.

fetch -> verify hash -> resize -> exif -> hash -> phash -> model -> the user's stages. The metadata columns come
out in img2dataset's order: input columns, key, status, error_message, width, height,
original_width, original_height, exif, the hash; then the new ones behind options (phash).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..sample import CAPTION, CORE_COLUMNS, PRIVATE_PREFIX, URL
from . import exif, model, phash, resize
from .base import Stage, columns_of
from .fetch import Fetch
from .hashes import HASH_COLUMNS, ComputeHash, VerifyHash
from .load import Load

# names that save_additional_columns may not use: the core columns and every built-in stage's
RESERVED_COLUMNS = frozenset(
    [URL, CAPTION, *(f.name for f in CORE_COLUMNS), *(f.name for f in resize.COLUMNS), exif.COLUMN.name]
    + [f.name for f in HASH_COLUMNS.values()]
    + [phash.COLUMN.name]
)


def download_stages(config: Config, images: Callable[[Any], bytes | None] | None = None) -> list[Stage]:
    """The stages of one shard: built in the worker, closed when the shard ends. With `images` (existing
    shards as input: `reader/datasets.py`), the rows' images are read from there instead of downloaded."""
    stages: list[Stage] = [Fetch(config.fetch) if images is None else Load(images)]
    if config.metadata.verify_hash_type is not None:
        stages.append(VerifyHash(config.metadata.verify_hash_type))
    # the pixels resize encoded stay on the sample for the stages that read them: none decodes the image again
    keep_pixels = config.metadata.compute_phash or config.model.model is not None or bool(config.stages)
    stages.append(resize.Resize(config.resize, keep_pixels=keep_pixels))
    if config.metadata.extract_exif:
        stages.append(exif.Exif())
    if config.metadata.compute_hash is not None:
        stages.append(ComputeHash(config.metadata.compute_hash))
    if config.metadata.compute_phash:
        stages.append(phash.PHash(config.resize))
    if config.model.model is not None:
        stages.append(model.ModelStage(config))
    stages += [factory(config) for factory in config.stages]
    return stages


def check_columns(config: Config, stages: Sequence[Stage]) -> None:
    """Fail before any work when two columns of the metadata would have the same name."""
    # bbox_col is kept in the metadata under its own name too
    bbox = config.read.bbox_col
    additional = config.read.save_additional_columns + (
        (bbox,) if bbox and bbox not in config.read.save_additional_columns else ()
    )
    writer_columns = config.write.writer.own_columns(config.resize.encode_format.value)
    reserved = sorted(set(additional) & (RESERVED_COLUMNS | set(writer_columns)))
    reserved += [name for name in additional if name.startswith(PRIVATE_PREFIX)]
    if reserved:
        raise ConfigError(
            f"save_additional_columns and bbox_col may not use the reserved names {', '.join(reserved)} "
            f"(reserved: {', '.join(sorted(RESERVED_COLUMNS | set(writer_columns)))} "
            f"and names starting with {PRIVATE_PREFIX})"
        )
    seen = {*additional, URL, CAPTION, *(f.name for f in CORE_COLUMNS), *writer_columns}
    for column in columns_of(stages):
        if column.name in seen:
            raise ConfigError(f"a stage adds a column {column.name!r} that the metadata already has")
        seen.add(column.name)
