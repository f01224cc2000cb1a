"""Url lists that img2dataset 1.47 reads must read here too: byte-order marks, every `to_json` layout,
the bbox column in the metadata; and a bad byte fails its own row, not the run."""

from __future__ import annotations

import codecs
import gzip
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import InputError, download
from img2dataset_ng.config import Config
from img2dataset_ng.reader import Sharder, UrlListReader
from img2dataset_ng.storage import Folder
from tests.outputs import read_metadata, write_url_list

SIZES = ["32x32", "40x30", "24x36", "64x48", "30x40"]


def rows_for(server, count: int = 5) -> list[dict[str, str]]:
    return [
        {"url": server.url(f"/img/{SIZES[i % len(SIZES)]}.jpg?seed={i}"), "text": f"caption {i}"} for i in range(count)
    ]


def run(url_list, tmp_path, **options) -> pa.Table:
    """Download `url_list` for real and read its metadata back."""
    out = tmp_path / "out"
    download(
        str(url_list),
        output_folder=str(out),
        output_format="parquet",
        thread_count=4,
        processes_count=1,
        **options,
    )
    return read_metadata(out)


def rewrite(path, change) -> None:
    """Apply `change` to the (decompressed) bytes of a url list, compressing again a `.gz`."""
    gz = path.name.endswith(".gz")
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    data = change(data)
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("fmt", ["csv", "tsv.gz", "txt", "txt.gz", "jsonl", "jsonl.gz", "json"])
def test_byte_order_mark_reads_like_without(tmp_path, server, fmt):
    rows = rows_for(server)
    path = write_url_list(rows, tmp_path / f"urls.{fmt}", fmt)
    rewrite(path, lambda data: codecs.BOM_UTF8 + data)
    caption = {} if fmt.startswith("txt") else {"caption_col": "text"}
    meta = run(path, tmp_path, input_format=fmt, **caption)
    assert meta.column("status").to_pylist() == ["success"] * len(rows)
    assert meta.column("url").to_pylist() == [r["url"] for r in rows]
    if caption:
        assert meta.column("caption").to_pylist() == [r["text"] for r in rows]


@pytest.mark.parametrize(
    ("orient", "fmt"),
    [(o, "json") for o in ("columns", "index", "split", "table")] + [("split", "json.gz"), ("index", "json.gz")],
)
def test_every_to_json_layout_with_column_names_is_read_in_pandas_order(tmp_path, server, orient, fmt):
    rows = rows_for(server)
    frame = pd.DataFrame(rows, index=[3, 0, 4, 1, 2])  # an index out of order: rows keep the document's order
    path = tmp_path / f"urls.{fmt}"
    frame.to_json(path, orient=orient, compression="gzip" if fmt.endswith(".gz") else None)
    expected = pd.read_json(path, orient=orient)
    meta = run(path, tmp_path, input_format=fmt, caption_col="text")
    assert meta.column("status").to_pylist() == ["success"] * len(rows)
    assert meta.column("url").to_pylist() == expected["url"].tolist() == [r["url"] for r in rows]
    assert meta.column("caption").to_pylist() == expected["text"].tolist()


def test_columns_layout_rows_are_the_union_of_keys_first_seen_first_as_pandas(tmp_path, server):
    urls = {label: server.url(f"/img/32x32.jpg?seed={label}") for label in ("1", "3", "5", "0")}
    document = {"text": {"5": "c5", "1": "c1"}, "url": {label: urls[label] for label in ("1", "3", "5", "0")}}
    path = tmp_path / "urls.json"
    path.write_text(json.dumps(document))
    expected = pd.read_json(path)  # what img2dataset 1.47 reads
    meta = run(path, tmp_path, input_format="json", caption_col="text")
    assert meta.column("url").to_pylist() == expected["url"].tolist() == [urls[k] for k in ("5", "1", "3", "0")]
    assert meta.column("caption").to_pylist() == ["c5", "c1", None, None]


