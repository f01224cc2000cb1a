"""TFRecord without TensorFlow: `tf.train.Example` encoding, record framing and CRC32C, by hand.

The features of a sample's Example are those of img2dataset's tfrecord writer:

- `key`: bytes_list, the sample key (`000010005`);
- `jpg` (or `png`, `webp`: the encode_format): bytes_list, the stored image;
- `txt`: bytes_list, the caption as utf-8 (only when caption_col is set; empty for a null caption);
- every metadata column under its own name (`url`, `caption`, `status`, `error_message`, `width`,
  `height`, `original_width`, `original_height`, `exif`, `sha256`, the save_additional_columns):
  str -> bytes_list (utf-8); bytes -> bytes_list; bool and int -> int64_list; float ->
  float_list (float32); None -> bytes_list holding one empty value (as img2dataset: a reader that
  asks for `error_message` always finds it); a list -> one feature holding all its items (int64
  when all are ints, float when all are numbers, else bytes), a numpy array (a model's output) as
  the list of its values; anything else (dicts, dates) ->
  its JSON text as bytes. An int outside int64 is stored as its decimal text. A metadata column
  named like the image feature or `txt` is not repeated: the image and the caption keep the name.

Record framing (TFRecord): uint64 LE length, uint32 LE masked CRC32C of those 8 bytes, the data,
uint32 LE masked CRC32C of the data. CRC32C is google_crc32c's C implementation when it is
installed, else the pure-Python one below (correct, but ~10 MB/s).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- CRC32C

_CASTAGNOLI = 0x82F63B78  # the reflected polynomial


def _crc_tables() -> tuple[list[int], ...]:
    """Tables for slicing-by-8: tables[k][b] is the CRC of byte b followed by k zero bytes."""
    first = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI if crc & 1 else crc >> 1
        first.append(crc)
    tables = [first]
    for _ in range(7):
        previous = tables[-1]
        tables.append([(c >> 8) ^ first[c & 0xFF] for c in previous])
    return tuple(tables)


@functools.cache
def _tables() -> tuple[list[int], ...]:
    return _crc_tables()


def crc32c_python(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of `data` (continuing from `crc`), in pure Python: slicing-by-8 over 256-entry tables."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _tables()
    view = memoryview(data).cast("B")
    crc ^= 0xFFFFFFFF
    whole = len(view) // 8 * 8
    for low, high in struct.iter_unpack("<II", view[:whole]):
        low ^= crc
        crc = (
            t7[low & 0xFF]
            ^ t6[(low >> 8) & 0xFF]
            ^ t5[(low >> 16) & 0xFF]
            ^ t4[low >> 24]
            ^ t3[high & 0xFF]
            ^ t2[(high >> 8) & 0xFF]
            ^ t1[(high >> 16) & 0xFF]
            ^ t0[high >> 24]
        )
    for byte in view[whole:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _c_crc32c() -> Callable[[bytes], int] | None:
    """google_crc32c's `value` when its C extension is available, else None."""
    try:
        with warnings.catch_warnings():  # it warns when it falls back to its own Python code
            warnings.simplefilter("ignore", RuntimeWarning)
            import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


@functools.cache
def crc32c_function() -> Callable[[bytes], int]:
    """The fastest CRC32C available, chosen once per process."""
    fast = _c_crc32c()
    if fast is None:
        logger.info("google-crc32c (C) is not installed: tfrecord checksums use slower pure Python")
        return crc32c_python
    return fast


