"""JSON url lists decoded piece by piece, in every layout of `pandas.DataFrame.to_json` that names its columns.

img2dataset reads a `.json` url list with pandas, so users hand us whatever `to_json` wrote:
records `[{col: v}, ...]`, index `{idx: {col: v}}`, split `{"columns": [...], "index": [...],
"data": [[...]]}`, table `{"schema": {...}, "data": [{...}]}` and columns `{col: {idx: v}}`.
The layout is recognised from the document itself. Rows come out in the order pandas gives them;
all layouts but columns (column-major: a row needs every column) are streamed, so memory stays
flat however long the list is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

READ_SIZE = 1 << 20


class TextSource(Protocol):
    def read(self, size: int, /) -> str: ...


class JsonScanner:
    """A JSON document read from `f` piece by piece: values are decoded whole, containers may be walked.

    Only the value being decoded is held (plus one read), so walking a huge array costs the memory
    of its largest element.
    """

    def __init__(self, f: TextSource, read_size: int = READ_SIZE):
        self.f, self.read_size = f, read_size
        self.decoder = json.JSONDecoder()
        self.buffer, self.pos, self.eof = "", 0, False

    def _more(self) -> None:
        """Append one read to what is left of the buffer."""
        more = self.f.read(self.read_size)
        self.eof = not more
        self.buffer, self.pos = self.buffer[self.pos :] + more, 0

    def peek(self) -> str:
        """The next character that is not a blank ("" at the end of the document)."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos].isspace():
                self.pos += 1
            if self.pos < len(self.buffer) or self.eof:
                return self.buffer[self.pos : self.pos + 1]
            self._more()

    def fail(self, message: str) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self.buffer, self.pos)

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def value(self) -> Any:
        """The next value, decoded whole; one nested too deeply for json's (recursive) decoder is a
        `JSONDecodeError` at its position, never a `RecursionError`."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
                # a number at the very end of the buffer may continue in the next read
                if end < len(self.buffer) or self.eof:
                    break
            except json.JSONDecodeError:
                if self.eof:
                    raise
            except RecursionError:
                raise self.fail("a value is nested too deeply to be decoded") from None
            self._more()
        self.pos = end
        return value

    def _separated(self, close: str) -> Iterator[None]:
        """Once per member of the container just opened, with the scanner at the member."""
        if self.peek() == close:
            self.pos += 1
            return
        while True:
            yield
            char = self.peek()
            self.pos += 1
            if char == close:
                return
            if char != ",":
                self.pos -= 1
                raise self.fail(f"expected ',' or {close!r}")

    def elements(self) -> Iterator[Any]:
        """The elements of the array that comes next, decoded one by one."""
        self.take("[")
        for _ in self._separated("]"):
            yield self.value()

    def keys(self) -> Iterator[str]:
        """The keys of the object that comes next; the caller reads each key's value before the next key."""
        self.take("{")
        for _ in self._separated("}"):
            key = self.value()
            if not isinstance(key, str):
                raise self.fail("expected a string key")
            self.take(":")
            yield key

    def skip(self) -> None:
        """Step over the next value, one element at a time (a split index is as long as the list).

        Objects are walked key by key without recursion (a stack of the objects being walked), so
        however deep they nest Python's stack does not grow; arrays' elements are decoded whole."""
        walking: list[Iterator[str]] = []  # the keys of each object entered and not yet left
        while True:
            char = self.peek()
            if char == "{":
                walking.append(self.keys())
            elif char == "[":
                for _ in self.elements():
                    pass
            else:
                self.value()
            while walking and next(walking[-1], None) is None:  # at the next key's value, or out
                walking.pop()
            if not walking:
                return

    def end(self) -> None:
        if self.peek():
            raise self.fail("extra data after the JSON document")


def iter_json_array(f: TextSource, read_size: int = READ_SIZE) -> Iterator[Any]:
    """The elements of a top-level JSON array, decoded one by one without loading the file."""
    scanner = JsonScanner(f, read_size)
    if scanner.peek() == "":
        return
    if scanner.peek() != "[":
        raise scanner.fail("expected a JSON array of objects")
    yield from scanner.elements()
    scanner.end()


def iter_json_rows(f: TextSource, url_col: str, read_size: int = READ_SIZE) -> Iterator[Any]:
    """The rows of a JSON url list in any `to_json` layout with column names, in pandas' row order.

    Rows are `{column: value}` dicts; an element that is not an object is passed on as it is, for
    the caller to reject. `url_col` tells the index layout (rows keyed by index) from the columns
    layout (columns keyed by name): in the first, the first entry's value holds that column.
    """
    scanner = JsonScanner(f, read_size)
    first = scanner.peek()
    if first == "[":
        yield from scanner.elements()
    elif first == "{":
        yield from _object_rows(scanner, url_col)
    elif first:
        raise scanner.fail("expected a JSON array or object")
    scanner.end()


def _object_rows(scanner: JsonScanner, url_col: str) -> Iterator[Any]:
    keys = scanner.keys()
    key = next(keys, None)
    if key is None:
        return
    if key == "data" and scanner.peek() == "[":  # split or table, data first
        yield from _split_rows(scanner, keys, key, None)
        return
    value = scanner.value()
    if _is_split_entry(key, value):
        yield from _split_rows(scanner, keys, key, value)
    elif isinstance(value, dict) and url_col in value:
        yield value  # index: one row per entry
        for _ in keys:
            yield scanner.value()
    elif isinstance(value, dict):
        columns = {key: value}
        for key in keys:
            columns[key] = scanner.value()
        yield from _column_rows(columns)
    else:
        raise scanner.fail(f"expected a JSON object under {key!r}, got {type(value).__name__}")


def _is_split_entry(key: str, value: Any) -> bool:
    """Whether this first entry starts a split (`columns`, `index`) or table (`schema`) document."""
    if key in ("columns", "index"):
        return isinstance(value, list)
    return key == "schema" and isinstance(value, dict) and isinstance(value.get("fields"), list)


def _split_rows(scanner: JsonScanner, keys: Iterator[str], key: str, value: Any) -> Iterator[Any]:
    """Rows of the split and table layouts: `data` is walked element by element.

    Split rows are arrays, named by `columns` (which pandas writes before `data`; rows met before
    it wait for it); table rows are objects already.
    """
    names: list[Any] | None = value if key == "columns" else None
    waiting: list[list[Any]] = []
    pending = key if key == "data" else None
    while True:
        if pending is None:
            pending = next(keys, None)
            if pending is None:
                break
        if pending == "data" and scanner.peek() == "[":
            for row in scanner.elements():
                if isinstance(row, list) and names is None:
                    waiting.append(row)
                else:
                    yield _named(row, names)
        elif pending == "columns":
            names = scanner.value()
        else:
            scanner.skip()  # index, schema, name: no row data
        pending = None
    if waiting:
        if names is None:
            raise scanner.fail("split layout without 'columns'")
        yield from (_named(row, names) for row in waiting)


def _named(row: Any, names: list[Any] | None) -> Any:
    if isinstance(row, list) and names is not None:
        return dict(zip(names, row))
    return row


def _column_rows(columns: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Rows of the columns layout: the index is the union of the columns' keys, first seen first (as pandas)."""
    index: dict[str, None] = {}
    for name, values in columns.items():
        if not isinstance(values, dict):
            raise json.JSONDecodeError(f"expected a JSON object under {name!r}", "", 0)
        index.update(dict.fromkeys(values))
    for label in index:
        yield {name: values.get(label) for name, values in columns.items()}
