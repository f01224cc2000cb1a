"""TFRecord output, written without TensorFlow: CRC32C, framing, Example encoding, and the whole
pipeline read back with the independent `tfrecord` package (which parses with protobuf)."""

from __future__ import annotations

import io
import math
import os
import shutil
import struct
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from img2dataset_ng import download
from img2dataset_ng.sample import Sample, Status
from img2dataset_ng.storage import Folder
from img2dataset_ng.writers.codecs.tfrecord import (
    TFRecordError,
    _c_crc32c,
    bytes_feature,
    crc32c_function,
    crc32c_python,
    encode_example,
    feature_of,
    float_feature,
    int64_feature,
    masked_crc,
    read_records,
    sample_example,
    varint,
    write_record,
)
from img2dataset_ng.writers.tfrecord import TFRecordWriter
from tests.outputs import BASE_COLUMNS, image_size, read_metadata, read_stats, stored_images, tfrecord_examples
from tests.test_pipeline import CORPUS, PER_SHARD, expected_key, run

tfrecord_reader = pytest.importorskip("tfrecord.reader")
tfrecord_writer = pytest.importorskip("tfrecord.writer")
example_pb2 = pytest.importorskip("tfrecord.example_pb2")

# CRC32C check values: the classic one, and the iSCSI vectors of RFC 3720 (B.4)
CRC_VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]


def c_crc32c():
    fast = _c_crc32c()
    if fast is None:
        pytest.skip("google-crc32c's C extension is not installed")
    return fast


@pytest.mark.parametrize("implementation", ["python", "c"])
def test_crc32c_known_vectors(implementation):
    crc = crc32c_python if implementation == "python" else c_crc32c()
    for data, expected in CRC_VECTORS:
        assert crc(data) == expected, data


def test_crc32c_python_agrees_with_an_independent_implementation():
    crc32c = pytest.importorskip("crc32c")  # the package `tfrecord` itself uses
    for length in [*range(40), 1000, 65537]:
        data = os.urandom(length)
        assert crc32c_python(data) == crc32c.crc32c(data), length
    data = os.urandom(1000)
    assert crc32c_python(data[500:], crc32c_python(data[:500])) == crc32c.crc32c(data)  # continuation


def test_crc32c_falls_back_to_python_without_google_crc32c(monkeypatch):
    crc32c_function.cache_clear()
    try:
        assert crc32c_function() is c_crc32c()
        crc32c_function.cache_clear()
        monkeypatch.setitem(sys.modules, "google_crc32c", None)  # `import google_crc32c` raises ImportError
        assert crc32c_function() is crc32c_python
    finally:
        crc32c_function.cache_clear()


def test_masked_crc_matches_the_tfrecord_package():
    for data, _ in CRC_VECTORS:
        expected = tfrecord_writer.TFRecordWriter.masked_crc(data)
        assert struct.pack("<I", masked_crc(crc32c_python(data))) == expected


def test_varints():
    assert varint(0) == b"\x00"
    assert varint(1) == b"\x01"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(2**63 - 1) == b"\xff" * 8 + b"\x7f"
    # negative int64: the 64-bit two's complement, always 10 bytes
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert varint(-2) == b"\xfe" + b"\xff" * 8 + b"\x01"
    assert varint(-(2**63)) == b"\x80" * 9 + b"\x01"
    for value in [-1, -2, -150, -(2**31), -(2**63), 0, 1, 2**31, 2**63 - 1]:
        encoded = example_pb2.Int64List(value=[value]).SerializeToString()
        assert encoded == b"\x0a" + varint(len(varint(value))) + varint(value), value