def masked_crc(crc: int) -> int:
    """TFRecord's mask: rotate right by 15 bits, add a constant (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------- record framing


class TFRecordError(ValueError):
    """A TFRecord file that is truncated or whose checksums do not match."""


def write_record(file: BinaryIO, data: bytes, crc32c: Callable[[bytes], int] | None = None) -> int:
    """Append one framed record to `file`; returns the bytes written."""
    crc32c = crc32c or crc32c_function()
    length = struct.pack("<Q", len(data))
    file.write(length + struct.pack("<I", masked_crc(crc32c(length))))
    file.write(data)
    file.write(struct.pack("<I", masked_crc(crc32c(data))))
    return len(data) + 16


def read_records(file: BinaryIO, crc32c: Callable[[bytes], int] | None = None) -> Iterator[bytes]:
    """The records of a TFRecord stream, both checksums verified (raises `TFRecordError`)."""
    crc32c = crc32c or crc32c_function()
    offset = 0
    while True:
        header = file.read(12)
        if not header:
            return
        if len(header) < 12:
            raise TFRecordError(f"truncated record header at byte {offset}")
        length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
        if masked_crc(crc32c(length_bytes)) != length_crc:
            raise TFRecordError(f"corrupted record length at byte {offset}")
        (length,) = struct.unpack("<Q", length_bytes)
        data = file.read(length)
        footer = file.read(4)
        if len(data) < length or len(footer) < 4:
            raise TFRecordError(f"truncated record at byte {offset}")
        if masked_crc(crc32c(data)) != struct.unpack("<I", footer)[0]:
            raise TFRecordError(f"corrupted record data at byte {offset}")
        offset += length + 16
        yield data


# ------------------------------------------------------------------------- tf.train.Example encoding
# Example { Features features = 1; }   Features { map<string, Feature> feature = 1; }
# Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
# BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
# Int64List { repeated int64 value = 1 [packed]; }  A map entry is { string key = 1; Feature value = 2; }

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


_ONE_BYTE = [bytes((value,)) for value in range(128)]


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; a negative int64 is its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 128:  # tags and most lengths
        return _ONE_BYTE[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bytes_feature(values: Iterable[bytes]) -> bytes:
    return _field(1, b"".join(_field(1, value) for value in values))


def float_feature(values: Iterable[float]) -> bytes:
    floats = [float(value) for value in values]
    try:
        payload = struct.pack(f"<{len(floats)}f", *floats)
    except OverflowError:  # beyond float32's range: infinities, as protobuf stores them
        payload = struct.pack(f"<{len(floats)}f", *map(_float32, floats))
    return _field(2, _field(1, payload) if payload else b"")


def int64_feature(values: Iterable[int]) -> bytes:
    payload = b"".join(varint(value) for value in values)
    return _field(3, _field(1, payload) if payload else b"")


def _float32(value: float) -> float:
    try:
        struct.pack("<f", value)
    except OverflowError:
        return math.copysign(math.inf, value)
    return value


def encode_example(features: dict[str, bytes]) -> bytes:
    """A serialized `tf.train.Example` from {name: encoded Feature} (see the `*_feature` functions)."""
    entries = (_field(1, name.encode("utf-8")) + _field(2, feature) for name, feature in features.items())
    return _field(1, b"".join(_field(1, entry) for entry in entries))


def _text(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, default=str, ensure_ascii=False).encode("utf-8")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX


def feature_of(value: Any) -> bytes:
    """The Feature of one metadata value (the typing rules are in the module docstring)."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):  # a numpy array or scalar
        value = value.tolist()
    if _is_int(value):  # bool included
        return int64_feature([value])
    if isinstance(value, float):
        return float_feature([value])
    if isinstance(value, int):  # beyond int64
        return bytes_feature([str(value).encode()])
    if isinstance(value, (list, tuple)):
        if value and all(_is_int(item) for item in value):
            return int64_feature(value)
        if value and all(_is_int(item) or isinstance(item, float) for item in value):
            return float_feature(value)
        return bytes_feature([_text(item) for item in value])
    return bytes_feature([_text(value)])


def sample_example(record: dict[str, Any], image: bytes, image_feature: str) -> bytes:
    """The Example of one successful sample: key, image, txt (with captions), then the metadata columns."""
    features = {"key": bytes_feature([_text(record["key"])]), image_feature: bytes_feature([image])}
    if "caption" in record:
        features["txt"] = bytes_feature([_text("" if record["caption"] is None else str(record["caption"]))])
    for name, value in record.items():
        if name not in features:
            features[name] = feature_of(value)
    return encode_example(features)


# ------------------------------------------------------------------------- tf.train.Example decoding
# only what reading a shard back needs (incremental_mode="retry_failed"): the bytes_list features by name


def _read_varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _message_fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message: a varint's value, a length-delimited field's
    bytes (a view); fixed-size fields are skipped."""
    position = 0
    while position < len(data):
        tag, position = _read_varint(data, position)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = _read_varint(data, position)
        elif wire == 2:
            length, position = _read_varint(data, position)
            if position + length > len(data):
                raise TFRecordError("truncated protobuf field")
            value, position = data[position : position + length], position + length
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
            continue
        else:
            raise TFRecordError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _delimited(data: memoryview, field: int) -> Iterator[memoryview]:
    return (value for number, wire, value in _message_fields(data) if number == field and wire == 2)


def bytes_features(example: bytes, names: Iterable[str]) -> dict[str, list[bytes]]:
    """The bytes_list features of a serialized `tf.train.Example` that are among `names` (others are skipped)."""
    wanted, out = set(names), {}
    try:
        for features in _delimited(memoryview(example), 1):
            for entry in _delimited(features, 1):  # a map entry: key = 1, value = 2
                fields = {number: value for number, wire, value in _message_fields(entry) if wire == 2}
                name = bytes(fields.get(1, b"")).decode("utf-8", "replace")
                if name in wanted and 2 in fields:
                    for values in _delimited(fields[2], 1):  # Feature.bytes_list
                        out[name] = [bytes(value) for value in _delimited(values, 1)]
    except IndexError:
        raise TFRecordError("truncated protobuf message") from None
    return out
