"""Existing shards as input: a download, then a reprocess of its shards to another size and format, locally
and on the local S3 server; img2dataset 1.47's layouts too."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import ConfigError, Summary, download
from img2dataset_ng.errors import InputError
from img2dataset_ng.reader.datasets import expand_braces
from tests.outputs import image_size, read_metadata, read_stats, stored_images, tar_samples, write_url_list
from tests.server import make_image
from tests.test_pipeline import corpus_rows
from tests.test_retry import as_img2dataset_147, stats_as_147
from tests.test_storage import fetch, fresh_prefix, s3  # noqa: F401 - s3: the S3 server fixture

PER_SHARD = 5
OUTPUT_LAYOUTS = {"webdataset": "webdataset", "parquet": "parquet_shards", "files": "files_shards"}


def first_download(server, tmp_path: Path, output_format: str = "webdataset", **options) -> Path:
    url_list = write_url_list(corpus_rows(server), tmp_path / "urls.csv", "csv")
    out = tmp_path / f"first-{output_format}"
    download(
        str(url_list),
        input_format="csv",
        caption_col="caption",
        save_additional_columns=["extra"],
        output_folder=str(out),
        output_format=output_format,
        number_sample_per_shard=PER_SHARD,
        image_size=128,
        resize_mode="keep_ratio",
        thread_count=4,
        processes_count=1,
        **options,
    )
    return out


def check_reprocessed(first: Path, second: Path, output_format: str, size: int) -> None:
    """Every row of `first` is a row of `second`: same key, input columns and status, in the same shard;
    the successes are stored again at `size`."""
    before, after = read_metadata(first).to_pylist(), read_metadata(second).to_pylist()
    assert [r["key"] for r in after] == [r["key"] for r in before]
    for old, new in zip(before, after):
        # every input column but the stored image's size and bytes: url, caption, extra, key, status, reason,
        # the original size, exif and the hash of the download
        for column in set(old) - {"width", "height", "jpg"}:
            assert new[column] == old[column], (column, old, new)
        if old["status"] == "success":
            assert min(new["width"], new["height"]) == size and new["sha256"] == old["sha256"]
    assert sorted(p.name for p in second.glob("*_stats.json")) == sorted(p.name for p in first.glob("*_stats.json"))
    stored = stored_images(second, output_format)
    assert sorted(stored) == sorted(r["key"] for r in before if r["status"] == "success")
    for key, sample in stored.items():
        assert min(image_size(sample["image"])) == size
        assert sample["txt"] == next(r["caption"] for r in before if r["key"] == key)


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_a_download_reprocessed_to_another_size_and_format(downloaded, tmp_path, output_format):
    first = downloaded
    second = tmp_path / "second"
    summary = download(
        str(first),
        input_format="webdataset",
        output_folder=str(second),
        output_format=output_format,
        image_size=64,
        resize_mode="keep_ratio",
        processes_count=1,
    )
    check_reprocessed(first, second, output_format, 64)
    assert summary.shards_done == len(list(first.glob("*.tar")))


@pytest.mark.parametrize("output_format", ["parquet", "files"])
def test_every_layout_reads_back(server, tmp_path, output_format):
    first = first_download(server, tmp_path, output_format)
    second = tmp_path / "second"
    download(
        str(first),
        input_format=OUTPUT_LAYOUTS[output_format],
        output_folder=str(second),
        output_format="webdataset",
        image_size=64,
        resize_mode="keep_ratio",
        processes_count=1,
    )
    check_reprocessed(first, second, "webdataset", 64)


def test_input_shard_n_becomes_output_shard_n_from_a_brace_pattern(downloaded, tmp_path):
    first = downloaded
    second = tmp_path / "second"
    download(
        str(first) + "/{00001..00002}.tar",
        input_format="webdataset",
        output_format="webdataset",
        output_folder=str(second),
        image_size=64,
        resize_mode="keep_ratio",
        processes_count=1,
    )
    assert sorted(p.name for p in second.glob("*.tar")) == ["00001.tar", "00002.tar"]
    for shard in ("00001", "00002"):
        old = [r["key"] for r in read_metadata(first).to_pylist() if r["key"].startswith(shard)]
        assert [r["key"] for r in json_rows(second / f"{shard}.parquet")] == old


def test_a_tar_without_its_parquet_reads_its_json(downloaded, tmp_path):
    first = downloaded
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "00000.tar").write_bytes((first / "00000.tar").read_bytes())
    second = tmp_path / "second"
    download(str(alone), input_format="webdataset", output_folder=str(second), image_size=64, processes_count=1)
    successes = [
        r for r in read_metadata(first).to_pylist() if r["key"].startswith("00000") and r["status"] == "success"
    ]
    rows = read_metadata(second).to_pylist()
    assert [r["key"] for r in rows] == [r["key"] for r in successes]
    assert [r["caption"] for r in rows] == [r["caption"] for r in successes]
    assert all(r["status"] == "success" and min(r["width"], r["height"]) == 64 for r in rows)


def test_bad_shard_inputs_fail_before_any_work(downloaded, tmp_path):
    first = downloaded
    with pytest.raises(InputError, match="holds no parquet_shards shard|no image column"):
        download(str(first), input_format="parquet_shards", output_folder=str(tmp_path / "x"))
    with pytest.raises(InputError, match="does not exist"):
        download(str(tmp_path / "nothing"), input_format="webdataset", output_folder=str(tmp_path / "y"))
    with pytest.raises(ConfigError, match="extend"):
        download(str(first), input_format="webdataset", output_folder=str(tmp_path / "z"), incremental_mode="extend")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_brace_patterns_expand_like_a_shell():
    assert expand_braces("s3://b/{00008..00011}.tar") == [f"s3://b/{n:05d}.tar" for n in range(8, 12)]
    assert expand_braces("a/{x,y}/{1..2}.tar") == ["a/x/1.tar", "a/x/2.tar", "a/y/1.tar", "a/y/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def json_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_stats_name_the_input(downloaded, tmp_path):
    first = downloaded
    second = tmp_path / "second"
    download(str(first), input_format="webdataset", output_folder=str(second), image_size=64, processes_count=1)
    stats = read_stats(second)
    assert sum(s["count"] for s in stats.values()) == read_metadata(first).num_rows
    assert json.loads((second / "00000_stats.json").read_text())["successes"] == sum(
        1 for r in read_metadata(first).to_pylist() if r["key"].startswith("00000") and r["status"] == "success"
    )


# --- issue 14's acceptance: on the S3 server, over img2dataset 1.47's layouts, after a SIGKILL ---------------

IN_PROCESS = "tests.outputs:InProcessDistributor"  # shards run in this process where a real one is not the point


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory) -> Path:
    """One webdataset download of the corpus (3 shards of 5, every kind of failure), shared; never modified."""
    return first_download(server, tmp_path_factory.mktemp("downloaded"))


def reprocess(url_list: str, output: str, input_format: str = "webdataset", **extra) -> Summary:
    """The reprocess of every test here: to 64 px and to parquet."""
    options = {
        "input_format": input_format,
        "output_folder": output,
        "output_format": "parquet",
        "image_size": 64,
        "resize_mode": "keep_ratio",
        "distributor": IN_PROCESS,
        **extra,
    }
    return download(url_list, **options)


def check_shards_line_up(first: Path, second: Path) -> None:
    """Input shard N became output shard N: the rows of each output shard are its input shard's, in its order."""
    shards = sorted(p.name for p in first.glob("*.parquet"))
    assert sorted(p.name for p in second.glob("*.parquet")) == shards
    for name in shards:
        assert json_rows(second / name) and [r["key"] for r in json_rows(second / name)] == [
            r["key"] for r in json_rows(first / name)
        ]


