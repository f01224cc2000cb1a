"""End to end against the local HTTP server: every input format, every output format."""

from __future__ import annotations

import hashlib
import json
import math
import urllib.request
from pathlib import Path

import pytest

from img2dataset_ng import download
from tests.outputs import (
    BASE_COLUMNS,
    image_size,
    read_metadata,
    read_stats,
    stored_images,
    tar_samples,
    write_url_list,
)

INPUT_FORMATS = ["txt", "txt.gz", "csv", "csv.gz", "tsv", "tsv.gz", "json", "json.gz", "jsonl", "jsonl.gz", "parquet"]
OUTPUT_FORMATS = ["webdataset", "files", "parquet", "tfrecord", "dummy"]
PER_SHARD = 5

# (path on the test server, expected status, expected error message)
CORPUS = [
    ("/img/400x300.jpg", "success", None),
    ("/img/300x500.png?alpha=1", "success", None),
    ("/img/256x256.webp", "success", None),
    ("/status/404", "failed_to_download", "HTTP Error 404: Not Found"),
    ("/img/1000x200.jpg?gray=1", "success", None),
    ("/html", "failed_to_resize", "unsupported image format"),
    ("/redirect/2/img/120x80.jpg", "success", None),
    ("/corrupt.jpg", "failed_to_resize", "Image decoding error"),
    ("/status/500", "failed_to_download", "HTTP Error 500: Internal Server Error"),
    ("/img/50x50.jpg", "success", None),
    ("/img/640x480.jpg?seed=1", "success", None),
    ("ftp://127.0.0.1/x.jpg", "failed_to_download", "unsupported url scheme"),
]


def corpus_rows(server) -> list[dict]:
    return [
        {
            "url": path if "://" in path else server.url(path),
            "caption": f'caption {i}, with a comma and "quotes"',
            "extra": f"x{i}",
        }
        for i, (path, _, _) in enumerate(CORPUS)
    ]


def expected_key(shard: int, row: int, per_shard: int = PER_SHARD, oom: int = 5) -> str:
    """The contract's key, computed independently: ceil(log10(per_shard)) digits for the row."""
    digits = math.ceil(math.log10(per_shard)) if per_shard > 1 else 0
    return str(shard * 10**digits + row).zfill(oom + digits)


def run(tmp_path: Path, server, input_format: str, output_format: str, with_caption: bool = True, **options):
    rows = corpus_rows(server)
    if input_format.startswith("txt"):
        with_caption = False
    url_list = write_url_list(rows, tmp_path / f"urls.{input_format}", input_format)
    output = tmp_path / "out"
    summary = download(
        str(url_list),
        output_folder=str(output),
        input_format=input_format,
        output_format=output_format,
        caption_col="caption" if with_caption else None,
        save_additional_columns=["extra"] if with_caption else None,
        number_sample_per_shard=PER_SHARD,
        thread_count=8,
        **options,
    )
    return rows, output, summary, with_caption


