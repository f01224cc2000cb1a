"""Reads url lists of every input format, streaming, batch by batch, with canonical column names.

Text formats are read as img2dataset reads them (a UTF-8 byte-order mark is ignored) or more
(JSON in every layout of `DataFrame.to_json` that names its columns, where pandas' default
`read_json` takes records and columns only), with one difference: a row whose bytes are not UTF-8 does
not stop the run. It becomes a row with a reason in `__input_error`, which the worker fails with
that reason; its values are decoded with replacement characters so the user sees what it was.
Valid batches are checked by arrow in one call; only a batch with a bad byte is decoded in Python.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..config import ReadConfig
from ..errors import InputError
from ..options import InputFormat
from ..sample import BBOX, CAPTION, INPUT_ERROR, URL, VERIFY_HASH
from ..storage import filesystem
from .json_stream import iter_json_rows
from .text import BOM, Utf8Text, bad_utf8, line_blocks

logger = logging.getLogger(__name__)

BATCH_ROWS = 65536
LINE_END = r"\r\n|\r|\n"  # as Python's text files split lines
# a row and what is wrong with it (None when it was read fine)
Row = tuple[dict[str, Any], str | None]


class UrlListReader:
    """Streams the input files of a `ReadConfig` as tables with canonical column names.

    Output columns, in order: the additional columns and the `bbox_col` (kept in the metadata
    under its own name, where img2dataset puts it), `caption`, `url`, then the internal `__bbox` /
    `__verify_hash` columns when asked for, and for text formats `__input_error`: null, or why the
    row could not be read. Every batch of a text format has it, so all batches of a file have the
    same schema and concatenate into shards.
    """

    def __init__(self, config: ReadConfig):
        self.config = config
        self.fs, root = filesystem(config.url_list, dict(config.storage_options))
        self.files = self._list_files(root)
        # input column -> output column, in output order
        self.columns: dict[str, str] = {}
        renames = [(c, c) for c in config.save_additional_columns]
        if config.bbox_col is not None and config.bbox_col not in config.save_additional_columns:
            renames.append((config.bbox_col, config.bbox_col))
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

    def _open(self, path: str, mode: str = "rb", **text: str) -> IO:
        """`text`: `encoding` and `errors` of a text mode."""
        return self.fs.open(path, mode, compression="infer", **text)

    def _columns_of(self, path: str) -> list[str] | None:
        fmt = self.config.input_format
        try:
            if fmt is InputFormat.PARQUET:
                with self._open(path) as f:
                    return pq.ParquetFile(f, pre_buffer=False).schema_arrow.names
            if fmt in (InputFormat.CSV, InputFormat.CSV_GZ, InputFormat.TSV, InputFormat.TSV_GZ):
                # only the header is needed: a bad byte further on is the row's problem, not the file's
                with self._open(path, "rt", encoding="utf-8-sig", errors="replace") as f:
                    return next(csv.reader(f, delimiter=self._delimiter), None)
            first = next(self._json_records(path), None)
            return None if first is None else list(first[0])
        except (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as error:
            raise InputError(f"cannot read {path} as {fmt.value}: {error}") from error

    @property
    def _delimiter(self) -> str:
        return "\t" if self.config.input_format in (InputFormat.TSV, InputFormat.TSV_GZ) else ","

    def _select(self, table: pa.Table, errors: list[str | None] | None = None) -> pa.Table:
        """The output columns of `table`; for text formats, `errors` (one per row, or None) as `__input_error`."""
        arrays = [table.column(source) for source, _ in self.renames]
        names = [target for _, target in self.renames]
        table = pa.table(arrays, names=names)
        for name in (URL, CAPTION):
            if name in names and table.schema.field(name).type != pa.string():
                table = table.set_column(names.index(name), name, table.column(name).cast(pa.string()))
        if self.config.input_format is InputFormat.PARQUET:
            return table
        return table.append_column(INPUT_ERROR, _errors_column(table.num_rows, errors))

    def _parquet(self, path: str) -> Iterator[pa.Table]:
        with self._open(path) as f:
            # pre_buffer would keep the raw data of every row group read so far until the file closes
            parquet = pq.ParquetFile(f, pre_buffer=False)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=self.input_columns):
                yield self._select(pa.Table.from_batches([batch]))

    def _txt(self, path: str) -> Iterator[pa.Table]:
        line = 1  # the number of the block's first line
        with self._open(path) as f:
            for block in line_blocks(f):
                urls, errors, lines = _txt_lines(block) or _txt_lines_one_by_one(block, path, line)
                line += lines
                if len(urls):
                    yield pa.table({URL: urls, INPUT_ERROR: _errors_column(len(urls), errors)})

    def _csv(self, path: str) -> Iterator[pa.Table]:
        header = self._columns_of(path)
        if not header:
            return
        rows = 0  # records read before this batch
        with self._open(path) as f:
            reader = pa_csv.open_csv(
                f,
                read_options=pa_csv.ReadOptions(block_size=8 << 20),
                parse_options=pa_csv.ParseOptions(delimiter=self._delimiter, newlines_in_values=True),
                convert_options=pa_csv.ConvertOptions(
                    include_columns=self.input_columns,
                    # bytes, checked as UTF-8 batch by batch: a bad byte fails its row, not the file
                    column_types={name: pa.binary() for name in header},
                    strings_can_be_null=True,
                ),
            )
            for batch in reader:
                if batch.num_rows:
                    table, errors = _as_text(pa.Table.from_batches([batch]), path, rows + 1)
                    rows += batch.num_rows
                    yield self._select(table, errors)

    def _json(self, path: str) -> Iterator[pa.Table]:
        columns = self.input_columns
        for chunk in _chunks(self._json_records(path), BATCH_ROWS):
            rows = {c: [record.get(c) for record, _ in chunk] for c in columns}
            errors = [error for _, error in chunk]
            yield self._select(pa.table(rows), errors if any(errors) else None)

    def _json_records(self, path: str) -> Iterator[Row]:
        if self.config.input_format in (InputFormat.JSONL, InputFormat.JSONL_GZ):
            yield from self._jsonl_records(path)
        else:
            # a bad byte in a JSON document fails the file: its rows cannot be told apart without it
            with self._open(path) as f:
                for value in iter_json_rows(Utf8Text(f, path), self.config.url_col):
                    yield _record(value, path), None

    def _jsonl_records(self, path: str) -> Iterator[Row]:
        with self._open(path) as f:
            for number, line in enumerate(f, 1):
                if number == 1:
                    line = line.removeprefix(BOM)
                try:
                    text, error = line.decode("utf-8"), None
                except UnicodeDecodeError as bad:
                    text, error = line.decode("utf-8", "replace"), bad_utf8(path, f"line {number}", bad)
                if not text.strip():
                    continue
                if error is None:
                    yield _record(json.loads(text), path), None
                else:
                    yield self._unreadable_record(text, path), error

    def _unreadable_record(self, text: str, path: str) -> dict:
        """The row of a jsonl line that is not UTF-8, as far as it can be read (the line itself as url if not)."""
        try:
            return _record(json.loads(text), path)
        except (json.JSONDecodeError, InputError):
            return {self.config.url_col: text.strip()}


def _record(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected one JSON object per row, got {type(value).__name__}")
    return value


def _errors_column(rows: int, errors: list[str | None] | None) -> pa.Array:
    """The `__input_error` column of a batch: null where a row was read fine."""
    if errors is None:
        return pa.nulls(rows, pa.string())
    bad = [error for error in errors if error is not None]
    if bad:
        logger.warning("%d row(s) are not valid UTF-8 and fail, the first: %s", len(bad), bad[0])
    return pa.array(errors, pa.string())


def _txt_lines(block: bytes) -> tuple[pa.Array, None, int] | None:
    """The urls of a block of lines (trimmed, blank lines left out), checked and split by arrow;
    None when the block is not UTF-8. Also the number of lines."""
    try:
        text = pa.array([block], pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        return None
    lines = pc.list_flatten(pc.split_pattern_regex(text, LINE_END))
    count = len(lines) - (1 if block.endswith((b"\n", b"\r")) else 0)  # a final line end leaves "" after it
    urls = pc.utf8_trim_whitespace(lines)
    return urls.filter(pc.greater(pc.binary_length(urls), 0)), None, count


def _txt_lines_one_by_one(block: bytes, path: str, first_line: int) -> tuple[pa.Array, list[str | None], int]:
    """`_txt_lines` for a block with a bad byte: each line decoded on its own, bad ones given a reason."""
    urls: list[str] = []
    errors: list[str | None] = []
    lines = block.splitlines()
    for number, raw in enumerate(lines, first_line):
        try:
            url, error = raw.decode("utf-8").strip(), None
        except UnicodeDecodeError as bad:
            url, error = raw.decode("utf-8", "replace").strip(), bad_utf8(path, f"line {number}", bad)
        if url:
            urls.append(url)
            errors.append(error)
    return pa.array(urls, pa.string()), errors, len(lines)


def _as_text(table: pa.Table, path: str, first_row: int) -> tuple[pa.Table, list[str | None] | None]:
    """A csv batch read as bytes, as strings: checked by arrow at once, or value by value when a byte is bad."""
    text_schema = pa.schema([pa.field(name, pa.string()) for name in table.column_names])
    try:
        return table.cast(text_schema), None
    except pa.ArrowInvalid:
        pass
    errors: list[str | None] = [None] * table.num_rows
    columns = []
    for name in table.column_names:
        values = table.column(name).to_pylist()
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                values[i] = value.decode("utf-8")
            except UnicodeDecodeError as bad:
                values[i] = value.decode("utf-8", "replace")
                where = f"row {first_row + i} (records counted after the header), column {name!r}"
                errors[i] = errors[i] or bad_utf8(path, where, bad)
        columns.append(pa.array(values, pa.string()))
    return pa.table(columns, schema=text_schema), errors


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