@pytest.mark.parametrize("route", ["local-to-s3", "s3-to-local", "s3-to-s3"])
def test_a_download_reprocessed_on_s3(tmp_path, s3, downloaded, route):  # noqa: F811
    """The local->local case is test_a_download_reprocessed_to_another_size_and_format. S3 input is the first
    download's folder uploaded with s3fs; s3-to-s3 names its shards with a brace pattern."""
    endpoint, fs = s3
    prefix = fresh_prefix(fs, f"reprocess-{route}")
    if route.startswith("s3"):
        for path in downloaded.iterdir():
            fs.put_file(str(path), f"{prefix}/in/{path.name}")
        url_list = f"s3://{prefix}/in" if route == "s3-to-local" else f"s3://{prefix}/in/{{00000..00002}}.tar"
    else:
        url_list = str(downloaded)
    output = f"s3://{prefix}/out" if route.endswith("s3") else str(tmp_path / "out")
    summary = reprocess(url_list, output, storage_options={"endpoint_url": endpoint})
    assert summary.shards_done == 3 and summary.failed_shards == []
    local = fetch(fs, f"{prefix}/out", tmp_path / "copy") if route.endswith("s3") else tmp_path / "out"
    check_reprocessed(downloaded, local, "parquet", 64)
    check_shards_line_up(downloaded, local)
    assert not [p.name for p in local.iterdir() if p.name.startswith("_") and p.name != "_img2dataset_ng_run.json"]
    record = json.loads((local / "_img2dataset_ng_run.json").read_text())  # the input's files, named as locally
    assert [name for name, _ in record["url_list"]["files"]] == ["00000.tar", "00001.tar", "00002.tar"]
    again = reprocess(url_list, output, storage_options={"endpoint_url": endpoint})  # its run record matches
    assert (again.shards_done, again.shards_skipped, again.failed_shards) == (0, 3, [])


