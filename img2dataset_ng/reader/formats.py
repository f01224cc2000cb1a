"""Reads url lists of every input format, streaming, batch by batch, with canonical column names.

Text formats are read as img2dataset reads them (a UTF-8 byte-order mark is ignored) or more
(JSON in every layout of `DataFrame.to_json` that names its columns, where pandas' default
`read_json` takes records and columns only), with one difference: a row whose bytes are not UTF-8 does
not stop the run. It becomes a row with a reason in `__input_error`, which the worker fails with
that reason; its values are decoded with replacement characters so the user sees what it was.
Valid batches are checked by arrow in one call; only a batch with a bad byte is decoded in Python.

Column types are decided once, by the first batch read (for parquet, the first file's schema), and
every later batch of every file is converted to them: shards concatenate and every output file has
the same columns, however the input drifts (a column null for the first 65,536 json rows and text
after, parquet files of one folder that disagree). A value that cannot be converted becomes null and
fails its row with a reason; no row is dropped. A column that is null in the first batch is text.
The url and caption columns are always text: a number there is read as its text (`123`, which the
fetch stage then fails as an invalid url); a list, object or struct cannot hold a url, so such a
column is refused before any work (`check_columns`) and such a value in a later row fails its row.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
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
# a jsonl line nested deeper is a failed row: json's parser recurses, so the bound is ours, not the stack's
MAX_JSON_DEPTH = 500
# what arrow (and Python) raise when a value does not fit a type
CONVERSION_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, RecursionError)
# what reading a file raises when its content is bad, reported as an `InputError` naming the file
READ_ERRORS = (pa.ArrowInvalid, json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError)


class UrlListReader:
    """Streams the input files of a `ReadConfig` as tables with canonical column names and fixed types.

    Output columns, in order: the additional columns and the `bbox_col` (kept in the metadata
    under its own name, where img2dataset puts it), `caption`, `url`, then the internal `__bbox` /
    `__verify_hash` columns when asked for, and `__input_error`: null, or why the row could not be
    read. Every batch of every format has the same columns of the same types (`types`, decided by the
    first batch read), so batches concatenate into shards and every shard has the same schema.
    """

    def __init__(self, config: ReadConfig):
        self.config = config
        if not isinstance(config.url_list, str):
            raise InputError(
                f"url_list is a list ({len(config.url_list)} entries): a list is read for shards as input "
                "(input_format webdataset, parquet_shards, files_shards); give a url list as one file or folder"
            )
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
        # input column -> its type in every batch; decided by the first batch read, then fixed
        self.types: dict[str, pa.DataType] | None = None

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

    @property
    def text_columns(self) -> list[str]:
        """The input columns read as text whatever their type: the url and the caption."""
        return [c for c in (self.config.url_col, self.config.caption_col) if c is not None]

    def check_columns(self) -> None:
        """Fail, before any download, when a file lacks a column that the options name, or when its url
        (or caption) column is of a type that cannot hold text: a list, struct, map, JSON array or object."""
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
            for column in self.text_columns:
                kind = found[column]
                if kind is not None:
                    what = "urls" if column == self.config.url_col else "captions"
                    raise InputError(
                        f"column {column!r} of {path} is of type {kind}, which cannot hold {what}: "
                        f"{'url_col' if what == 'urls' else 'caption_col'} must name a column of text"
                    )

    def batches(self, path: str) -> Iterator[pa.Table]:
        """The rows of one file, batch by batch, with the output columns in their decided types."""
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
        except READ_ERRORS as error:
            raise InputError(f"cannot read {path} as {fmt.value}: {error}") from error

    # --- one method per format -------------------------------------------------------------

    def _open(self, path: str, mode: str = "rb", **text: str) -> IO:
        """`text`: `encoding` and `errors` of a text mode."""
        return self.fs.open(path, mode, compression="infer", **text)

    def _columns_of(self, path: str) -> dict[str, str | None] | None:
        """The columns of a file, in order, each with what it holds when that cannot be text (else None);
        None for an empty file. Only the header is read: the schema, the csv header, the first json row."""
        fmt = self.config.input_format
        try:
            if fmt is InputFormat.PARQUET:
                with self._open(path) as f:
                    schema = pq.ParquetFile(f, pre_buffer=False).schema_arrow
                return {field.name: None if _holds_text(field.type) else str(field.type) for field in schema}
            if fmt in (InputFormat.CSV, InputFormat.CSV_GZ, InputFormat.TSV, InputFormat.TSV_GZ):
                # only the header is needed: a bad byte further on is the row's problem, not the file's
                with self._open(path, "rt", encoding="utf-8-sig", errors="replace") as f:
                    header = next(csv.reader(f, delimiter=self._delimiter), None)
                return None if header is None else dict.fromkeys(header)
            first = self._first_readable_record(path)
            return None if first is None else {name: _json_kind(value) for name, value in first.items()}
        except READ_ERRORS as error:
            raise InputError(f"cannot read {path} as {fmt.value}: {error}") from error

    def _first_readable_record(self, path: str) -> dict | None:
        """The first json row read without error (a line that is not UTF-8 or nested too deeply says
        nothing of the columns); the first row at all if none is, None for an empty file."""
        first = None
        for record, error in self._json_records(path):
            if error is None:
                return record
            first = record if first is None else first
        return first

    @property
    def _delimiter(self) -> str:
        return "\t" if self.config.input_format in (InputFormat.TSV, InputFormat.TSV_GZ) else ","

    def _select(
        self, columns: dict[str, Any], rows: int, errors: list[str | None] | None, path: str, first_row: int
    ) -> pa.Table:
        """The output table of a batch: each input column (an arrow array, or Python values when arrow
        cannot infer one type for them) in its decided type, renamed, then `__input_error` from `errors`
        (one per row, or None) and from the values that do not fit their column's type."""
        if self.types is None:
            self.types = {source: self._decided_type(source, columns[source]) for source in self.input_columns}
        arrays: dict[str, pa.Array | pa.ChunkedArray] = {}
        for source in self.input_columns:
            values, target = columns[source], self.types[source]
            arrays[source], bad = _conform(values, target)
            if bad:
                errors = errors if errors is not None else [None] * rows
                for i in bad:
                    reason = _cast_reason(path, first_row + i, source, _value_at(values, i), target)
                    errors[i] = errors[i] or reason
        table = pa.table([arrays[source] for source, _ in self.renames], names=[target for _, target in self.renames])
        return table.append_column(INPUT_ERROR, _errors_column(rows, errors))

    def _decided_type(self, source: str, values: Any) -> pa.DataType:
        """The type of an input column in every batch, from its values in the first batch read: text for the
        url and caption, text for a column that is all null there, else what arrow makes of the values."""
        if source in self.text_columns:
            return pa.string()
        inferred = values.type if isinstance(values, pa.Array | pa.ChunkedArray) else _type_of_mixed(values)
        return _settled(inferred)

    def _parquet(self, path: str) -> Iterator[pa.Table]:
        rows = 0  # rows read before this batch
        with self._open(path) as f:
            # pre_buffer would keep the raw data of every row group read so far until the file closes
            parquet = pq.ParquetFile(f, pre_buffer=False)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=self.input_columns):
                columns = {name: batch.column(name) for name in self.input_columns}
                yield self._select(columns, batch.num_rows, None, path, rows + 1)
                rows += batch.num_rows

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
                    columns = {name: table.column(name) for name in self.input_columns}
                    yield self._select(columns, table.num_rows, errors, path, rows + 1)
                    rows += batch.num_rows

    def _json(self, path: str) -> Iterator[pa.Table]:
        rows = 0  # rows read before this batch
        for chunk in _chunks(self._json_records(path), BATCH_ROWS):
            columns = {c: _from_python([record.get(c) for record, _ in chunk]) for c in self.input_columns}
            errors = [error for _, error in chunk]
            yield self._select(columns, len(chunk), errors if any(errors) else None, path, rows + 1)
            rows += len(chunk)

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
                if _too_deep(text):
                    yield {}, _too_deep_reason(path, number)
                elif error is None:
                    yield self._jsonl_record(text, path, number)
                else:
                    yield self._unreadable_record(text, path), error

    def _jsonl_record(self, text: str, path: str, number: int) -> Row:
        """The row of a UTF-8 jsonl line; a line nested too deeply for the parser (which `_too_deep` did
        not see, as the stack was already deep) fails its row."""
        try:
            return _record(json.loads(text), path), None
        except RecursionError:
            return {}, _too_deep_reason(path, number)

    def _unreadable_record(self, text: str, path: str) -> dict:
        """The row of a jsonl line that is not UTF-8, as far as it can be read (the line itself as url if not)."""
        try:
            return _record(json.loads(text), path)
        except (json.JSONDecodeError, InputError, RecursionError):
            return {self.config.url_col: text.strip()}


