"""incremental_mode="retry_failed": the failed rows of finished shards run again, each shard rewritten in place.

The user runs the command of the original download again with `--incremental_mode retry_failed`: the url
list is cut into the same shards with the same keys. A shard without a valid stats file runs as in any run;
a finished one whose stats count none of the selected failures (`Selection`) is skipped unread; any other is
read back: its metadata parquet and its stored images (`ShardWriter.stored_images`). Each row that is not
selected is carried as it was (status, error_message, every metadata value, the stored bytes) and no stage
sees it; the selected rows go through the stages as in any run (retries, politeness). The shard is written
again whole, as an uninterrupted run would have written it had those rows succeeded the first time: the same
keys in the same order, its stats counted over all its rows. This works on img2dataset 1.47's folders too.

Kill-safety, on any filesystem. The new shard is written by the usual writers into `_retry_NNNNN/` (no
shard or stats glob of the output folder matches what is inside it, and every reader skips `_` names).
Then `_retry_NNNNN.commit`, written in one atomic write, lists the moves that make it the shard, and they
run: the old stats file goes first (from then on the shard is not done, for us or any reader of stats
files), each staged file replaces its final name (a rename on local disk, a copy then a delete on object
stores), files of the old shard that the new one lacks go, and the new stats file comes last; then the
staging folder and the record go. Every step can run again (a staged file that is gone was moved), so a
record found later is finished by `recover`, the first thing a run does under the folder's lock; a staging
folder without a record is a rewrite that never committed: it goes, and the old shard, untouched, stays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from .config import Config
from .errors import ConfigError
from .naming import (
    is_retry,
    is_retry_record,
    retry_record_name,
    retry_staging_name,
    shard_file,
    stats_file,
)
from .options import IncrementalMode
from .sample import CORE_COLUMNS, URL, Sample, Status
from .stages.model import extra_suffixes
from .stats import SUCCESS_REASON
from .storage import Folder
from .writers.base import StoredImages

logger = logging.getLogger(__name__)

DEFAULT_REASONS = (
    # ours: the failures that a later attempt may get past (the `retries` option retries the same ones)
    "timed out",  # also "timed out waiting for memory"
    "connection error",
    "connection refused",
    "name resolution failed",
    "name resolution timed out",
    "incomplete body",
    "HTTP Error 429",
    "HTTP Error 5",  # any 5xx, also a host given up on after a long Retry-After
    "robots.txt unreachable",
    "robots.txt timed out",
    # img2dataset 1.47's spellings of the same failures: str() of what urllib, http.client and socket raise
    # (its HTTP errors and bare time-outs, "HTTP Error 503: ..." and "timed out", are matched above)
    "<urlopen error timed out>",  # connecting timed out
    "The read operation timed out",  # over TLS
    "<urlopen error [Errno 110] Connection timed out>",
    "<urlopen error [Errno 111] Connection refused>",
    "<urlopen error [Errno 104] Connection reset by peer>",
    "[Errno 104] Connection reset by peer",  # while reading the body
    "<urlopen error [Errno 101] Network is unreachable>",
    "<urlopen error [Errno 113] No route to host>",
    "<urlopen error [Errno 99] Cannot assign requested address>",  # out of local ports
    "<urlopen error [Errno -2] Name or service not known>",
    "<urlopen error [Errno -3] Temporary failure in name resolution>",
    "<urlopen error [Errno -5] No address associated with hostname>",
    "Remote end closed connection without response",
    "IncompleteRead(",
)
FAILURE_STATUSES = frozenset(status.value for status in Status if status is not Status.SUCCESS)
CORE_NAMES = frozenset(field.name for field in CORE_COLUMNS)


class RetryMismatch(RuntimeError):
    """A finished shard cannot be rewritten: the url list is not the one it was made from, or it is damaged."""


@dataclass(frozen=True)
class Selection:
    """The rows to retry: those whose status is one of `reasons`, or whose error_message starts with one."""

    reasons: tuple[str, ...] = DEFAULT_REASONS

    @classmethod
    def of(cls, reasons: tuple[str, ...] | None) -> Selection:
        return cls(DEFAULT_REASONS if reasons is None else reasons)

    def row(self, status: str | None, error_message: str | None) -> bool:
        return status in self.reasons or (error_message or "").startswith(self.reasons)

    def stats(self, stats: Mapping[str, Any]) -> bool:
        """Whether a shard's stats file counts a selected row (a stats file without `status_dict`: any failure)."""
        by_reason = stats.get("status_dict")
        if not isinstance(by_reason, dict):
            return stats.get("count") != stats.get("successes")
        statuses = (s for s in self.reasons if s in FAILURE_STATUSES)
        return any(_positive(stats.get(status)) for status in statuses) or any(
            reason != SUCCESS_REASON and _positive(n) and reason.startswith(self.reasons)
            for reason, n in by_reason.items()
        )


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and value > 0