def rows_as_147(parquet: Path, failures: dict[str, str], shuffle: random.Random) -> list[dict]:
    """A shard's metadata rows as 1.47 writes them: in the order its downloads finished (shuffled here); the
    rows of `failures` ({key: error_message}) are failed downloads, with nothing measured or stored."""
    rows = pq.read_table(parquet).to_pylist()
    shuffle.shuffle(rows)
    for row in rows:
        if row["key"] in failures:
            row.update(status="failed_to_download", error_message=failures[row["key"]], exif=None, sha256=None)
            row.update(width=None, height=None, original_width=None, original_height=None)
    return rows


def as_img2dataset_147_parquet(reference: Path, target: Path, failures: dict[str, str]) -> None:
    """The reference webdataset download as img2dataset 1.47's parquet output (its writer.py ParquetSampleWriter
    through BufferedParquetWriter): one NNNNN.parquet per shard, the metadata schema with a binary column named
    after encode_format (`jpg`) appended last, null for failures (the `txt` it puts in each sample is not in the
    schema, so not written); rows in completion order; stats without shard_id; no run record, no tar."""
    target.mkdir()
    shuffle = random.Random(1470)
    for parquet in sorted(reference.glob("*.parquet")):
        rows = rows_as_147(parquet, failures, shuffle)
        _, images = tar_samples(reference / f"{parquet.stem}.tar")
        for row in rows:
            row["jpg"] = images[row["key"]]["jpg"] if row["status"] == "success" else None
        schema = pq.read_schema(parquet).remove_metadata().append(pa.field("jpg", pa.binary()))
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), target / parquet.name)
        (target / f"{parquet.stem}_stats.json").write_text(stats_as_147(rows))


def as_img2dataset_147_files(reference: Path, target: Path, failures: dict[str, str]) -> None:
    """The reference webdataset download as img2dataset 1.47's files output (FilesSampleWriter): a folder
    NNNNN/ per shard (made even when empty) holding, per success in completion order, KEY.jpg, KEY.txt (the
    caption) and KEY.json (the row, indent=4); NNNNN.parquet with every row, in the same order; stats without
    shard_id; no run record."""
    target.mkdir()
    shuffle = random.Random(1471)
    for parquet in sorted(reference.glob("*.parquet")):
        rows = rows_as_147(parquet, failures, shuffle)
        _, images = tar_samples(reference / f"{parquet.stem}.tar")
        folder = target / parquet.stem
        folder.mkdir()
        for row in rows:
            if row["status"] == "success":
                (folder / f"{row['key']}.jpg").write_bytes(images[row["key"]]["jpg"])
                (folder / f"{row['key']}.txt").write_text(row["caption"])
                (folder / f"{row['key']}.json").write_text(json.dumps(row, indent=4))
        pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(parquet)), target / parquet.name)
        (target / f"{parquet.stem}_stats.json").write_text(stats_as_147(rows))


AS_147 = {"webdataset": as_img2dataset_147, "parquet": as_img2dataset_147_parquet, "files": as_img2dataset_147_files}


@pytest.mark.parametrize("layout", ["webdataset", "parquet", "files"])
def test_img2dataset_147_output_reprocessed(tmp_path, downloaded, layout):
    """Every row of a 1.47 folder (any layout) is carried in its order, failures with their 1.47 messages."""
    successes = [r["key"] for r in read_metadata(downloaded).to_pylist() if r["status"] == "success"]
    failures = {
        successes[0]: "The read operation timed out",
        successes[-1]: "<urlopen error [Errno 111] Connection refused>",
    }
    old = tmp_path / "made-by-1.47"
    AS_147[layout](downloaded, old, failures)
    keys = read_metadata(old).column("key").to_pylist()
    assert keys != sorted(keys), "1.47's rows are in completion order"

    out = tmp_path / "out"
    summary = reprocess(str(old), str(out), OUTPUT_LAYOUTS[layout])
    assert summary.shards_done == 3 and summary.failed_shards == []
    check_reprocessed(old, out, "parquet", 64)  # keys, captions, extra, statuses, reasons; images at 64 px
    check_shards_line_up(old, out)
    rows = read_metadata(out).to_pylist()
    assert {r["key"]: r["error_message"] for r in rows if r["key"] in failures} == failures
    assert all(r["jpg"] is None for r in rows if r["status"] != "success")
    expected: dict[str, int] = {}
    for stats in read_stats(old).values():
        for reason, count in stats["status_dict"].items():
            expected[reason] = expected.get(reason, 0) + count
    assert summary.status_dict == expected