def _record(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected one JSON object per row, got {type(value).__name__}")
    return value


# --- column types ---------------------------------------------------------------------------------


def _holds_text(type_: pa.DataType) -> bool:
    """Whether a column of this type can be read as text (urls, captions): any type but nested ones."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return not pa.types.is_nested(type_)


def _json_kind(value: Any) -> str | None:
    """What a json value is when it cannot be text (`check_columns`' words for it), else None."""
    if isinstance(value, list):
        return "JSON array"
    if isinstance(value, dict):
        return "JSON object"
    return None


def _from_python(values: list[Any]) -> pa.Array | list[Any]:
    """The json values of one column as an arrow array, or as they are when arrow cannot give them one
    type (strings and numbers mixed): `_conform` then converts them one by one."""
    try:
        return pa.array(values)
    except CONVERSION_ERRORS:
        return values


def _type_of_mixed(values: list[Any]) -> pa.DataType:
    """The type of a first-batch column whose json values have no one arrow type: text when they are all
    scalars (numbers become their text), else the type of the first value (the others fail their rows)."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, str | int | float | bool) for v in present):
        return pa.string()
    try:
        return pa.array(present[:1]).type
    except CONVERSION_ERRORS:
        return pa.string()


def _settled(type_: pa.DataType) -> pa.DataType:
    """A type decided from the first batch, with null (a column or list element never seen) made text."""
    if pa.types.is_null(type_):
        return pa.string()
    if pa.types.is_list(type_):
        return pa.list_(type_.value_field.with_type(_settled(type_.value_type)))
    if pa.types.is_large_list(type_):
        return pa.large_list(type_.value_field.with_type(_settled(type_.value_type)))
    if pa.types.is_struct(type_):
        return pa.struct([field.with_type(_settled(field.type)) for field in type_])
    return type_


def _conform(values: Any, target: pa.DataType) -> tuple[pa.Array | pa.ChunkedArray, list[int]]:
    """`values` (arrow, or Python values) as `target`, and the rows whose value does not fit (made null).

    The whole column is converted at once; only when that fails are its halves tried, and so on down to
    the single values that do not fit: a few bad rows cost a few dozen conversions, not one per row.
    """
    if isinstance(values, pa.Array | pa.ChunkedArray):
        if values.type == target:
            return values, []
        try:
            return values.cast(target), []
        except CONVERSION_ERRORS:
            pass
        array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return _bisect(len(array), lambda lo, hi: array.slice(lo, hi - lo).cast(target), target)
    return _bisect(len(values), lambda lo, hi: _python_as(values[lo:hi], target), target)


def _python_as(values: list[Any], target: pa.DataType) -> pa.Array:
    """Python values as an array of `target`: inferred then cast (a cast refuses to lose data, where a
    conversion straight to `target` would make 2.5 an integer 2); a nested target also straight."""
    try:
        array = pa.array(values)
        return array if array.type == target else array.cast(target)
    except CONVERSION_ERRORS:
        if not pa.types.is_nested(target):
            raise
    return pa.array(values, type=target)


def _bisect(rows: int, convert: Callable[[int, int], pa.Array], target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """`convert(lo, hi)` of rows 0..rows, halving a range that fails down to the single rows that fail."""
    pieces: list[pa.Array] = []
    bad: list[int] = []

    def walk(lo: int, hi: int) -> None:
        try:
            pieces.append(convert(lo, hi))
            return
        except CONVERSION_ERRORS:
            if hi - lo == 1:
                pieces.append(pa.nulls(1, target))
                bad.append(lo)
                return
        mid = (lo + hi) // 2
        walk(lo, mid)
        walk(mid, hi)

    walk(0, rows)
    return pa.concat_arrays(pieces) if pieces else pa.array([], target), bad


def _value_at(values: Any, i: int) -> Any:
    return values[i].as_py() if isinstance(values, pa.Array | pa.ChunkedArray) else values[i]


def _cast_reason(path: str, row: int, column: str, value: Any, target: pa.DataType) -> str:
    """Why a row fails whose value does not fit its column's type, decided by the first rows read."""
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return (
        f"column {column!r} of {path} at row {row}: {shown} cannot be read as {target}, "
        "the column's type in the first rows read"
    )


# --- json nesting ----------------------------------------------------------------------------------

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _too_deep(text: str) -> bool:
    """Whether a json text nests arrays and objects more than MAX_JSON_DEPTH levels.

    Counting brackets rules out almost every line at C speed; only a line with that many brackets is
    walked, its strings (which may hold brackets) left out first."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _too_deep_reason(path: str, number: int) -> str:
    return f"line {number} of {path} could not be read: JSON nested more than {MAX_JSON_DEPTH} levels deep"


# --- text -------------------------------------------------------------------------------------------


def _errors_column(rows: int, errors: list[str | None] | None) -> pa.Array:
    """The `__input_error` column of a batch: null where a row was read fine."""
    if errors is None:
        return pa.nulls(rows, pa.string())
    bad = [error for error in errors if error is not None]
    if bad:
        logger.warning("%d row(s) cannot be read and fail, the first: %s", len(bad), bad[0])
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