def test_example_encoding_by_hand():
    encoded = encode_example({"key": bytes_feature([b"ab"]), "n": int64_feature([-1]), "f": float_feature([1.0])})
    expected = bytes.fromhex(
        "0a 33"  # Example.features (51 bytes)
        "0a 0d"  # Features.feature map entry (13 bytes)
        "   0a 03 6b6579"  # key = "key"
        "   12 06 0a 04 0a 02 6162"  # value: Feature.bytes_list { value: "ab" }
        "0a 13"  # map entry (19 bytes)
        "   0a 01 6e"  # key = "n"
        "   12 0e 1a 0c 0a 0a ffffffffffffffffff01"  # Feature.int64_list, packed: [-1] as 10 bytes
        "0a 0d"  # map entry (13 bytes)
        "   0a 01 66"  # key = "f"
        "   12 08 12 06 0a 04 0000803f"  # Feature.float_list, packed: [1.0] as little-endian float32
    )
    assert encoded == expected
    parsed = example_pb2.Example()
    parsed.ParseFromString(encoded)
    features = parsed.features.feature
    assert list(features["key"].bytes_list.value) == [b"ab"]
    assert list(features["n"].int64_list.value) == [-1]
    assert list(features["f"].float_list.value) == [1.0]


def test_metadata_value_types():
    def parse(feature: bytes):
        parsed = example_pb2.Feature()
        parsed.ParseFromString(feature)
        kind = parsed.WhichOneof("kind")
        return kind, list(getattr(parsed, kind).value)

    assert parse(feature_of("héllo")) == ("bytes_list", ["héllo".encode()])
    assert parse(feature_of(b"\x00\x01")) == ("bytes_list", [b"\x00\x01"])
    assert parse(feature_of(None)) == ("bytes_list", [b""])  # as img2dataset: the feature is always there
    assert parse(feature_of(256)) == ("int64_list", [256])
    assert parse(feature_of(-5)) == ("int64_list", [-5])
    assert parse(feature_of(True)) == ("int64_list", [1])
    assert parse(feature_of(2**64)) == ("bytes_list", [b"18446744073709551616"])  # beyond int64
    assert parse(feature_of(0.5)) == ("float_list", [0.5])
    assert parse(feature_of(1e300)) == ("float_list", [math.inf])  # beyond float32
    assert parse(feature_of(-1e300)) == ("float_list", [-math.inf])
    assert parse(feature_of([1, 2, -3])) == ("int64_list", [1, 2, -3])
    assert parse(feature_of([1, 2.5])) == ("float_list", [1.0, 2.5])
    assert parse(feature_of(["a", None, b"c"])) == ("bytes_list", [b"a", b"", b"c"])
    assert parse(feature_of([])) == ("bytes_list", [])
    assert parse(feature_of({"a": [1]})) == ("bytes_list", [b'{"a": [1]}'])


def test_sample_example_names():
    record = {"extra": "x", "caption": None, "url": "http://u", "key": "000000001", "status": "success"}
    parsed = example_pb2.Example()
    parsed.ParseFromString(sample_example(record, b"IMG", "webp"))
    features = parsed.features.feature
    assert set(features) == {"key", "webp", "txt", "extra", "caption", "url", "status"}
    assert features["webp"].bytes_list.value == [b"IMG"]
    assert features["txt"].bytes_list.value == [b""]
    assert features["key"].bytes_list.value == [b"000000001"]
    parsed.ParseFromString(sample_example({"url": "u", "key": "1", "txt": "column"}, b"IMG", "jpg"))
    assert parsed.features.feature["txt"].bytes_list.value == [b"column"]  # no caption_col: a txt column is kept
    without_caption = example_pb2.Example()
    without_caption.ParseFromString(sample_example({"url": "u", "key": "1"}, b"IMG", "jpg"))
    assert set(without_caption.features.feature) == {"key", "jpg", "url"}


def framed(path: Path) -> list[bytes]:
    """The records of a file, both checksums verified with the `tfrecord` package's own CRC code."""
    data, records, offset = path.read_bytes(), [], 0
    masked = tfrecord_writer.TFRecordWriter.masked_crc
    while offset < len(data):
        length_bytes = data[offset : offset + 8]
        assert data[offset + 8 : offset + 12] == masked(length_bytes), f"length crc at {offset}"
        (length,) = struct.unpack("<Q", length_bytes)
        record = data[offset + 12 : offset + 12 + length]
        assert data[offset + 12 + length : offset + 16 + length] == masked(record), f"data crc at {offset}"
        records.append(record)
        offset += length + 16
    assert offset == len(data)
    return records


