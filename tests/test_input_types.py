"""Input column types are decided once, by the first batch read, and every later batch and file is
converted to them: types that drift fail their own rows with a reason, never the run; a url column
that cannot hold urls is refused before any work; JSON nested too deeply is a failed row or a clear error."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import InputError, download
from img2dataset_ng.config import Config
from img2dataset_ng.reader import Sharder, UrlListReader
from img2dataset_ng.reader.formats import BATCH_ROWS, MAX_JSON_DEPTH, _too_deep
from img2dataset_ng.storage import Folder
from tests.outputs import read_metadata

PAST_FIRST_BATCH = BATCH_ROWS + 1000  # rows: the second json batch holds the last 1000


def shards_of(url_list, tmp_path, **options) -> list[pa.Table]:
    """Check the columns and cut the url list into shards with the real reader and sharder."""
    config = Config.from_options(url_list=str(url_list), **options)
    reader = UrlListReader(config.read)
    reader.check_columns()
    return [shard.read() for shard in Sharder(reader, config.key_format, Folder(str(tmp_path / "tmp")))]


def write_jsonl(path, records, gz: bool = False) -> None:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def failures(table: pa.Table) -> dict[int, str]:
    return {i: e for i, e in enumerate(table.column("__input_error").to_pylist()) if e is not None}


# --- json types that drift between batches ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json"])
def test_column_null_in_the_first_batch_then_text_is_one_text_column(tmp_path, fmt):
    records = [
        {"url": f"http://h/{i}.jpg", "extra": None if i < BATCH_ROWS else f"e{i}"} for i in range(PAST_FIRST_BATCH)
    ]
    path = tmp_path / f"urls.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(records))
    else:
        write_jsonl(path, records, gz=fmt.endswith(".gz"))
    # shards of 30,000 rows: the third concatenates the end of the first batch with the second batch
    shards = shards_of(
        path, tmp_path, input_format=fmt, save_additional_columns=["extra"], number_sample_per_shard=30_000
    )
    assert [t.num_rows for t in shards] == [30_000, 30_000, PAST_FIRST_BATCH - 60_000]
    assert {t.schema for t in shards} == {shards[0].schema}
    table = pa.concat_tables(shards)
    assert table.schema.field("extra").type == pa.string()
    assert table.column("extra").to_pylist() == [r["extra"] for r in records]
    assert failures(table) == {}


def test_numbers_after_a_first_batch_of_text_become_text_and_objects_fail_their_rows(tmp_path):
    """A column decided as text: a later number is its text; a later object or array cannot be and fails."""
    records = [{"url": f"http://h/{i}", "tag": f"t{i}"} for i in range(PAST_FIRST_BATCH)]
    later = {
        BATCH_ROWS + 3: 7,
        BATCH_ROWS + 4: 2.5,
        BATCH_ROWS + 5: True,
        BATCH_ROWS + 6: {"a": 1},
        BATCH_ROWS + 9: [1],
    }
    for i, value in later.items():
        records[i]["tag"] = value
    path = tmp_path / "urls.jsonl"
    write_jsonl(path, records)
    (table,) = shards_of(
        path, tmp_path, input_format="jsonl", save_additional_columns=["tag"], number_sample_per_shard=10**6
    )
    assert table.num_rows == PAST_FIRST_BATCH
    tags = table.column("tag").to_pylist()
    assert [tags[i] for i in later] == ["7", "2.5", "true", None, None]
    errors = failures(table)
    assert sorted(errors) == [BATCH_ROWS + 6, BATCH_ROWS + 9]
    assert errors[BATCH_ROWS + 6] == (
        f"column 'tag' of {path} at row {BATCH_ROWS + 7}: {{'a': 1}} cannot be read as string, "
        "the column's type in the first rows read"
    )
    assert table.column("url").to_pylist()[BATCH_ROWS + 6] == f"http://h/{BATCH_ROWS + 6}"  # the row is kept whole


def test_a_later_value_that_does_not_fit_the_first_batchs_numbers_fails_only_its_row(tmp_path):
    """Integers in the first batch: a later 2.5 is not made 2, and text is not a number; both rows fail."""
    records = [{"url": f"http://h/{i}", "n": i} for i in range(PAST_FIRST_BATCH)]
    records[BATCH_ROWS + 1]["n"] = 2.5
    records[BATCH_ROWS + 2]["n"] = "many"
    records[BATCH_ROWS + 3]["n"] = 3.0  # a whole number: kept
    path = tmp_path / "urls.jsonl"
    write_jsonl(path, records)
    (table,) = shards_of(
        path, tmp_path, input_format="jsonl", save_additional_columns=["n"], number_sample_per_shard=10**6
    )
    assert table.schema.field("n").type == pa.int64()
    assert sorted(failures(table)) == [BATCH_ROWS + 1, BATCH_ROWS + 2]
    values = table.column("n").to_pylist()
    assert values[BATCH_ROWS : BATCH_ROWS + 5] == [BATCH_ROWS, None, None, 3, BATCH_ROWS + 4]


def test_a_first_batch_that_mixes_types_gets_one_type(tmp_path):
    """Text and numbers together: text. Lists and text: the first value's type, the text fails its row."""
    path = tmp_path / "urls.jsonl"
    write_jsonl(
        path,
        [
            {"url": "http://h/0", "mixed": "a", "boxes": [[0.1, 0.2, 0.3, 0.4]]},
            {"url": "http://h/1", "mixed": 1, "boxes": "none"},
            {"url": "http://h/2", "mixed": None, "boxes": []},
        ],
    )
    (table,) = shards_of(path, tmp_path, input_format="jsonl", save_additional_columns=["mixed", "boxes"])
    assert table.column("mixed").to_pylist() == ["a", "1", None]
    assert table.schema.field("boxes").type == pa.list_(pa.list_(pa.float64()))
    assert table.column("boxes").to_pylist() == [[[0.1, 0.2, 0.3, 0.4]], None, []]
    assert list(failures(table)) == [1]