def check(config: Config) -> None:
    """Refuse, before any work, what retry_failed cannot do: a format that keeps no rows or images to carry."""
    mode, writer = config.run.incremental_mode, config.write.writer
    if config.run.retry_failed_reasons is not None and mode is not IncrementalMode.RETRY_FAILED:
        raise ConfigError(
            f"retry_failed_reasons is used only with incremental_mode='retry_failed' (incremental_mode is "
            f"{mode.value!r}): drop it, or add --incremental_mode retry_failed"
        )
    if mode is IncrementalMode.RETRY_FAILED and not writer.reads_back:
        raise ConfigError(
            f"incremental_mode='retry_failed' rewrites shards from their metadata parquet and stored images, "
            f"which output_format={config.write.output_format!r} does not keep or cannot read back: "
            "it works with webdataset, parquet, files and tfrecord"
        )


def shards_to_retry(done: Mapping[int, Mapping[str, Any]], reasons: tuple[str, ...] | None) -> frozenset[int]:
    """The finished shards (their stats by id) whose stats count a row to retry."""
    selection = Selection.of(reasons)
    return frozenset(shard_id for shard_id, stats in done.items() if selection.stats(stats))


# --- the commit: a record of moves, done again until done ------------------------------------------


def recover(folder: Folder, names: Iterable[str]) -> bool:
    """Finish the moves of every retry that committed (its record), drop what never committed (a staging
    folder alone); only under the folder's lock, before anything reads the shards. Whether anything changed."""
    names = [name for name in names if is_retry(name)]
    for name in names:
        if is_retry_record(name):
            logger.warning("finishing the rewrite of a shard that an interrupted run committed (%s)", name)
            roll_forward(folder, name)
    folder.remove(name for name in names if not is_retry_record(name))
    return bool(names)


def roll_forward(folder: Folder, record_name: str, record: Mapping[str, Any] | None = None) -> None:
    """Do the moves of a commit record; each step is idempotent, so this may run any number of times."""
    if record is None:
        with folder.open(record_name) as f:
            record = json.load(f)
    staged_stats, final_stats = record["stats"]
    if folder.has(staged_stats):  # the new stats file is not there yet: the old one must go first
        folder.remove([final_stats])
    folder.move_many((source, target) for source, target in record["moves"])
    folder.remove(record["remove"])
    folder.move(staged_stats, final_stats)
    folder.remove([record["staging"], record_name])


# --- one shard ---------------------------------------------------------------------------------------


