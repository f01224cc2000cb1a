"""UTF-8 url lists as Windows tools and scrapers write them: byte-order marks dropped, bad bytes located.

Excel and most Windows tools start a UTF-8 file with a byte-order mark; img2dataset (through
pyarrow and pandas) reads such files as if it were not there, so we do too. A byte that is not
UTF-8 is reported by file, line and byte offset, never as an offset within some internal read.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import IO

from ..errors import InputError

BOM = codecs.BOM_UTF8
BLOCK_SIZE = 8 << 20  # bytes of whole lines handed on at once


def bad_utf8(path: str, where: str, error: UnicodeDecodeError) -> str:
    """The reason given to a row whose bytes are not UTF-8: the file, where in it, the byte."""
    return f"invalid UTF-8 in {path} at {where}: byte 0x{error.object[error.start]:02x}"


def first_read(f: IO[bytes], size: int) -> tuple[bytes, int]:
    """The first read of a file without its byte-order mark, and the mark's length (0 or 3).

    Read on while what came is the start of a mark: a short read must not hide one."""
    data = f.read(size)
    while data and len(data) < len(BOM) and BOM.startswith(data):
        more = f.read(size)
        if not more:
            break
        data += more
    if not data.startswith(BOM):
        return data, 0
    return data[len(BOM) :] or f.read(size), len(BOM)  # nothing left is not the end of the file


class Utf8Text:
    """A binary file read as UTF-8 text (`read(size) -> str`), its byte-order mark dropped.

    A byte that is not UTF-8 raises `InputError` naming the file, the line and the byte offset.
    """

    def __init__(self, f: IO[bytes], path: str):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.offset = 0  # bytes read so far
        self.line = 1  # the line of the next character handed out
        self.started = False

    def read(self, size: int) -> str:
        while True:
            if self.started:
                data = self.f.read(size)
            else:
                (data, self.offset), self.started = first_read(self.f, size), True
            pending = self.decoder.getstate()[0]  # the start of a character cut by the last read
            try:
                text = self.decoder.decode(data, final=not data)
            except UnicodeDecodeError as error:
                line = self.line + (pending + data)[: error.start].count(b"\n")
                offset = self.offset - len(pending) + error.start
                raise InputError(f"{bad_utf8(self.path, f'line {line}', error)} (byte offset {offset})") from None
            self.offset += len(data)
            self.line += text.count("\n")
            if text or not data:
                return text


def line_blocks(f: IO[bytes], size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """The file in blocks of whole lines (the last may lack its line end), without the byte-order mark.

    Lines end with `\\n`, `\\r\\n` or `\\r`, as in Python's text files.
    """
    carry, first = b"", True
    while True:
        chunk = f.read(size) if not first else first_read(f, size)[0]
        first = False
        if not chunk:
            if carry:
                yield carry
            return
        data = carry + chunk
        # a "\r" at the very end may be the first half of "\r\n": the next read tells
        end = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if end:
            yield data[:end]
        carry = data[end:]
