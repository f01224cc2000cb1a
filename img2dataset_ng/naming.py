"""The one place that names things: shard names, sample keys, and every file and folder of a run.

Output folder entries: `NNNNN` + a writer's suffix (`.tar`, `.parquet`, `.tfrecord`, the `NNNNN/`
folder), `NNNNN_stats.json` (the completion marker), `_tmp/` (shard inputs waiting for workers),
`_img2dataset_ng_run.json` (what made the folder), `_img2dataset_ng.lock` (the run that holds the
folder, and its transient `_img2dataset_ng.lock.*` siblings), `_partial_*` (a file or folder being
written, renamed to its final name when complete), and, with incremental_mode="retry_failed",
`_retry_NNNNN/` (a shard rewritten beside the old one) and `_retry_NNNNN.commit` (the record of its
moves over the old one: retry.py). Nothing else in it is ours.

Names of things being written start with `_` and end with a random token: shard globs (`*.tar`,
`*.parquet`, `*.tfrecord`) do not match them, and Spark, pyarrow datasets and Hugging Face skip
`_`-prefixed files when they read a folder.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

STATS_SUFFIX = "_stats.json"
TMP_FOLDER_NAME = "_tmp"
RUN_RECORD = "_img2dataset_ng_run.json"  # what made the folder; `_` keeps Spark and globs of shards off it
INPUT_SHARD_SUFFIX = ".feather"
LOCK_FILE = "_img2dataset_ng.lock"  # who runs in the folder now (lock.py)
PARTIAL_PREFIX = "_partial_"  # a file or folder being written; renamed when complete
RETRY_PREFIX = "_retry_"  # retry_failed: a shard's new files, staged; and the record of their moves
RETRY_RECORD_SUFFIX = ".commit"
INDEX_FILE = "wids-index.json"  # the shard index of webdataset output that wids reads (index.py)
DUPLICATES_FOLDER = "_duplicates"  # the duplicates report (duplicates.py): `_` keeps `*.parquet` globs off it
_SHARD_ENTRY = re.compile(r"^(\d+)(?:\.|_stats\.json$|$)")


@dataclass(frozen=True)
class KeyFormat:
    """Shard names and sample keys, img2dataset-compatible."""

    number_sample_per_shard: int = 10000
    oom_shard_count: int = 5

    @property
    def sample_digits(self) -> int:
        return math.ceil(math.log10(self.number_sample_per_shard)) if self.number_sample_per_shard > 1 else 0

    def shard_name(self, shard_id: int) -> str:
        return str(shard_id).zfill(self.oom_shard_count)

    def key(self, shard_id: int, row: int) -> str:
        digits = self.sample_digits
        return str(shard_id * 10**digits + row).zfill(digits + self.oom_shard_count)


def shard_file(shard_name: str, suffix: str) -> str:
    """An output entry of a shard: `00042` + `.tar`."""
    return shard_name + suffix


def sample_file(key: str, extension: str) -> str:
    """A file of one sample (in a tar or a folder): `000420005.jpg`; webdataset groups them by key."""
    return f"{key}.{extension}"


def stats_file(shard_name: str) -> str:
    return shard_name + STATS_SUFFIX


def input_shard_file(shard_name: str) -> str:
    """The file holding a shard's input rows in the temporary folder."""
    return shard_name + INPUT_SHARD_SUFFIX


def partial_name(name: str, token: str) -> str:
    """The temporary name of `name` while it is written: `_partial_00042.tar.3f9c2a`, a name no shard glob matches."""
    return f"{PARTIAL_PREFIX}{name}.{token}"


def is_partial(name: str) -> bool:
    """Whether an entry is something being written (or the leftover of a write that was killed)."""
    return name.startswith(PARTIAL_PREFIX)


def retry_staging_name(shard_name: str) -> str:
    """The folder where retry_failed writes a shard's new files: `_retry_00042/` (holding `00042.tar`, ...)."""
    return RETRY_PREFIX + shard_name


def retry_record_name(shard_name: str) -> str:
    """The record of the moves that make a staged shard the shard: `_retry_00042.commit`."""
    return RETRY_PREFIX + shard_name + RETRY_RECORD_SUFFIX


def is_retry(name: str) -> bool:
    """A retry's staging folder or commit record (retry.py)."""
    return name.startswith(RETRY_PREFIX)


def is_retry_record(name: str) -> bool:
    return is_retry(name) and name.endswith(RETRY_RECORD_SUFFIX)


def is_lock(name: str) -> bool:
    """The lock file, or one of the transient files its holder makes next to it."""
    return name == LOCK_FILE or name.startswith(LOCK_FILE + ".")


def tmp_folder_name(output_url: str) -> str:
    """The run's folder inside a user-given `tmp_folder`: runs into different outputs stay apart."""
    return f"img2dataset_ng_{hashlib.sha1(output_url.encode()).hexdigest()[:12]}"


def shard_id_of(name: str) -> int | None:
    """The shard id of an output folder entry (`00042.tar`, `00042_stats.json`, `00042/`), else None."""
    match = _SHARD_ENTRY.match(name)
    return int(match.group(1)) if match else None


def is_ours(name: str) -> bool:
    """Whether an output folder entry is of our layout (what overwrite may delete)."""
    return (
        shard_id_of(name) is not None
        or name in (TMP_FOLDER_NAME, RUN_RECORD, INDEX_FILE, DUPLICATES_FOLDER)
        or is_partial(name)
        or is_lock(name)
        or is_retry(name)
    )


def stats_files(names: Iterable[str]) -> dict[int, str]:
    """{shard id: stats file name} for the stats files among `names`: candidates for "done", each to be
    read and checked (a stats file cut short by a full disk names a shard that is not done)."""
    return {
        shard_id: name for name in names if name.endswith(STATS_SUFFIX) and (shard_id := shard_id_of(name)) is not None
    }


def highest_shard_id(names: Iterable[str]) -> int | None:
    ids = [shard_id for name in names if (shard_id := shard_id_of(name)) is not None]
    return max(ids) if ids else None