SLOW_SHARDS, SLOW_PER_SHARD = 12, 4


def slow_input(folder: Path) -> Path:
    """A webdataset of SLOW_SHARDS shards as a download leaves them: per shard 3 large PNGs (decoding them is the
    slow part: ~0.1 s a shard on one thread) and a failed row; tar members KEY.png, KEY.json, KEY.txt, and the
    metadata parquet beside."""
    folder.mkdir()
    for shard in range(SLOW_SHARDS):
        rows = []
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in range(SLOW_PER_SHARD):
                key, ok = f"{shard:05d}{i}", i != 2
                row = {"caption": f"slow {shard}-{i}", "url": f"http://example.com/{key}.png", "key": key}
                row.update(status="success" if ok else "failed_to_download", error_message=None if ok else "timed out")
                rows.append(row)
                if ok:
                    image = make_image(1200, 900, "png", seed=i % 2)
                    for extension, data in (
                        ("png", image),
                        ("json", json.dumps(row).encode()),
                        ("txt", row["caption"].encode()),
                    ):
                        info = tarfile.TarInfo(f"{key}.{extension}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    return folder


def test_a_reprocess_killed_with_sigkill_then_run_again_gives_the_uninterrupted_output(tmp_path):
    """The command line (a child process running download()) killed with SIGKILL once a shard is done; the same
    command again skips the done shards and makes the rest: the output is the uninterrupted reprocess's."""
    source = slow_input(tmp_path / "input")
    flags = {"input_format": "webdataset", "output_format": "webdataset", "image_size": 64, "resize_mode": "keep_ratio"}
    flags.update(thread_count=1, processes_count=1)
    reference = tmp_path / "reference"
    download(str(source), output_folder=str(reference), **{**flags, "distributor": IN_PROCESS})

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "img2dataset_ng", str(source), "--output_folder", str(killed)]
    command += [f"--{name}={value}" for name, value in flags.items()]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(killed.glob("*_stats.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done_when_killed = len(list(killed.glob("*_stats.json")))
    assert 1 <= done_when_killed < SLOW_SHARDS, "the kill did not land halfway"
    done = {p.name: p.read_bytes() for p in killed.glob("*_stats.json")}

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert all((killed / name).read_bytes() == stats for name, stats in done.items()), "done shards were redone"
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in reference.iterdir())
    ours, theirs = read_metadata(killed), read_metadata(reference)
    assert ours.schema == theirs.schema and ours.equals(theirs) and ours.num_rows == SLOW_SHARDS * SLOW_PER_SHARD
    assert ours.column("key").to_pylist() == read_metadata(source).column("key").to_pylist()
    for tar in sorted(reference.glob("*.tar")):
        assert tar_samples(killed / tar.name) == tar_samples(tar)  # members, their order, every byte
        assert (killed / tar.name).read_bytes() == tar.read_bytes()
    images = stored_images(killed, "webdataset")
    assert len(images) == SLOW_SHARDS * 3 and all(image_size(s["image"]) == (85, 64) for s in images.values())
    counts = ("count", "successes", "failed_to_download", "status_dict")
    assert {n: {c: s[c] for c in counts} for n, s in read_stats(killed).items()} == {
        n: {c: s[c] for c in counts} for n, s in read_stats(reference).items()
    }


def test_stages_over_existing_shards_hash_the_stored_images(downloaded, tmp_path):
    """compute_phash over a finished dataset, its images kept as stored: the hash of each stored image,
    as imagehash computes it from the file."""
    imagehash = pytest.importorskip("imagehash")
    from PIL import Image

    out = tmp_path / "hashed"
    download(
        str(downloaded),
        input_format="webdataset",
        output_folder=str(out),
        output_format="webdataset",
        resize_mode="no",
        skip_reencode=True,
        compute_phash=True,
        processes_count=1,
    )
    rows = {r["key"]: r for r in read_metadata(out).to_pylist()}
    stored = stored_images(out, "webdataset")
    assert stored and sorted(stored) == sorted(k for k, r in rows.items() if r["status"] == "success")
    before = stored_images(downloaded, "webdataset")
    for key, sample in stored.items():
        assert sample["image"] == before[key]["image"]  # kept as stored
        expected = str(imagehash.phash(Image.open(io.BytesIO(sample["image"]))))
        assert rows[key]["phash"] == expected
    assert all(r["phash"] is None for r in rows.values() if r["status"] != "success")
