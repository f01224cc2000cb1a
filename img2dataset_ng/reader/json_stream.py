"""A top-level JSON array decoded element by element, without loading the file."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any


def iter_json_array(f: io.TextIOBase, read_size: int = 1 << 20) -> Iterator[Any]:
    """The elements of a top-level JSON array, decoded one by one without loading the file."""
    decoder = json.JSONDecoder()
    buffer, pos, eof, started = "", 0, False, False
    while True:
        # skip blanks and separators; refill when the buffer runs out
        while True:
            while pos < len(buffer) and (buffer[pos].isspace() or (started and buffer[pos] == ",")):
                pos += 1
            if pos < len(buffer) or eof:
                break
            buffer, pos = f.read(read_size), 0
            eof = not buffer
        if pos >= len(buffer):
            if started:
                raise json.JSONDecodeError("unterminated array", buffer, pos)
            return
        if not started:
            if buffer[pos] != "[":
                raise json.JSONDecodeError("expected a JSON array of objects", buffer, pos)
            started, pos = True, pos + 1
            continue
        if buffer[pos] == "]":
            return
        while True:
            try:
                value, end = decoder.raw_decode(buffer, pos)
                # a number at the very end of the buffer may continue in the next read
                if end < len(buffer) or eof:
                    break
            except json.JSONDecodeError:
                if eof:
                    raise
            more = f.read(read_size)
            eof = not more
            buffer, pos = buffer[pos:] + more, 0
        yield value
        pos = end
