"""The wids shard index of webdataset output, `wids-index.json`: what webdataset's `wids.ShardListDataset`
reads, true after every kind of run (a first one with a lost shard, incremental, retry_failed, extend,
overwrite), on local disk and on S3, also over a folder made by img2dataset 1.47; none for other formats.

Real downloads from tests/server.py, read back with the real wids (which imports PyTorch without declaring
it: the tests that read with it are skipped without both). A row that fails now but not when retried answers
503 to its first request only, each on a virtual host of its own (`resolve`): the fetch stage holds a host
back after a 503. Shards run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from img2dataset_ng import download
from img2dataset_ng.index import INDEX_FILE
from tests.outputs import read_metadata, tar_samples, write_url_list
from tests.test_retry import as_img2dataset_147
from tests.test_storage import fetch, fresh_prefix, s3  # noqa: F401 - s3: the S3 server fixture

PER_SHARD = 4
IN_PROCESS = "tests.outputs:InProcessDistributor"
LOSING = "tests.test_wids_index:LosingShards"


class LosingShards:
    """A distributor that runs the shards in this process, but for those in `lost`, which fail as a whole
    without running (as when a worker dies)."""

    reports_progress = True
    lost: frozenset[int] = frozenset()

    def __init__(self, config) -> None:
        self.config = config

    def map(self, fn, shards, on_progress=None):
        for shard in shards:
            if shard.shard_id in LosingShards.lost:
                yield shard, RuntimeError(f"shard {shard.shard_id} lost")
                continue
            try:
                outcome = fn(shard, on_progress or (lambda *_: None))
            except Exception as error:  # noqa: BLE001 - the shard's failure, for run_shards
                outcome = error
            yield shard, outcome

    def close(self) -> None:
        pass


def url_list(tmp_path: Path, server, tag: str, n: int) -> tuple[Path, list[str]]:
    """n rows: one in four fails now and succeeds when retried (a 503 once, on a host of its own), a few are
    404s for good, the others images. Returns the list and the hosts to resolve."""
    rows, hosts = [], []
    for i in range(n):
        if i % 4 == 1:
            host = f"{tag}-{i}.test"
            hosts.append(host)
            url = server.host_url(host, f"/once/503/{tag}-{i}/img/40x30.jpg?seed={i}")
        elif i % 6 == 3:
            url = server.url("/status/404")
        else:
            url = server.url(f"/img/40x30.jpg?seed={i}")
        rows.append({"url": url, "caption": f"caption {i}"})
    return write_url_list(rows, tmp_path / f"urls-{tag}.parquet", "parquet"), hosts


def options(server, output: str | Path, hosts: list[str], **extra) -> dict:
    return {
        "input_format": "parquet",
        "caption_col": "caption",
        "output_folder": str(output),
        "output_format": "webdataset",
        "number_sample_per_shard": PER_SHARD,
        "thread_count": 4,
        "image_size": 32,
        "resolve": server.resolve(*hosts) if hosts else None,
        "distributor": IN_PROCESS,
        **extra,
    }


def expected_index(shards: list[tuple[str, int, int]]) -> dict:
    """The descriptor of (tar name, samples, bytes) in this order, as `widsindex create` writes it, less the md5."""
    return {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "shardlist": [{"url": url, "nsamples": n, "filesize": size} for url, n, size in shards],
    }


def done_shards(folder: Path) -> list[tuple[str, int, int]]:
    """(tar name, samples in it, bytes) of each shard with a stats file, in shard order; the samples counted
    in the tar itself, and checked against the stats file's successes."""
    shards = []
    for stats in sorted(folder.glob("*_stats.json"), key=lambda p: int(p.name.split("_")[0])):
        tar = folder / stats.name.replace("_stats.json", ".tar")
        samples = tar_samples(tar)[1]
        assert len(samples) == json.loads(stats.read_text())["successes"]
        shards.append((tar.name, len(samples), tar.stat().st_size))
    return shards


def read_with_wids(descriptor: Path, cache: Path | None = None) -> list[dict[str, bytes | str]]:
    """Every sample, by index, through `wids.ShardListDataset(descriptor)`: the members' raw bytes by
    extension (no decoding), and `__key__`. wids copies each shard into `cache` first; without one, it
    reads the tars where they are."""
    wids = pytest.importorskip("wids")
    where = {"cache_dir": str(cache)} if cache is not None else {"localname": str}
    dataset = wids.ShardListDataset(str(descriptor), transformations=[], **where)
    try:
        samples = []
        for i in range(len(dataset)):
            sample = dataset[i]
            members = {name[1:]: value.read() for name, value in sample.items() if not name.startswith("__")}
            samples.append({**members, "__key__": sample["__key__"]})
        return samples
    finally:
        dataset.close()


