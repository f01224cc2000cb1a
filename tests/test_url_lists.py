"""The reader: every format streams into shards; bad input fails early with a clear message."""

from __future__ import annotations

import gzip
import json
import resource
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import InputError, download
from img2dataset_ng.config import Config
from img2dataset_ng.naming import KeyFormat
from img2dataset_ng.reader import Sharder, UrlListReader
from img2dataset_ng.reader.json_stream import iter_json_array
from img2dataset_ng.storage import Folder
from tests.outputs import read_metadata, write_url_list


def shards_of(url_list, tmp_path, **options):
    config = Config.from_options(url_list=str(url_list), **options)
    reader = UrlListReader(config.read)
    reader.check_columns()
    sharder = Sharder(reader, config.key_format, Folder(str(tmp_path / "tmp")))
    return [(shard.shard_id, shard.read()) for shard in sharder]


def test_txt_takes_each_line_as_one_url_and_skips_blank_lines(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text('http://a/x.jpg?a=1,2&b="3"\n\n   \nhttp://b/y.jpg, with, commas\r\nhttp://c/z.jpg')
    ((shard_id, table),) = shards_of(path, tmp_path)
    assert shard_id == 0
    assert table.column_names == ["url", "__input_error"]
    assert table.column("__input_error").null_count == table.num_rows
    assert table.column("url").to_pylist() == [
        'http://a/x.jpg?a=1,2&b="3"',
        "http://b/y.jpg, with, commas",
        "http://c/z.jpg",
    ]


@pytest.mark.parametrize("fmt", ["csv", "tsv.gz", "json", "jsonl.gz", "parquet"])
def test_columns_are_selected_renamed_and_ordered(tmp_path, fmt):
    rows = [{"link": f"http://h/{i}.jpg", "text": f"cap,\n{i}", "a": f"A{i}", "b": i, "unused": "u"} for i in range(25)]
    path = write_url_list(rows, tmp_path / f"urls.{fmt}", fmt)
    shards = shards_of(
        path,
        tmp_path,
        input_format=fmt,
        url_col="link",
        caption_col="text",
        save_additional_columns=["b", "a"],
        number_sample_per_shard=10,
    )
    assert [s for s, _ in shards] == [0, 1, 2]
    assert [t.num_rows for _, t in shards] == [10, 10, 5]
    table = pa.concat_tables(t for _, t in shards)
    # every format carries why a row could not be read (null here), so batches and files concatenate
    assert table.column_names == ["b", "a", "caption", "url", "__input_error"]
    assert table.column("__input_error").null_count == table.num_rows
    assert table.column("url").to_pylist() == [r["link"] for r in rows]
    assert table.column("caption").to_pylist() == [r["text"] for r in rows]
    assert [str(v) for v in table.column("b").to_pylist()] == [str(r["b"]) for r in rows]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_missing_column_fails_before_any_download_naming_it(tmp_path, fmt):
    rows = [{"url": "http://127.0.0.1:9/x.jpg", "text": "t"}]
    path = write_url_list(rows, tmp_path / f"urls.{fmt}", fmt)
    with pytest.raises(InputError) as error:
        download(str(path), input_format=fmt, caption_col="caption", output_folder=str(tmp_path / "out"))
    message = str(error.value)
    assert "'caption' not found" in message and "columns found: 'url', 'text'" in message
    assert not (tmp_path / "out").exists()


def test_missing_file_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        download(str(tmp_path / "nope.parquet"), input_format="parquet")
    (tmp_path / "lists").mkdir()
    with pytest.raises(InputError, match=r"holds no \*.csv file"):
        download(str(tmp_path / "lists"), input_format="csv")


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "urls.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="urls.parquet"):
        download(str(path), input_format="parquet", output_folder=str(tmp_path / "out"))


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "json"])
def test_empty_list_finishes_cleanly_with_zero_shards(tmp_path, fmt, caplog):
    path = tmp_path / f"urls.{fmt}"
    path.write_text({"txt": "\n\n", "csv": "url\n", "jsonl": "\n", "json": "[]"}[fmt])
    caplog.set_level("INFO")
    summary = download(str(path), input_format=fmt, output_folder=str(tmp_path / "out"))
    assert summary.shards_done == 0 and summary.count == 0
    assert "0 shards, nothing to download" in caplog.text
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["_img2dataset_ng_run.json"]  # and no shard