# --- the url column ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_urls_mixing_text_and_integers_read_the_integers_as_text(tmp_path, fmt):
    """An integer is no url: it is read as its text, which the fetch stage fails as it fails any bad url."""
    records = [{"url": 123 if i % 1000 == 7 else f"http://h/{i}"} for i in range(PAST_FIRST_BATCH)]
    records[BATCH_ROWS + 10]["url"] = ["http://h/a", "http://h/b"]  # a list in a later row fails that row
    path = tmp_path / f"urls.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(records))
    else:
        write_jsonl(path, records)
    (table,) = shards_of(path, tmp_path, input_format=fmt, number_sample_per_shard=10**6)
    assert table.schema.field("url").type == pa.string()
    urls = table.column("url").to_pylist()
    assert urls[7] == urls[BATCH_ROWS + 7 - BATCH_ROWS % 1000 + 1000] == "123"
    assert urls[BATCH_ROWS + 10] is None and urls[8] == "http://h/8"
    errors = failures(table)
    assert list(errors) == [BATCH_ROWS + 10]
    assert "column 'url'" in errors[BATCH_ROWS + 10] and "['http://h/a', 'http://h/b']" in errors[BATCH_ROWS + 10]


@pytest.mark.parametrize(
    ("fmt", "value", "kind"),
    [
        ("parquet", ["http://h/a"], "list<element: string>"),
        ("parquet", {"href": "http://h/a"}, "struct<href: string>"),
        ("jsonl", ["http://h/a"], "JSON array"),
        ("json", {"href": "http://h/a"}, "JSON object"),
        ("jsonl.gz", {"href": "http://h/a"}, "JSON object"),
    ],
)
def test_a_url_column_that_cannot_hold_urls_is_refused_before_any_work(tmp_path, fmt, value, kind):
    rows = [{"url": value, "text": "t"}, {"url": value, "text": "u"}]
    path = tmp_path / f"urls.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        write_jsonl(path, rows, gz=fmt.endswith(".gz"))
    with pytest.raises(InputError) as error:
        download(str(path), input_format=fmt, output_folder=str(tmp_path / "out"))
    assert str(error.value) == (
        f"column 'url' of {path} is of type {kind}, which cannot hold urls: url_col must name a column of text"
    )
    assert not (tmp_path / "out").exists()