def check_index(folder: Path) -> dict:
    """The folder's index lists its done shards with their true counts. Returns the index."""
    index = json.loads((folder / INDEX_FILE).read_text())
    assert index == expected_index(done_shards(folder))
    return index


def check_wids(folder: Path, cache: Path) -> dict:
    """The folder's index is true, and wids reads through it every sample of every tar, in shard order, with
    the tar's bytes. Returns the index."""
    index = check_index(folder)
    in_tars = [
        {**members, "__key__": key}
        for shard in index["shardlist"]
        for key, members in tar_samples(folder / shard["url"])[1].items()
    ]
    assert read_with_wids(folder / INDEX_FILE, cache) == in_tars
    return index


def counts(index: dict) -> dict[str, int]:
    return {shard["url"]: shard["nsamples"] for shard in index["shardlist"]}


# --- 1. one download, read back with wids -------------------------------------------------------------


def test_wids_reads_every_success_through_the_index(tmp_path, server, monkeypatch):
    tag = f"read-{time.monotonic_ns()}"
    urls, hosts = url_list(tmp_path, server, tag, 10)
    out = tmp_path / "out"
    summary = download(str(urls), **options(server, out, hosts))
    assert summary.failed_shards == [] and 0 < summary.successes < summary.count

    index = check_wids(out, tmp_path / "cache")
    assert [shard["url"] for shard in index["shardlist"]] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = read_with_wids(out / INDEX_FILE, tmp_path / "cache")
    assert len(samples) == summary.successes
    metadata = read_metadata(out).to_pylist()
    successes = [row for row in metadata if row["status"] == "success"]
    assert [sample["__key__"] for sample in samples] == [row["key"] for row in successes]
    for sample, row in zip(samples, successes):
        assert sample["txt"].decode() == row["caption"]
        assert json.loads(sample["json"])["url"] == row["url"]
        assert sample["jpg"][:2] == b"\xff\xd8"

    # the urls are relative to the index: the folder moves, and is read from anywhere
    moved = tmp_path / "elsewhere" / "dataset"
    moved.parent.mkdir()
    shutil.move(out, moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert read_with_wids(moved / INDEX_FILE) == samples  # the tars read in place
    assert not [name for name in os.listdir(moved) if name.startswith("_partial_")]

    # a run with nothing to do leaves the index as it was, untouched
    written = (moved / INDEX_FILE).stat().st_mtime_ns
    again = download(str(urls), **options(server, moved, hosts))
    assert (again.shards_done, again.shards_skipped) == (0, 3)
    assert (moved / INDEX_FILE).stat().st_mtime_ns == written


# --- 2. later runs into the same folder ----------------------------------------------------------------


def test_the_index_follows_incremental_retry_and_extend_runs(tmp_path, server, monkeypatch):
    tag = f"runs-{time.monotonic_ns()}"
    urls, hosts = url_list(tmp_path, server, tag, 12)  # 3 shards, each with one row that fails only once
    out = tmp_path / "out"

    monkeypatch.setattr(LosingShards, "lost", frozenset({1}))
    first = download(str(urls), **options(server, out, hosts, distributor=LOSING, max_shard_retry=0))
    assert first.failed_shards == [1]
    index = check_wids(out, tmp_path / "cache-1")
    assert list(counts(index)) == ["00000.tar", "00002.tar"]  # only the done shards

    second = download(str(urls), **options(server, out, hosts))  # incremental: the lost shard now
    assert (second.shards_done, second.shards_skipped) == (1, 2)
    index = check_wids(out, tmp_path / "cache-2")
    before = counts(index)
    assert list(before) == ["00000.tar", "00001.tar", "00002.tar"]

    third = download(str(urls), **options(server, out, hosts, incremental_mode="retry_failed"))
    assert third.shards_done == 3 and third.status_dict.get("HTTP Error 503: Service Unavailable") is None
    index = check_wids(out, tmp_path / "cache-3")
    assert counts(index) == {url: n + 1 for url, n in before.items()}  # each shard's retried row is in it now

    more, more_hosts = url_list(tmp_path, server, tag + "-more", 6)
    fourth = download(str(more), **options(server, out, more_hosts, incremental_mode="extend"))
    assert fourth.shards_done == 2
    index = check_wids(out, tmp_path / "cache-4")
    assert list(counts(index)) == [f"{s:05d}.tar" for s in range(5)]
    assert {url: n for url, n in counts(index).items() if url in before} == {url: n + 1 for url, n in before.items()}


def test_a_retry_over_a_folder_of_img2dataset_147_indexes_its_shards_and_the_rewritten_ones(tmp_path, server):
    rows = [{"url": server.url(f"/img/40x30.jpg?seed={i}"), "caption": f"caption {i}"} for i in range(12)]
    urls = write_url_list(rows, tmp_path / "urls.parquet", "parquet")
    reference = tmp_path / "reference"
    download(str(urls), **options(server, reference, []))
    keys = read_metadata(reference).column("key").to_pylist()
    failures = {
        keys[1]: "HTTP Error 503: Service Unavailable",
        keys[6]: "<urlopen error [Errno 111] Connection refused>",
    }
    old = tmp_path / "made-by-1.47"
    as_img2dataset_147(reference, old, failures)  # shards 0 and 1 with a failure each, shard 2 without
    assert not (old / INDEX_FILE).exists()
    assert "shard_id" not in json.loads((old / "00002_stats.json").read_text())

    summary = download(str(urls), **options(server, old, [], incremental_mode="retry_failed"))
    assert (summary.shards_done, summary.shards_skipped) == (2, 1)
    assert "shard_id" not in json.loads((old / "00002_stats.json").read_text())  # still 1.47's: counted all the same
    index = check_wids(old, tmp_path / "cache")
    assert counts(index) == {"00000.tar": 4, "00001.tar": 4, "00002.tar": 4}


# --- 3. on S3 ----------------------------------------------------------------------------------------


def test_on_s3_the_index_is_written_next_to_the_shards_with_relative_urls(tmp_path, server, s3):  # noqa: F811
    endpoint, fs = s3
    tag = f"s3-{time.monotonic_ns()}"
    urls, hosts = url_list(tmp_path, server, tag, 8)
    prefix = f"{fresh_prefix(fs, 'wids')}/out"
    flags = options(server, f"s3://{prefix}", hosts, storage_options={"endpoint_url": endpoint})

    def index_on_s3() -> dict:
        fs.invalidate_cache()
        names = [path.rsplit("/", 1)[-1] for path in fs.ls(prefix)]
        assert INDEX_FILE in names and not [name for name in names if name.startswith(("_partial_", "_retry_"))]
        shards = []
        for stats in sorted(name for name in names if name.endswith("_stats.json")):
            tar = stats.replace("_stats.json", ".tar")
            successes = json.loads(fs.cat_file(f"{prefix}/{stats}"))["successes"]
            shards.append((tar, successes, fs.size(f"{prefix}/{tar}")))
        index = json.loads(fs.cat_file(f"{prefix}/{INDEX_FILE}"))
        assert index == expected_index(shards)
        return index

    summary = download(str(urls), **flags)
    assert summary.failed_shards == [] and summary.successes < summary.count
    before = counts(index_on_s3())
    assert list(before) == ["00000.tar", "00001.tar"]

    retried = download(str(urls), **{**flags, "incremental_mode": "retry_failed"})
    assert retried.shards_done == 2
    index = index_on_s3()
    assert counts(index) == {url: n + 1 for url, n in before.items()}

    # a copy of the folder, index included, is an index of the copy as it is
    local = fetch(fs, prefix, tmp_path / "copy")
    assert check_index(local) == index


# --- 4. other formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["parquet", "files"])
def test_no_index_for_other_formats(tmp_path, server, output_format):
    urls, hosts = url_list(tmp_path, server, f"other-{time.monotonic_ns()}", 3)
    out = tmp_path / "out"
    summary = download(str(urls), **options(server, out, hosts, output_format=output_format))
    assert summary.successes == 2 and (out / "00000_stats.json").exists()
    assert not (out / INDEX_FILE).exists()


def test_an_overwrite_into_another_format_takes_the_index_with_its_shards(tmp_path, server):
    urls, hosts = url_list(tmp_path, server, f"overwrite-{time.monotonic_ns()}", 3)
    out = tmp_path / "out"
    download(str(urls), **options(server, out, hosts))
    assert counts(json.loads((out / INDEX_FILE).read_text())) == {"00000.tar": 2}

    download(str(urls), **options(server, out, hosts, output_format="parquet", incremental_mode="overwrite"))
    assert not (out / INDEX_FILE).exists() and not list(out.glob("*.tar"))
