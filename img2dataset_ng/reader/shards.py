"""Cuts the reader's rows into shards, each written to a small arrow file that any worker can read.

Memory grows with the shard size, not with the input: each shard is written as soon as it is
full. A shard is described by a tiny picklable `Shard` (its id and that file's folder and name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..naming import KeyFormat, input_shard_file
from ..options import InputFormat
from ..storage import Folder
from .formats import UrlListReader


@dataclass(frozen=True)
class Shard:
    """One unit of work: an id and the arrow file (in a folder every worker can read) holding its rows."""

    shard_id: int
    folder: Folder
    file_name: str
    row_count: int
    retry: bool = False  # incremental_mode="retry_failed": a finished shard whose failed rows run again (retry.py)

    def read(self) -> pa.Table:
        with self.folder.open(self.file_name) as f:
            return feather.read_table(f)


class Sharder:
    """Cuts the reader's rows into shards and writes each to a small arrow file.

    Shard ids count up from `first_shard_id` across the files in sorted order; each file starts a
    new shard. Shards in `skip` are counted but not written (they are done already); shards in `retry`
    are handed out marked as retries of a finished shard.
    """

    def __init__(
        self,
        reader: UrlListReader,
        key_format: KeyFormat,
        tmp_folder: Folder,
        first_shard_id: int = 0,
        skip: frozenset[int] = frozenset(),
        retry: frozenset[int] = frozenset(),
    ):
        self.reader = reader
        self.key_format = key_format
        self.tmp_folder = tmp_folder
        self.first_shard_id = first_shard_id
        self.skip = skip
        self.retry = retry
        self.skipped = 0
        # told (shards, rows) to do, skipped shards left out, as soon as known: from the parquet footers
        # before any row is read, otherwise counted, when the last shard is handed out
        self.on_total: Callable[[int, int], None] | None = None

    def __iter__(self) -> Iterator[Shard]:
        self._announce(self._footer_total())
        shards = rows = 0
        ahead: Shard | None = None  # handed out once the next one is read, so the last one comes with the total
        for shard in self._shards():
            shards, rows = shards + 1, rows + shard.row_count
            if ahead is not None:
                yield ahead
            ahead = shard
        self._announce((shards, rows))
        if ahead is not None:
            yield ahead

    def _shards(self) -> Iterator[Shard]:
        shard_id = self.first_shard_id
        for path in self.reader.files:
            for rows in self._shard_tables(path):
                if shard_id in self.skip:
                    self.skipped += 1
                else:
                    yield self._write(shard_id, rows)
                shard_id += 1

    def _announce(self, total: tuple[int, int] | None) -> None:
        if total is not None and self.on_total is not None:
            self.on_total(*total)

    def _footer_total(self) -> tuple[int, int] | None:
        """(shards, rows) to do from the parquet footers (cheap: no row read); None for other formats."""
        if self.reader.config.input_format is not InputFormat.PARQUET:
            return None
        size, shard_id, shards, rows = self.key_format.number_sample_per_shard, self.first_shard_id, 0, 0
        try:
            for path in self.reader.files:
                with self.reader.fs.open(path, "rb") as f:
                    file_rows = pq.ParquetFile(f, pre_buffer=False).metadata.num_rows
                for start in range(0, file_rows, size):  # each file starts a new shard, as in `_shards`
                    if shard_id not in self.skip:
                        shards, rows = shards + 1, rows + min(size, file_rows - start)
                    shard_id += 1
        except (pa.ArrowInvalid, OSError):  # the reader reports what is wrong with the file; count instead
            return None
        return shards, rows

    def _shard_tables(self, path: str) -> Iterator[pa.Table]:
        size = self.key_format.number_sample_per_shard
        pending: list[pa.Table] = []
        pending_rows = 0
        for batch in self.reader.batches(path):
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows < size:
                continue
            table = pa.concat_tables(pending)
            start = 0
            while table.num_rows - start >= size:
                yield table.slice(start, size)
                start += size
            pending = [table.slice(start)] if start < table.num_rows else []
            pending_rows = table.num_rows - start
        if pending_rows:
            yield pa.concat_tables(pending)

    def _write(self, shard_id: int, rows: pa.Table) -> Shard:
        folder = self.tmp_folder
        file_name = input_shard_file(self.key_format.shard_name(shard_id))
        folder.makedirs()
        with folder.open(file_name, "wb") as f:
            # an uncompressed Feather v2 file is an Arrow IPC file; feather.write_feather would import pandas
            with ipc.new_file(f, rows.schema) as writer:
                writer.write_table(rows.combine_chunks())
        return Shard(shard_id, folder, file_name, rows.num_rows, shard_id in self.retry)