def test_json_array_is_decoded_incrementally():
    import io

    values = [
        {"url": f"http://h/{i}", "n": i * 1.5, "s": "x" * (i % 7), "nested": [i, {"k": None}]} for i in range(500)
    ]
    text = json.dumps(values, indent=1)
    assert list(iter_json_array(io.StringIO(text), read_size=7)) == values
    assert list(iter_json_array(io.StringIO("  [ ]  "), read_size=1)) == []
    with pytest.raises(json.JSONDecodeError):
        list(iter_json_array(io.StringIO('[{"url": 1}'), read_size=3))


def test_shard_ids_count_across_files_and_skip_done_shards(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    for name, n in (("a", 12), ("b", 3)):
        (folder / f"{name}.txt").write_text("".join(f"http://{name}/{i}\n" for i in range(n)))
    config = Config.from_options(url_list=str(folder), number_sample_per_shard=5)
    sharder = Sharder(UrlListReader(config.read), KeyFormat(5), Folder(str(tmp_path / "tmp")), 10, frozenset({11}))
    shards = list(sharder)
    assert [(s.shard_id, s.row_count) for s in shards] == [(10, 5), (12, 2), (13, 3)]
    assert sharder.skipped == 1
    assert shards[2].read().column("url").to_pylist() == ["http://b/0", "http://b/1", "http://b/2"]


def test_reader_memory_grows_with_shard_size_not_input_size(tmp_path):
    """Sharding 2M rows must not cost much more memory than sharding 200k rows."""
    script = textwrap.dedent(
        """
        import resource, sys
        import pyarrow as pa, pyarrow.parquet as pq
        from img2dataset_ng.config import Config
        from img2dataset_ng.reader import Sharder, UrlListReader
        from img2dataset_ng.storage import Folder
        rows, path, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        with pq.ParquetWriter(path, pa.schema([("url", pa.string()), ("caption", pa.string())])) as w:
            for start in range(0, rows, 100_000):
                n = min(100_000, rows - start)
                urls = pa.array([f"http://127.0.0.1:1/a/long/path/{i:09d}.jpg" for i in range(start, start + n)])
                w.write_table(pa.table({"url": urls, "caption": pa.array(["a caption of some length " * 3] * n)}))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        config = Config.from_options(url_list=path, input_format="parquet", caption_col="caption")
        n = sum(s.row_count for s in Sharder(UrlListReader(config.read), config.key_format, Folder(tmp)))
        assert n == rows, n
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
        """
    )
    grown = {}
    for rows in (200_000, 2_000_000):
        out = subprocess.run(
            [sys.executable, "-c", script, str(rows), str(tmp_path / f"{rows}.parquet"), str(tmp_path / f"tmp{rows}")],
            capture_output=True,
            text=True,
            check=True,
        )
        grown[rows] = int(out.stdout.strip()) / 1024  # MiB
    # 10x the input: the row data alone would be ~150 MiB more if it were held; allow noise, not that
    print("reader RSS growth MiB:", grown)
    assert grown[2_000_000] < grown[200_000] + 60, grown
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss > 0


def test_parquet_types_of_additional_columns_are_kept(tmp_path, server):
    table = pa.table({"url": [server.url("/img/32x32.jpg")], "score": [0.5], "n": pa.array([3], pa.int64())})
    pq.write_table(table, tmp_path / "u.parquet")
    download(
        str(tmp_path / "u.parquet"),
        input_format="parquet",
        output_folder=str(tmp_path / "out"),
        save_additional_columns=["score", "n"],
        output_format="parquet",
        thread_count=2,
    )
    meta = read_metadata(tmp_path / "out")
    assert meta.schema.field("score").type == pa.float64() and meta.column("n").to_pylist() == [3]


def test_gzip_and_plain_read_the_same(tmp_path):
    urls = [f"http://h/{i}.jpg" for i in range(7)]
    (tmp_path / "u.txt").write_text("\n".join(urls))
    with gzip.open(tmp_path / "u.txt.gz", "wt") as f:
        f.write("\n".join(urls))
    plain = shards_of(tmp_path / "u.txt", tmp_path)
    gz = shards_of(tmp_path / "u.txt.gz", tmp_path, input_format="txt.gz")
    assert plain[0][1].equals(gz[0][1])