def test_a_caption_column_of_lists_is_refused_naming_the_option(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://h/a"], "text": [["a", "b"]]}), path)
    with pytest.raises(InputError, match=r"column 'text' of .* cannot hold captions: caption_col must name"):
        download(str(path), input_format="parquet", caption_col="text", output_folder=str(tmp_path / "out"))


def test_a_url_column_of_lists_in_a_later_file_of_the_folder_is_refused_too(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    pq.write_table(pa.table({"url": ["http://h/a"]}), folder / "a.parquet")
    pq.write_table(pa.table({"url": pa.array([{"u": "http://h/b"}])}), folder / "b.parquet")
    with pytest.raises(InputError, match=r"column 'url' of .*b\.parquet is of type struct<u: string>"):
        download(str(folder), input_format="parquet", output_folder=str(tmp_path / "out"))


# --- parquet files of one folder that disagree ------------------------------------------------------


def test_parquet_files_of_one_folder_are_read_with_the_first_files_types(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    pq.write_table(
        pa.table({"url": ["http://h/a0", "http://h/a1"], "n": pa.array([1, 2], pa.int64()), "note": pa.nulls(2)}),
        folder / "a.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "url": pa.array(["http://h/b0", "http://h/b1", "http://h/b2"], pa.large_string()),
                "n": pa.array(["7", "seven", None]),
                "note": pa.array([5, None, 6], pa.int32()),
            }
        ),
        folder / "b.parquet",
    )
    pq.write_table(
        pa.table({"url": pa.array([9], pa.int64()), "n": pa.array([1.0, 2.5][:1]), "note": ["x"]}),
        folder / "c.parquet",
    )
    shards = shards_of(folder, tmp_path, input_format="parquet", save_additional_columns=["n", "note"])
    assert [t.num_rows for t in shards] == [2, 3, 1]  # each file starts a new shard
    assert {t.schema for t in shards} == {shards[0].schema}
    assert shards[0].schema.field("n").type == pa.int64()
    assert shards[0].schema.field("note").type == pa.string()  # all null in the first file: text
    table = pa.concat_tables(shards)
    assert table.column("url").to_pylist() == [
        "http://h/a0",
        "http://h/a1",
        "http://h/b0",
        "http://h/b1",
        "http://h/b2",
        "9",
    ]
    assert table.column("n").to_pylist() == [1, 2, 7, None, None, 1]
    assert table.column("note").to_pylist() == [None, None, "5", None, "6", "x"]
    assert failures(table) == {
        3: f"column 'n' of {folder / 'b.parquet'} at row 2: 'seven' cannot be read as int64, "
        "the column's type in the first rows read"
    }


def test_a_few_bad_values_among_many_fail_exactly_their_rows(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    pq.write_table(pa.table({"url": ["http://h/first"], "n": [0]}), folder / "a.parquet")
    values = [str(i) for i in range(200_000)]
    bad = {17, 65_535, 65_536, 199_999}
    for i in bad:
        values[i] = f"not {i}"
    urls = [f"http://h/{i}" for i in range(200_000)]
    pq.write_table(pa.table({"url": urls, "n": values}), folder / "b.parquet", row_group_size=50_000)
    shards = shards_of(
        folder, tmp_path, input_format="parquet", save_additional_columns=["n"], number_sample_per_shard=10**6
    )
    table = shards[1]
    assert table.num_rows == 200_000 and table.schema.field("n").type == pa.int64()
    assert set(failures(table)) == bad
    numbers = table.column("n").to_pylist()
    assert all(numbers[i] == (None if i in bad else i) for i in range(200_000))


# --- JSON nested too deeply -------------------------------------------------------------------------


def test_a_jsonl_line_nested_too_deeply_is_a_failed_row(tmp_path):
    path = tmp_path / "urls.jsonl"
    deep_line = '{"url": "http://h/1", "x": ' + deep(100_000) + "}"
    edge_line = '{"url": "http://h/3", "x": ' + deep(MAX_JSON_DEPTH - 1) + "}"  # the object is one level more
    write_jsonl(path, [deep_line, {"url": "http://h/0"}, deep(10**6), edge_line])
    (table,) = shards_of(path, tmp_path, input_format="jsonl")  # the first line tells no columns: the next does
    assert table.num_rows == 4
    assert table.column("url").to_pylist() == [None, "http://h/0", None, "http://h/3"]
    assert failures(table) == {
        0: f"line 1 of {path} could not be read: JSON nested more than {MAX_JSON_DEPTH} levels deep",
        2: f"line 3 of {path} could not be read: JSON nested more than {MAX_JSON_DEPTH} levels deep",
    }


def test_nesting_is_counted_outside_strings():
    assert not _too_deep('{"url": "' + "[" * (MAX_JSON_DEPTH * 2) + '"}')
    assert not _too_deep('{"a": "\\"' + "[" * (MAX_JSON_DEPTH * 2) + '"}')
    assert not _too_deep(deep(MAX_JSON_DEPTH))
    assert _too_deep(deep(MAX_JSON_DEPTH + 1))
    assert not _too_deep("[" + "[], " * (MAX_JSON_DEPTH * 2) + "[]]")  # many brackets, shallow


@pytest.mark.parametrize("where", ["first", "later", "skipped index"])
def test_a_json_document_nested_too_deeply_is_a_clear_error_naming_the_file(tmp_path, where):
    path = tmp_path / "urls.json"
    rows = [json.dumps({"url": f"http://h/{i}"}) for i in range(3)]
    too_deep = '{"url": "http://h/x", "x": ' + deep(100_000) + "}"
    if where == "first":
        text = "[" + ",".join([too_deep, *rows]) + "]"
    elif where == "later":
        text = "[" + ",".join([*rows, too_deep]) + "]"
    else:  # the split layout's index is stepped over, never decoded into rows
        text = '{"columns": ["url"], "index": [' + deep(100_000) + '], "data": [["http://h/0"]]}'
    path.write_text(text)
    with pytest.raises(InputError) as error:
        download(str(path), input_format="json", output_folder=str(tmp_path / "out"))
    message = str(error.value)
    assert message.startswith(f"cannot read {path} as json: a value is nested too deeply to be decoded: line 1")
    assert "Recursion" not in message


def test_a_json_document_with_objects_nested_deeply_in_a_skipped_part_still_reads(tmp_path):
    """Objects in a skipped split index are walked key by key without recursion, however deep."""
    # 5000 levels: walked by recursion, this would exhaust Python's stack
    path = tmp_path / "urls.json"
    text = (
        '{"columns": ["url"], "index": '
        + '{"k": ' * 5000
        + "{}"
        + "}" * 5000
        + ', "data": [["http://h/0"], ["http://h/1"]]}'
    )
    path.write_text(text)
    (table,) = shards_of(path, tmp_path, input_format="json")
    assert table.column("url").to_pylist() == ["http://h/0", "http://h/1"]


# --- end to end ---------------------------------------------------------------------------------------


def test_download_of_a_drifting_jsonl_writes_every_row_with_one_schema(tmp_path, server):
    """The real run: a column null for the first batch then text, an integer url, a list url later and
    a line nested too deeply all become rows of the output with their status; every shard has one schema."""
    ok = {0: server.url("/img/32x32.jpg"), PAST_FIRST_BATCH - 1: server.url("/img/40x30.jpg?seed=1")}
    records: list = []
    for i in range(PAST_FIRST_BATCH):
        # anything but http(s) fails in the fetch stage without a connection: the run stays fast
        record = {"url": ok.get(i, f"nope://h/{i}"), "extra": f"e{i}" if i >= BATCH_ROWS else None}
        records.append(record)
    records[5]["url"] = 123
    records[BATCH_ROWS + 10]["url"] = {"href": server.url("/img/32x32.jpg")}
    records[BATCH_ROWS + 20] = '{"url": "' + server.url("/img/32x32.jpg") + '", "x": ' + deep(10_000) + "}"
    path = tmp_path / "urls.jsonl"
    write_jsonl(path, records)
    out = tmp_path / "out"
    summary = download(
        str(path),
        input_format="jsonl",
        output_folder=str(out),
        output_format="parquet",
        save_additional_columns=["extra"],
        number_sample_per_shard=20_000,
        processes_count=1,
        thread_count=8,
    )
    assert summary.count == PAST_FIRST_BATCH and not summary.failed_shards
    files = sorted(out.glob("*.parquet"))
    assert len(files) == 4
    schemas = {pq.read_schema(f).remove_metadata() for f in files}
    assert len(schemas) == 1
    meta = read_metadata(out)
    assert meta.num_rows == PAST_FIRST_BATCH
    assert meta.schema.field("extra").type == pa.string() and meta.schema.field("url").type == pa.string()
    assert "__input_error" not in meta.column_names
    status, errors, urls = (meta.column(c).to_pylist() for c in ("status", "error_message", "url"))
    assert [i for i, s in enumerate(status) if s == "success"] == sorted(ok)
    extra = [f"e{i}" if i != BATCH_ROWS + 20 else None for i in range(BATCH_ROWS, PAST_FIRST_BATCH)]
    assert meta.column("extra").to_pylist() == [None] * BATCH_ROWS + extra  # the unreadable line has no values
    assert (urls[5], status[5], errors[5]) == ("123", "failed_to_download", "unsupported url scheme")
    assert urls[BATCH_ROWS + 10] is None and status[BATCH_ROWS + 10] == "failed_to_download"
    assert errors[BATCH_ROWS + 10].startswith(f"column 'url' of {path} at row {BATCH_ROWS + 11}: {{'href': ")
    assert status[BATCH_ROWS + 20] == "failed_to_download"
    assert (
        errors[BATCH_ROWS + 20]
        == f"line {BATCH_ROWS + 21} of {path} could not be read: JSON nested more than 500 levels deep"
    )
    assert errors[6] == "unsupported url scheme"
