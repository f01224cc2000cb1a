"""The download path as a list of stages built from the configuration, and the checks on its columns.

fetch -> verify hash -> resize -> exif -> hash -> the user's stages. The metadata columns come out
in img2dataset's order: input columns, key, status, error_message, width, height,
original_width, original_height, exif, the hash.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Config
from ..errors import ConfigError
from ..sample import CAPTION, CORE_COLUMNS, PRIVATE_PREFIX, URL
from . import exif, resize
from .base import Stage, columns_of
from .fetch import Fetch
from .hashes import HASH_COLUMNS, ComputeHash, VerifyHash

# names that save_additional_columns may not use: the core columns and every built-in stage's
RESERVED_COLUMNS = frozenset(
    [URL, CAPTION, *(f.name for f in CORE_COLUMNS), *(f.name for f in resize.COLUMNS), exif.COLUMN.name]
    + [f.name for f in HASH_COLUMNS.values()]
)


def download_stages(config: Config) -> list[Stage]:
    """The stages of one shard: built in the worker, closed when the shard ends."""
    stages: list[Stage] = [Fetch(config.fetch)]
    if config.metadata.verify_hash_type is not None:
        stages.append(VerifyHash(config.metadata.verify_hash_type))
    stages.append(resize.Resize(config.resize))
    if config.metadata.extract_exif:
        stages.append(exif.Exif())
    if config.metadata.compute_hash is not None:
        stages.append(ComputeHash(config.metadata.compute_hash))
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
