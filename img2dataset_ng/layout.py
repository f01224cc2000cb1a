"""The one place that names things: shard names, sample keys and the paths of a shard's files.

The output folder is normalised once into an `OutputFolder` (an fsspec filesystem plus a path);
everything that writes or lists output goes through it, and nothing else inspects which
filesystem it is.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

STATS_SUFFIX = "_stats.json"
TMP_FOLDER_NAME = "_tmp"
SHARD_FILE_EXTENSIONS = (".tar", ".parquet", ".tfrecord")
_SHARD_ENTRY = re.compile(r"^(\d+)(?:\.|_stats\.json$|$)")


@dataclass(frozen=True)
class KeyFormat:
    """Shard names and sample keys, img2dataset-compatible."""

    number_sample_per_shard: int
    oom_shard_count: int = 5

    @property
    def sample_digits(self) -> int:
        return math.ceil(math.log10(self.number_sample_per_shard)) if self.number_sample_per_shard > 1 else 0

    def shard_name(self, shard_id: int) -> str:
        return str(shard_id).zfill(self.oom_shard_count)

    def key(self, shard_id: int, row: int) -> str:
        digits = self.sample_digits
        return str(shard_id * 10**digits + row).zfill(digits + self.oom_shard_count)


def stable_id(text: str) -> str:
    """A short name derived from `text` (to keep the temporary files of different runs apart)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def shard_id_of(name: str) -> int | None:
    """The shard id of an output folder entry (`00042.tar`, `00042_stats.json`, `00042/`), else None."""
    match = _SHARD_ENTRY.match(name)
    return int(match.group(1)) if match else None


def filesystem(url: str, storage_options: Mapping[str, Any] = ()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of `url`.

    `storage_options` are the filesystem's options (`{"endpoint_url": ...}`), or options keyed by
    protocol (`{"s3": {...}, "gcs": {...}}`) when a run reads from one store and writes to another.
    """
    options = dict(storage_options)
    if options and all(isinstance(v, dict) for v in options.values()) and set(options) <= _PROTOCOLS:
        options = options.get(fsspec.utils.get_protocol(url), {})
    return fsspec.core.url_to_fs(url, **options)


_PROTOCOLS = set(fsspec.available_protocols()) | {"file", "local"}


@dataclass(frozen=True)
class OutputFolder:
    """A folder on any fsspec filesystem. Picklable: the filesystem is rebuilt in each worker."""

    url: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, url: str, storage_options: dict[str, Any] | None = None) -> OutputFolder:
        return cls(url.rstrip("/") or url, tuple(sorted((storage_options or {}).items())))

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return filesystem(self.url, dict(self.storage_options))[0]

    @property
    def root(self) -> str:
        return filesystem(self.url, dict(self.storage_options))[1].rstrip("/")

    def path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def child(self, name: str) -> OutputFolder:
        return OutputFolder(f"{self.url}/{name}", self.storage_options)

    def names(self) -> list[str]:
        """Base names of the entries directly in the folder ([] when it does not exist)."""
        fs, root = self.fs, self.root
        fs.invalidate_cache(root)  # object stores cache listings; this one must be fresh
        if not fs.exists(root):
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False))

    def finished_shards(self) -> set[int]:
        """Ids of the shards whose stats file, their completion marker, exists."""
        return {
            shard_id
            for name in self.names()
            if name.endswith(STATS_SUFFIX) and (shard_id := shard_id_of(name)) is not None
        }

    def highest_shard_id(self) -> int | None:
        ids = [shard_id for name in self.names() if (shard_id := shard_id_of(name)) is not None]
        return max(ids) if ids else None

    def remove_shard_outputs(self, shard_name: str) -> None:
        """Delete what an interrupted attempt at this shard may have left (stats file first)."""
        fs = self.fs
        fs.invalidate_cache(self.root)
        for name in (shard_name + STATS_SUFFIX, *(shard_name + ext for ext in SHARD_FILE_EXTENSIONS), shard_name):
            if fs.exists(self.path(name)):
                fs.rm(self.path(name), recursive=True)

    def empty(self) -> None:
        fs, root = self.fs, self.root
        if fs.exists(root):
            fs.rm(root, recursive=True)
        fs.makedirs(root, exist_ok=True)