class RetryShard:
    """The rewrite of one finished shard, for the shard worker: the staging folder its writer writes to,
    the old shard read back (`plan`), the carried and rerun samples in row order (`merge`), the `commit`."""

    def __init__(self, config: Config, shard_name: str):
        self.output = config.write.output_folder
        self.shard_name = shard_name
        self.writer = config.write.writer
        self.suffixes = (*self.writer.suffixes, *extra_suffixes(config))  # the writer's files, and NNNNN.npy
        self.image_format = config.resize.encode_format.value
        self.selection = Selection.of(config.run.retry_failed_reasons)
        self.staging_name = retry_staging_name(shard_name)
        self.staging = self.output.child(self.staging_name)
        self.record_name = retry_record_name(shard_name)
        if self.output.has(self.record_name):  # an earlier attempt committed, then failed moving: finish it
            roll_forward(self.output, self.record_name)
        self.output.remove([self.staging_name])
        self.rows: list[Sample | None] = []  # row order: a carried sample, or None for one that runs again
        self.images: StoredImages | None = None

    def plan(self, samples: list[Sample]) -> list[Sample]:
        """Read the old shard back and sort its rows: returns the samples to run again, keeps the carried ones
        for `merge`."""
        old = self._old_rows()
        keys = {sample.key for sample in samples}
        unknown = [key for key in old if key not in keys]
        if unknown:
            raise self._mismatch(f"it has rows with keys {unknown[:3]} that the url list's shard does not have")
        to_run: list[Sample] = []
        for sample in samples:
            row = old.get(sample.key)
            if row is not None and row.get(URL) != sample.row.get(URL):
                raise self._mismatch(
                    f"row {sample.key} has url {row.get(URL)!r} there but {sample.row.get(URL)!r} in the url list"
                )
            if row is None or self.selection.row(row.get("status"), row.get("error_message")):
                to_run.append(sample)
                self.rows.append(None)
            else:
                self.rows.append(self._carried(sample, row))
        logger.info("shard %s: %d row(s) to retry, %d kept", self.shard_name, len(to_run), len(samples) - len(to_run))
        return to_run

    def merge(self, finished: Iterator[Sample]) -> Iterator[Sample]:
        """Every sample of the shard in row order: the carried ones with their stored image (read when its turn
        comes), the others as the stages finish them (`finished` yields them in their order)."""
        if any(carried is not None and carried.ok for carried in self.rows):
            self.images = self.writer.stored_images(self.output, self.shard_name, self.image_format)
        try:
            for carried in self.rows:
                if carried is None:
                    yield next(finished)
                    continue
                if carried.ok:
                    carried.data = self._image(carried.key)
                yield carried
                carried.data = None
        finally:
            if self.images is not None:
                self.images.close()

    def commit(self) -> None:
        """The staged shard is complete (its stats file too): record the moves, then make them."""
        moves, remove = [], []
        for suffix in self.suffixes:
            name = shard_file(self.shard_name, suffix)
            if suffix:
                if self.staging.has(name):
                    moves.append((f"{self.staging_name}/{name}", name))
                continue
            staged = self.staging.files(name)  # a folder (files): moved file by file, as object stores have no folders
            moves += [(f"{self.staging_name}/{name}/{path}", f"{name}/{path}") for path in staged]
            remove += [f"{name}/{path}" for path in sorted(set(self.output.files(name)) - set(staged))]
        stats = stats_file(self.shard_name)
        record = {
            "shard": self.shard_name,
            "staging": self.staging_name,
            "stats": [f"{self.staging_name}/{stats}", stats],
            "moves": moves,
            "remove": remove,
        }
        self.output.write(self.record_name, json.dumps(record, indent=1).encode("utf-8"))
        roll_forward(self.output, self.record_name, record)

    def _old_rows(self) -> dict[str, dict[str, Any]]:
        """The old metadata rows by key (without the image column of the parquet format)."""
        name = shard_file(self.shard_name, ".parquet")
        own = set(self.writer.own_columns(self.image_format))
        with self.output.open(name) as f:
            parquet = pq.ParquetFile(f)
            table = parquet.read(columns=[c for c in parquet.schema_arrow.names if c not in own])
        rows = {row["key"]: row for row in table.to_pylist()}
        if len(rows) != table.num_rows or None in rows:
            raise self._mismatch("its keys are missing or repeated")
        return rows

    def _carried(self, sample: Sample, row: dict[str, Any]) -> Sample:
        """A row kept as it was: its status and reason, and every value but the input columns' (the same
        url list's: taken from it, so that their types are this run's)."""
        try:
            status = Status(row.get("status"))
        except ValueError:
            raise self._mismatch(f"row {sample.key} has an unknown status {row.get('status')!r}") from None
        fields = {name: value for name, value in row.items() if name not in CORE_NAMES and name not in sample.row}
        return Sample(sample.index, sample.key, sample.row, status, row.get("error_message"), fields=fields)

    def _image(self, key: str) -> bytes:
        assert self.images is not None
        try:
            return self.images.get(key)
        except KeyError:
            raise RetryMismatch(
                f"shard {self.shard_name}: {shard_file(self.shard_name, '.parquet')} says row {key} succeeded, but "
                f"its image is not in the shard: the shard is damaged (delete {stats_file(self.shard_name)} to "
                "download it again)"
            ) from None

    def _mismatch(self, what: str) -> RetryMismatch:
        return RetryMismatch(
            f"shard {self.shard_name} cannot be retried: in {shard_file(self.shard_name, '.parquet')}, {what}; "
            "the url list is not the one the output folder was made from (retry_failed needs the command of "
            "the original download)"
        )
