"""Reads url lists of every input format, streaming, batch by batch, with canonical column names."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..config import ReadConfig
from ..errors import InputError
from ..options import InputFormat
from ..sample import BBOX, CAPTION, URL, VERIFY_HASH
from ..storage import filesystem
from .json_stream import iter_json_array

logger = logging.getLogger(__name__)

BATCH_ROWS = 65536


class UrlListReader:
    """Streams the input files of a `ReadConfig` as tables with canonical column names.

    Output columns, in order: the additional columns, `caption`, `url`, then the internal
    `__bbox` / `__verify_hash` columns when asked for.
    """

    def __init__(self, config: ReadConfig):
        self.config = config
        self.fs, root = filesystem(config.url_list, dict(config.storage_options))
        self.files = self._list_files(root)
        # input column -> output column, in output order
        self.columns: dict[str, str] = {}
        renames = [(c, c) for c in config.save_additional_columns]
        if config.caption_col is not None:
            renames.append((config.caption_col, CAPTION))
        renames.append((config.url_col, URL))
        if config.bbox_col is not None:
            renames.append((config.bbox_col, BBOX))
        if config.verify_hash_col is not None:
            renames.append((config.verify_hash_col, VERIFY_HASH))
        self.renames = renames

    def _list_files(self, root: str) -> list[str]:
        suffix = "." + self.config.input_format.value
        if not self.fs.exists(root):
            raise InputError(f"url_list {self.config.url_list!r} does not exist")
        if self.fs.isdir(root):
            files = sorted(p for p in self.fs.find(root) if p.endswith(suffix))
            if not files:
                raise InputError(f"url_list folder {self.config.url_list!r} holds no *{suffix} file")
            return files
        return [root]

    @property
    def input_columns(self) -> list[str]:
        return list(dict.fromkeys(source for source, _ in self.renames))

    def check_columns(self) -> None:
        """Fail, before any download, when a file lacks a column that the options name."""
        if self.config.input_format in (InputFormat.TXT, InputFormat.TXT_GZ):
            return
        for path in self.files:
            found = self._columns_of(path)
            if found is None:  # empty file: nothing to check
                continue
            missing = [c for c in self.input_columns if c not in found]
            if missing:
                raise InputError(
                    f"column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found in {path}; "
                    f"columns found: {', '.join(map(repr, found))}"
                )

    def batches(self, path: str) -> Iterator[pa.Table]:
        """The rows of one file, batch by batch, with the output columns."""
        fmt = self.config.input_format
        try:
            if fmt is InputFormat.PARQUET:
                yield from self._parquet(path)
            elif fmt in (InputFormat.TXT, InputFormat.TXT_GZ):
                yield from self._txt(path)
            elif fmt in (InputFormat.CSV, InputFormat.CSV_GZ, InputFormat.TSV, InputFormat.TSV_GZ):
                yield from self._csv(path)
            else:
                yield from self._json(path)
        except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as error:
            raise InputError(f"cannot read {path} as {fmt.value}: {error}") from error

    # --- one method per format -------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb") -> IO:
        return self.fs.open(path, mode, compression="infer")

    def _columns_of(self, path: str) -> list[str] | None:
        fmt = self.config.input_format
        try:
            if fmt is InputFormat.PARQUET:
                with self._open(path) as f:
                    return pq.ParquetFile(f, pre_buffer=False).schema_arrow.names
            if fmt in (InputFormat.CSV, InputFormat.CSV_GZ, InputFormat.TSV, InputFormat.TSV_GZ):
                with self._open(path, "rt") as f:
                    return next(csv.reader(f, delimiter=self._delimiter), None)
            first = next(self._json_records(path), None)
            return None if first is None else list(first)
        except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as error:
            raise InputError(f"cannot read {path} as {fmt.value}: {error}") from error

    @property
    def _delimiter(self) -> str:
        return "\t" if self.config.input_format in (InputFormat.TSV, InputFormat.TSV_GZ) else ","

    def _select(self, table: pa.Table) -> pa.Table:
        arrays = [table.column(source) for source, _ in self.renames]
        names = [target for _, target in self.renames]
        table = pa.table(arrays, names=names)
        for name in (URL, CAPTION):
            if name in names and table.schema.field(name).type != pa.string():
                table = table.set_column(names.index(name), name, table.column(name).cast(pa.string()))
        return table

    def _parquet(self, path: str) -> Iterator[pa.Table]:
        with self._open(path) as f:
            # pre_buffer would keep the raw data of every row group read so far until the file closes
            parquet = pq.ParquetFile(f, pre_buffer=False)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=self.input_columns):
                yield self._select(pa.Table.from_batches([batch]))

    def _txt(self, path: str) -> Iterator[pa.Table]:
        with self._open(path, "rt") as f:
            for lines in _chunks((line.strip() for line in f), BATCH_ROWS):
                urls = [line for line in lines if line]
                if urls:
                    yield pa.table({URL: pa.array(urls, pa.string())})

    def _csv(self, path: str) -> Iterator[pa.Table]:
        header = self._columns_of(path)
        if not header:
            return
        with self._open(path) as f:
            reader = pa_csv.open_csv(
                f,
                read_options=pa_csv.ReadOptions(block_size=8 << 20),
                parse_options=pa_csv.ParseOptions(delimiter=self._delimiter, newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=self.input_columns,
                    column_types={name: pa.string() for name in header},
                    strings_can_be_null=True,
                ),
            )
            for batch in reader:
                if batch.num_rows:
                    yield self._select(pa.Table.from_batches([batch]))

    def _json(self, path: str) -> Iterator[pa.Table]:
        columns = self.input_columns
        for records in _chunks(self._json_records(path), BATCH_ROWS):
            rows = {c: [record.get(c) for record in records] for c in columns}
            yield self._select(pa.table(rows))

    def _json_records(self, path: str) -> Iterator[dict]:
        if self.config.input_format in (InputFormat.JSONL, InputFormat.JSONL_GZ):
            with self._open(path, "rt") as f:
                for line in f:
                    if line.strip():
                        yield _record(json.loads(line), path)
        else:
            with self._open(path, "rt") as f:
                for value in iter_json_array(f):
                    yield _record(value, path)


def _record(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected one JSON object per row, got {type(value).__name__}")
    return value


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