def test_streamed_json_layouts_yield_rows_before_the_document_is_read():
    from img2dataset_ng.reader.json_stream import iter_json_rows

    frame = pd.DataFrame({"url": [f"http://h/{i}.jpg" for i in range(3000)], "text": ["t"] * 3000})
    for orient in ("records", "index", "split", "table"):
        text = frame.to_json(orient=orient)
        source = io.StringIO(text)
        rows = iter_json_rows(source, "url", read_size=512)
        assert next(rows) == ({"index": 0} if orient == "table" else {}) | {"url": "http://h/0.jpg", "text": "t"}
        # streamed: read up to the first row (split: past its index, which comes before the data), not further
        assert source.tell() < max(text.find('"data"'), 0) + 2048, orient
        assert [r["url"] for r in rows] == frame["url"].tolist()[1:]


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv.gz", "jsonl"])
def test_a_bad_byte_fails_its_own_row_naming_the_file_and_line(tmp_path, server, fmt):
    rows = rows_for(server, 6)
    path = write_url_list(rows, tmp_path / f"urls.{fmt}", fmt)
    # the 4th url (line 4 of a txt or jsonl, 4th record after the csv header) gets a byte that is not UTF-8
    marker = rows[3]["url"].encode()
    rewrite(path, lambda data: data.replace(marker, marker + b"\xff"))
    caption = {} if fmt == "txt" else {"caption_col": "text"}
    meta = run(path, tmp_path, input_format=fmt, **caption)
    statuses = meta.column("status").to_pylist()
    assert statuses == ["success"] * 3 + ["failed_to_download"] + ["success"] * 2
    message = meta.column("error_message").to_pylist()[3]
    where = "row 4 (records counted after the header), column 'url'" if "sv" in fmt else "line 4"
    assert message == f"invalid UTF-8 in {path} at {where}: byte 0xff"
    assert meta.column("url").to_pylist()[3] == rows[3]["url"] + "\ufffd"  # what the row held, as it can be read
    assert "__input_error" not in meta.column_names


def test_a_bad_byte_in_another_column_and_blank_lines_keep_the_line_count(tmp_path, server):
    rows = rows_for(server, 4)
    path = tmp_path / "urls.jsonl"
    lines = [json.dumps(r).encode() for r in rows]
    lines[2] = lines[2].replace(b"caption 2", b"caption \xe9 2")  # latin-1, as some scrapers write
    path.write_bytes(b"\n\r\n".join(lines))  # a blank line between rows
    meta = run(path, tmp_path, input_format="jsonl", caption_col="text")
    assert meta.column("status").to_pylist() == ["success", "success", "failed_to_download", "success"]
    assert meta.column("error_message").to_pylist()[2] == f"invalid UTF-8 in {path} at line 5: byte 0xe9"
    assert meta.column("caption").to_pylist()[2] == "caption \ufffd 2"


def test_batches_with_and_without_bad_rows_share_one_shard(tmp_path):
    """A bad row in the first batch only: the next batches have the same columns, so they make shards."""
    path = tmp_path / "urls.jsonl"
    lines = [json.dumps({"url": f"http://127.0.0.1:9/{i}.jpg", "n": i}).encode() for i in range(70_000)]
    lines[5] = lines[5].replace(b".jpg", b"\xff.jpg")
    path.write_bytes(b"\n".join(lines))
    config = Config.from_options(url_list=str(path), input_format="jsonl", number_sample_per_shard=100_000)
    reader = UrlListReader(config.read)
    (shard,) = list(Sharder(reader, config.key_format, Folder(str(tmp_path / "tmp"))))
    table = shard.read()
    assert table.num_rows == 70_000
    errors = table.column("__input_error").to_pylist()
    assert [i for i, e in enumerate(errors) if e] == [5] and "line 6" in errors[5]