@pytest.mark.parametrize("implementation", ["python", "c"])
def test_framing_is_byte_identical_to_the_tfrecord_package(tmp_path, implementation):
    crc = crc32c_python if implementation == "python" else c_crc32c()
    theirs = tmp_path / "theirs.tfrecord"
    writer = tfrecord_writer.TFRecordWriter(str(theirs))
    for i in range(3):
        writer.write({"key": (f"k{i}".encode(), "byte"), "n": (i - 1, "int"), "blob": (os.urandom(5000), "byte")})
    writer.close()
    # copied as they come: the iterator reuses its buffer
    records = [bytes(record) for record in tfrecord_reader.tfrecord_iterator(str(theirs))]
    ours = io.BytesIO()
    for record in records:
        write_record(ours, record, crc)
    assert ours.getvalue() == theirs.read_bytes()
    assert list(read_records(io.BytesIO(ours.getvalue()), crc)) == records


def our_writer(folder: Path) -> TFRecordWriter:
    schema = pa.schema([("url", pa.string()), ("key", pa.string()), ("status", pa.string())])
    return TFRecordWriter(Folder(str(folder)), "00000", schema, "jpg")


def sample(index: int, url: str, image: bytes | None) -> Sample:
    status = Status.SUCCESS if image is not None else Status.FAILED_TO_DOWNLOAD
    return Sample(index, f"00000000{index}", {"url": url}, status, data=image)


def test_writer_commits_on_success_and_leaves_nothing_on_failure(tmp_path):
    (tmp_path / "out").mkdir()
    with our_writer(tmp_path / "out") as writer:
        writer.write(sample(0, "a", b"IMAGE"))
        writer.write(sample(1, "b", None))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.parquet", "00000.tfrecord"]
    (record,) = read_records(io.BytesIO((tmp_path / "out" / "00000.tfrecord").read_bytes()))
    parsed = example_pb2.Example()
    parsed.ParseFromString(record)
    assert parsed.features.feature["jpg"].bytes_list.value == [b"IMAGE"]
    assert read_metadata(tmp_path / "out").column("url").to_pylist() == ["a", "b"]

    (tmp_path / "failing").mkdir()
    with pytest.raises(RuntimeError), our_writer(tmp_path / "failing") as writer:
        writer.write(sample(0, "a", b"IMAGE"))
        raise RuntimeError("the shard failed")
    assert list((tmp_path / "failing").iterdir()) == []  # not even a partial file


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, server):
    """The test corpus written as tfrecord, and as parquet (to compare the stored image bytes)."""
    tmp = tmp_path_factory.mktemp("tfrecord")
    (tmp / "tf").mkdir()
    (tmp / "pq").mkdir()
    rows, output, _, _ = run(tmp / "tf", server, "csv", "tfrecord")
    _, reference, _, _ = run(tmp / "pq", server, "csv", "parquet")
    return rows, output, reference


SCHEMA = {
    "key": "byte",
    "jpg": "byte",
    "txt": "byte",
    "extra": "byte",
    "caption": "byte",
    "url": "byte",
    "status": "byte",
    "error_message": "byte",
    "width": "int",
    "height": "int",
    "original_width": "int",
    "original_height": "int",
    "exif": "byte",
    "sha256": "byte",
}