def check_output(rows, output: Path, output_format: str, with_caption: bool, encode_format: str = "jpg"):
    shard_count = -(-len(rows) // PER_SHARD)
    names = [f"{s:05d}" for s in range(shard_count)]
    per_format = {
        "webdataset": lambda n: [f"{n}.tar", f"{n}.parquet"],
        "files": lambda n: [n, f"{n}.parquet"],
        "parquet": lambda n: [f"{n}.parquet"],
        "tfrecord": lambda n: [f"{n}.tfrecord", f"{n}.parquet"],
        "dummy": lambda n: [],
    }[output_format]
    run_record = "_img2dataset_ng_run.json"  # what made the folder
    index = ["wids-index.json"] if output_format == "webdataset" else []  # the shard index wids reads
    expected_files = sorted([run_record, *index, *(f for n in names for f in [*per_format(n), f"{n}_stats.json"])])
    assert sorted(p.name for p in output.iterdir()) == expected_files

    stats = read_stats(output)
    assert sum(s["count"] for s in stats.values()) == len(rows)
    assert sum(s["successes"] for s in stats.values()) == sum(1 for _, st, _ in CORPUS if st == "success")
    for s in stats.values():
        assert {
            "count",
            "successes",
            "failed_to_download",
            "failed_to_resize",
            "duration",
            "start_time",
            "end_time",
            "status_dict",
        } <= set(s)
        assert sum(s["status_dict"].values()) == s["count"]
    if output_format == "dummy":
        return

    table = read_metadata(output)
    columns = (["extra", "caption"] if with_caption else []) + BASE_COLUMNS + ["exif", "sha256"]
    if output_format == "parquet":
        columns.append(encode_format)
    assert table.column_names == columns
    assert str(table.schema.field("width").type) == "int32"

    # the invariant: exactly one metadata row per input row, every key once
    meta = {row["key"]: row for row in table.to_pylist()}
    assert len(meta) == table.num_rows == len(rows)
    for i, (row, (_, status, error)) in enumerate(zip(rows, CORPUS)):
        key = expected_key(i // PER_SHARD, i % PER_SHARD)
        assert len(key) == 6 and key.isdigit()
        got = meta[key]
        assert got["url"] == row["url"]
        assert (got["status"], got["error_message"]) == (status, error), got["url"]
        if with_caption:
            assert got["caption"] == row["caption"] and got["extra"] == row["extra"]
        if status == "success":
            assert (got["width"], got["height"]) == (256, 256)
            body = urllib.request.urlopen(row["url"]).read()
            assert got["sha256"] == hashlib.sha256(body).hexdigest()
            assert json.loads(got["exif"]) == {}
        else:
            assert got["width"] is None

    images = stored_images(output, output_format, encode_format)
    assert sorted(images) == sorted(k for k, r in meta.items() if r["status"] == "success")
    for key, sample in images.items():
        assert image_size(sample["image"]) == (256, 256)
        assert sample["json"]["key"] == key
        assert sample["json"]["url"] == meta[key]["url"]
        assert sample["txt"] == (meta[key]["caption"] if with_caption else None)

    if output_format == "webdataset":
        for name in names:
            members, samples = tar_samples(output / f"{name}.tar")
            for key, sample in samples.items():
                assert len(sample) == (3 if with_caption else 2)
                positions = [i for i, member in enumerate(members) if member.startswith(key + ".")]
                assert positions == list(range(positions[0], positions[0] + len(sample))), "members not adjacent"


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_every_input_format(tmp_path, server, input_format):
    rows, output, summary, with_caption = run(tmp_path, server, input_format, "webdataset")
    check_output(rows, output, "webdataset", with_caption)
    assert summary.count == len(rows) and summary.shards_done == 3


@pytest.mark.parametrize("output_format", OUTPUT_FORMATS)
def test_every_output_format(tmp_path, server, output_format):
    rows, output, summary, with_caption = run(tmp_path, server, "csv", output_format)
    check_output(rows, output, output_format, with_caption)


@pytest.mark.parametrize("output_format", ["webdataset", "files", "parquet"])
def test_output_without_caption(tmp_path, server, output_format):
    rows, output, _, _ = run(tmp_path, server, "parquet", output_format, with_caption=False)
    check_output(rows, output, output_format, with_caption=False)


@pytest.mark.parametrize("per_shard, width", [(1000, 8), (10000, 9)])
def test_key_width_for_shard_sizes(tmp_path, server, per_shard, width):
    rows = corpus_rows(server)
    url_list = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    download(
        str(url_list),
        output_folder=str(tmp_path / "out"),
        input_format="parquet",
        output_format="webdataset",
        number_sample_per_shard=per_shard,
        thread_count=8,
    )
    keys = read_metadata(tmp_path / "out").column("key").to_pylist()
    assert sorted(keys) == [str(i).zfill(width) for i in range(len(rows))]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "_img2dataset_ng_run.json",
        "wids-index.json",
    ]


def test_each_file_of_a_folder_starts_a_new_shard(tmp_path, server):
    rows = corpus_rows(server)
    folder = tmp_path / "lists"
    folder.mkdir()
    write_url_list(rows[:7], folder / "b.parquet", "parquet")
    write_url_list(rows[7:], folder / "a.parquet", "parquet")
    (folder / "ignored.csv").write_text("url\nhttp://127.0.0.1:9/x.jpg\n")
    download(
        str(folder),
        output_folder=str(tmp_path / "out"),
        input_format="parquet",
        output_format="parquet",
        number_sample_per_shard=PER_SHARD,
        thread_count=8,
    )
    meta = {r["key"]: r["url"] for r in read_metadata(tmp_path / "out").to_pylist()}
    # a.parquet (5 rows) -> shard 0; b.parquet (7 rows) -> shards 1 and 2
    assert sorted(meta) == [expected_key(0, i) for i in range(5)] + [expected_key(1, i) for i in range(5)] + [
        expected_key(2, i) for i in range(2)
    ]
    assert meta[expected_key(0, 0)] == rows[7]["url"] and meta[expected_key(1, 0)] == rows[0]["url"]


@pytest.mark.parametrize("encode_format", ["png", "webp"])
def test_encode_formats(tmp_path, server, encode_format):
    rows, output, _, with_caption = run(
        tmp_path,
        server,
        "jsonl",
        "webdataset",
        encode_format=encode_format,
        encode_quality=9 if encode_format == "png" else 90,
    )
    images = stored_images(output, "webdataset", encode_format)
    assert len(images) == 7
    for sample in images.values():
        assert image_size(sample["image"]) == (256, 256)


def test_exif_is_extracted_as_json(tmp_path, server):
    url_list = write_url_list(
        [{"url": server.url("/exif.jpg")}, {"url": server.url("/img/32x32.png")}], tmp_path / "u.jsonl", "jsonl"
    )
    download(
        str(url_list),
        input_format="jsonl",
        output_folder=str(tmp_path / "out"),
        output_format="parquet",
        thread_count=2,
    )
    exif = {r["url"].rsplit("/", 1)[1]: json.loads(r["exif"]) for r in read_metadata(tmp_path / "out").to_pylist()}
    assert exif == {"exif.jpg": {"Image Make": "TestCam"}, "32x32.png": {}}