def test_txt_lines_split_across_reads_keep_their_numbers_and_ends():
    from img2dataset_ng.reader.text import line_blocks

    data = b"\xef\xbb\xbfa\r\nbb\rccc\n\n\r\nd\r" + b"e" * 10 + b"\r\n" + b"f"
    for size in range(1, len(data) + 1):
        blocks = list(line_blocks(io.BytesIO(data), size))
        assert b"".join(blocks) == data[3:], size
        assert all(b.endswith((b"\n", b"\r")) for b in blocks[:-1]), size
        assert sum(len(b.splitlines()) for b in blocks) == len(data[3:].splitlines()), size


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_bbox_column_is_kept_in_the_metadata_where_img2dataset_puts_it(tmp_path, server, fmt):
    boxes = [[[0.1, 0.1, 0.5, 0.5]], [], [[0.0, 0.2, 0.3, 0.9], [0.5, 0.5, 1.0, 1.0]]]
    rows = [
        {"url": r["url"], "text": r["text"], "extra": f"e{i}", "boxes": b if fmt == "parquet" else json.dumps(b)}
        for i, (r, b) in enumerate(zip(rows_for(server, 3), boxes, strict=True))
    ]
    path = write_url_list(rows, tmp_path / f"urls.{fmt}", fmt)
    meta = run(
        path, tmp_path, input_format=fmt, caption_col="text", bbox_col="boxes", save_additional_columns=["extra"]
    )
    # img2dataset 1.47 appends bbox_col to save_additional_columns, before caption and url
    assert meta.column_names[:7] == ["extra", "boxes", "caption", "url", "key", "status", "error_message"]
    assert meta.column("boxes").to_pylist() == [r["boxes"] for r in rows]
    assert meta.column("status").to_pylist() == ["success"] * 3


@pytest.mark.parametrize(("flag", "size"), [("False", 64), ("True", 32)])
def test_resize_only_if_bigger_given_as_text(tmp_path, server, flag, size):
    path = write_url_list([{"url": server.url("/img/32x32.jpg")}], tmp_path / "urls.txt", "txt")
    meta = run(path, tmp_path, image_size=64, resize_only_if_bigger=flag)
    assert meta.column("status").to_pylist() == ["success"]
    assert (meta.column("width").to_pylist(), meta.column("height").to_pylist()) == ([size], [size])


def test_json_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "urls.json"
    data = b'[\n{"url": "http://h/1.jpg"},\n{"url": "http://h/\xff.jpg"}\n]'
    path.write_bytes(codecs.BOM_UTF8 + data)
    with pytest.raises(InputError) as error:
        download(str(path), input_format="json", output_folder=str(tmp_path / "out"))
    offset = len(codecs.BOM_UTF8) + data.index(b"\xff")
    assert f"invalid UTF-8 in {path} at line 3: byte 0xff (byte offset {offset})" in str(error.value)


def test_parquet_bbox_types_are_kept(tmp_path, server):
    table = pa.table({"url": [server.url("/img/32x32.jpg")], "b": [[[0.0, 0.0, 0.5, 0.5]]]})
    pq.write_table(table, tmp_path / "u.parquet")
    meta = run(tmp_path / "u.parquet", tmp_path, input_format="parquet", bbox_col="b")
    assert meta.schema.field("b").type == table.schema.field("b").type


def test_json_text_is_decoded_across_reads_that_cut_characters_and_the_mark():
    from img2dataset_ng.reader.text import Utf8Text

    text = '[{"url": "http://h/é.jpg", "text": "日本 ✓"}]\n'
    data = codecs.BOM_UTF8 + text.encode()
    for size in range(1, 8):
        source = Utf8Text(io.BytesIO(data), "u.json")
        assert "".join(iter(lambda s=source, n=size: s.read(n), "")) == text, size
        bad = Utf8Text(io.BytesIO(data.replace("✓".encode(), b"\xe2\x9c")), "u.json")
        with pytest.raises(InputError, match=rf"at line 1: byte 0xe2 \(byte offset {data.index('✓'.encode())}\)"):
            "".join(iter(lambda s=bad, n=size: s.read(n), ""))


def test_failed_rows_have_the_nulls_that_img2dataset_writes(tmp_path, server):
    """1.47 fills sizes, exif and the hash on successes only (its downloader.py sets them to None first)."""
    paths = ["/img/64x48.jpg", "/status/404", "/corrupt.png", "/exif.jpg"]
    urls = write_url_list([{"url": server.url(p)} for p in paths], tmp_path / "u.parquet", "parquet")
    download(str(urls), input_format="parquet", output_folder=str(tmp_path / "out"), thread_count=4)
    rows = read_metadata(tmp_path / "out").to_pylist()
    columns = ("width", "height", "original_width", "original_height", "exif", "sha256")
    assert [row["status"] for row in rows] == ["success", "failed_to_download", "failed_to_resize", "success"]
    for row in rows[1:3]:
        assert {c: row[c] for c in columns} == dict.fromkeys(columns), row
    for row in (rows[0], rows[3]):
        assert None not in [row[c] for c in columns], row
    assert json.loads(rows[3]["exif"])["Image Make"] == "TestCam"