def test_pipeline_output_read_back_with_the_tfrecord_package(pipeline):
    rows, output, reference = pipeline
    shard_names = [f"{s:05d}" for s in range(-(-len(rows) // PER_SHARD))]
    assert sorted(p.name for p in output.iterdir()) == sorted(
        ["_img2dataset_ng_run.json"]
        + [f"{n}{suffix}" for n in shard_names for suffix in (".parquet", ".tfrecord", "_stats.json")]
    )
    table = read_metadata(output)
    assert table.column_names == ["extra", "caption", *BASE_COLUMNS, "exif", "sha256"]
    meta = {row["key"]: row for row in table.to_pylist()}
    successes = {key for key, row in meta.items() if row["status"] == "success"}
    assert len(successes) == sum(1 for _, status, _ in CORPUS if status == "success")
    reference_images = {key: sample["image"] for key, sample in stored_images(reference, "parquet").items()}
    stats = read_stats(output)

    seen = set()
    for shard_id, name in enumerate(shard_names):
        path = output / f"{name}.tfrecord"
        examples = list(tfrecord_reader.tfrecord_loader(str(path), None, SCHEMA))  # also checks every type
        assert len(examples) == stats[f"{name}_stats.json"]["successes"]
        assert all(set(example) == set(SCHEMA) for example in tfrecord_examples(path))  # no other feature
        for example in examples:
            key = example["key"].decode()
            assert key in successes and key not in seen
            assert key.startswith(expected_key(shard_id, 0)[:-1])  # in its own shard
            seen.add(key)
            row = meta[key]
            assert example["jpg"] == reference_images[key]  # the exact bytes the other formats store
            assert image_size(example["jpg"]) == (256, 256)
            assert example["txt"].decode() == row["caption"] == example["caption"].decode()
            for column in ("url", "extra", "status", "exif", "sha256"):
                assert example[column].decode() == row[column], column
            assert example["error_message"] == b""
            for column in ("width", "height", "original_width", "original_height"):
                assert example[column].tolist() == [row[column]], column
    assert seen == successes  # every success once, no failure

    images = stored_images(output, "tfrecord")
    assert sorted(images) == sorted(successes)
    for path in output.glob("*.tfrecord"):  # our reader and an independent CRC check agree
        assert list(read_records(path.open("rb"))) == framed(path)


def test_corrupted_records_are_detected(pipeline, tmp_path):
    _, output, _ = pipeline
    source = output / "00000.tfrecord"
    records = framed(source)
    assert len(records) >= 2
    second = len(records[0]) + 16  # offset of the second record

    def corrupt(offset: int) -> Path:
        path = tmp_path / f"corrupt-{offset}.tfrecord"
        shutil.copy(source, path)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        return path

    # a data byte of the second record: the first record is still read, then the error
    path = corrupt(second + 12 + len(records[1]) // 2)
    with path.open("rb") as f:
        reader = read_records(f)
        assert next(reader) == records[0]
        with pytest.raises(TFRecordError, match="corrupted record data"):
            next(reader)
    with pytest.raises(AssertionError, match="data crc"):
        framed(path)
    # (the `tfrecord` package does not verify checksums: it would return the damaged image)

    with pytest.raises(TFRecordError, match="corrupted record length"):
        list(read_records(corrupt(second + 3).open("rb")))
    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes(source.read_bytes()[:-1])
    with pytest.raises(TFRecordError, match="truncated"):
        list(read_records(truncated.open("rb")))


def test_pipeline_without_captions_in_png(tmp_path, server):
    rows, output, _, with_caption = run(tmp_path, server, "txt", "tfrecord", encode_format="png", encode_quality=9)
    assert not with_caption
    meta = {row["key"]: row for row in read_metadata(output).to_pylist()}
    examples = [example for path in sorted(output.glob("*.tfrecord")) for example in tfrecord_examples(path)]
    assert sorted(example["key"].decode() for example in examples) == sorted(
        key for key, row in meta.items() if row["status"] == "success"
    )
    for example in examples:
        assert set(example) == {"key", "png", *BASE_COLUMNS, "exif", "sha256"}  # no txt, no caption
        assert image_size(example["png"]) == (256, 256)
        assert example["png"].startswith(b"\x89PNG")
        assert example["url"].decode() == meta[example["key"].decode()]["url"]


def test_download_accepts_tfrecord(tmp_path, server):
    """No tensorflow needed: a run writes valid files with nothing but the base install."""
    url_list = tmp_path / "urls.txt"
    url_list.write_text(server.url("/img/64x64.jpg") + "\n" + server.url("/status/404") + "\n")
    summary = download(str(url_list), output_folder=str(tmp_path / "out"), output_format="tfrecord", thread_count=2)
    assert (summary.count, summary.successes) == (2, 1)
    (example,) = tfrecord_examples(tmp_path / "out" / "00000.tfrecord")
    assert example["key"] == b"000000000" and example["status"] == b"success"
