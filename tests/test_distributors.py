"""Distributors: the multiprocessing backend and the shared retry loop with real processes; then
multiprocessing, pyspark and ray giving the same output, on real engines and real clusters.

pyspark runs in local mode and against a standalone master + worker started here on 127.0.0.1;
ray runs as a local instance and against a head node started here with `ray start --head`.
Workers are killed mid-shard to show that every shard still ends complete, without duplicates.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from img2dataset_ng import ConfigError, download, register_distributor
from img2dataset_ng.distributors import run_shards
from img2dataset_ng.distributors.local import MultiprocessingDistributor
from tests.clusters import processes
from tests.outputs import InProcessDistributor, read_metadata, tar_samples, write_url_list

pyspark = pytest.importorskip("pyspark")
ray = pytest.importorskip("ray")
from pyspark.sql import SparkSession  # noqa: E402


@dataclass(frozen=True)
class FlakyWork:
    """Fails (or kills its own process) the first time it sees an even shard."""

    marker_dir: str
    die: bool = False

    def __call__(self, shard: int, report) -> int:
        report(shard, 0)
        marker = Path(self.marker_dir) / str(shard)
        if shard % 2 == 0 and not marker.exists():
            marker.touch()
            if self.die:
                os._exit(13)  # the process vanishes mid-shard, like an OOM kill
            raise RuntimeError(f"shard {shard} failed")
        return shard * 10


@pytest.mark.parametrize("die", [False, True])
def test_failed_shards_are_retried(tmp_path, die):
    results: list[int] = []
    progress: list[tuple[int, int]] = []
    distributor = MultiprocessingDistributor(2)
    try:
        failed = run_shards(
            distributor, FlakyWork(str(tmp_path), die), range(6), 1, results.append, lambda *p: progress.append(p)
        )
    finally:
        distributor.close()
    assert failed == []
    assert sorted(results) == [0, 10, 20, 30, 40, 50]
    # running shards report progress to the driver: every shard once, the failed ones once more
    assert sorted(progress) == sorted([(s, 0) for s in range(6)] + [(s, 0) for s in (0, 2, 4)])


def test_without_retry_rounds_failures_are_reported(tmp_path):
    results: list[int] = []
    distributor = MultiprocessingDistributor(2)
    try:
        failed = run_shards(distributor, FlakyWork(str(tmp_path)), range(6), 0, results.append)
    finally:
        distributor.close()
    assert sorted(failed) == [0, 2, 4] and sorted(results) == [10, 30, 50]


@dataclass(frozen=True)
class IdleWork:
    """Shard 0 says it is idle and waits for shard 1 to have run beside it; each writes when it ran."""

    marker_dir: str

    def __call__(self, shard: int, report) -> tuple[int, float, float]:
        start = time.monotonic()
        if shard == 0:
            report.idle()
            deadline = start + 30
            while not (Path(self.marker_dir) / "1").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            time.sleep(0.5)
        (Path(self.marker_dir) / str(shard)).touch()
        return os.getpid(), start, time.monotonic()


def test_a_process_runs_the_next_shard_beside_one_that_is_idle_and_only_one_at_work(tmp_path):
    results: list[tuple[int, float, float]] = []
    distributor = MultiprocessingDistributor(1)
    try:
        assert run_shards(distributor, IdleWork(str(tmp_path)), range(3), 0, results.append) == []
    finally:
        distributor.close()
    (pid0, start0, end0), (pid1, start1, end1), (pid2, start2, _) = sorted(results, key=lambda r: r[1])
    assert pid0 == pid1 == pid2  # one process
    assert start1 < end0 and end1 <= end0  # shard 1 ran while shard 0 was idle
    assert start2 >= end1  # shard 2 waited for shard 1, which was at work (shard 0 idle beside it)


def test_progress_bar_shows_shards_samples_rate_and_success(tmp_path, server, capsys):
    url_list = write_url_list(
        [{"url": server.url("/img/40x30.jpg")}, {"url": server.url("/status/404")}] * 3, tmp_path / "u.csv", "csv"
    )
    summary = download(
        str(url_list),
        input_format="csv",
        output_folder=str(tmp_path / "out"),
        number_sample_per_shard=2,
        thread_count=2,
        progress=True,
    )
    err = capsys.readouterr().err
    # the bar's last frame (the test server, in this process, may print a client's disconnect too)
    final = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("downloading")][-1]
    assert "100%" in final and "6/6" in final and "samples/s" in final and "shards=3/3" in final
    assert "success=50.0%" in final
    assert summary.line().startswith("3 shard(s) done: 6 samples, 3 successes (50.0%), 3 failed to download")
    assert read_metadata(tmp_path / "out").num_rows == 6


def url_list(tmp_path: Path, server, n: int = 22, delay: float = 0.0) -> Path:
    rows = []
    for i in range(n):
        path = "/status/404" if i % 5 == 2 else "/html" if i % 7 == 3 else f"/img/{40 + i}x30.jpg"
        rows.append({"url": server.url(f"/slow/{delay}{path}" if delay else path), "caption": f"caption {i}"})
    return write_url_list(rows, tmp_path / "urls.parquet", "parquet")


def run(urls: Path, output: Path, distributor: str, output_format: str = "webdataset", **extra):
    return download(
        str(urls),
        input_format="parquet",
        caption_col="caption",
        output_folder=str(output),
        output_format=output_format,
        number_sample_per_shard=4,
        thread_count=2,
        processes_count=2,
        distributor=distributor,
        **extra,
    )


def outcome(output: Path, output_format: str = "webdataset") -> dict:
    """Everything that must not depend on the distributor: files, rows, and stored bytes."""
    table = read_metadata(output)
    columns = ["key", "url", "caption", "status", "error_message", "width", "height", "sha256"]
    if output_format == "parquet":
        columns.append("jpg")
    columns_values = [table.column(c).to_pylist() for c in columns]
    columns_values[1] = [url.replace("/slow/0.3/", "/") for url in columns_values[1]]  # same image, served slowly
    rows = sorted(zip(*columns_values))
    tars = {p.name: sorted((k, sorted(m.items())) for k, m in tar_samples(p)[1].items()) for p in output.glob("*.tar")}
    for members in tars.values():  # the json member holds the same metadata as the parquet row, exif included
        for _, sample in members:
            sample[:] = [(ext, data) for ext, data in sample if ext != "json"]
    return {"files": sorted(p.name for p in output.iterdir()), "rows": rows, "tars": tars}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, server) -> Iterator[dict]:
    """The multiprocessing output of the contract list, for both formats."""
    tmp = tmp_path_factory.mktemp("reference")
    urls = url_list(tmp, server)
    outcomes = {}
    for fmt in ("webdataset", "parquet"):
        run(urls, tmp / fmt, "multiprocessing", fmt)
        outcomes[fmt] = outcome(tmp / fmt, fmt)
    reprocess(tmp / "webdataset", tmp / "reprocessed", "multiprocessing")
    outcomes["reprocessed"] = outcome(tmp / "reprocessed", "parquet")
    yield outcomes


def reprocess(shards: Path, output: Path, distributor: str):
    """The webdataset output `shards` as input, resized again, to parquet."""
    return download(
        str(shards),
        input_format="webdataset",
        output_folder=str(output),
        output_format="parquet",
        image_size=24,
        thread_count=2,
        processes_count=2,
        distributor=distributor,
    )


def kill_first(pattern: str, after: Path, seconds: float = 120) -> threading.Thread:
    """In the background: once a shard is done in `after`, SIGKILL the first process of this test session
    whose command line holds `pattern`; the thread's `killed` attribute records the pid."""

    def work() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if list(after.glob("*_stats.json")):
                for pid, command in processes(ours=True):
                    if pattern in command and pid != os.getpid():
                        os.kill(pid, signal.SIGKILL)
                        thread.killed = pid
                        return
            time.sleep(0.05)

    thread = threading.Thread(target=work, daemon=True)
    thread.killed = None
    thread.start()
    return thread


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
@pytest.mark.parametrize("distributor", ["multiprocessing", "pyspark", "ray"])
def test_same_output_from_every_distributor(tmp_path, server, reference, distributor, output_format):
    summary = run(url_list(tmp_path, server), tmp_path / "out", distributor, output_format)
    assert summary.shards_done == 6 and summary.count == 22
    assert outcome(tmp_path / "out", output_format) == reference[output_format]
    if output_format == "webdataset":  # existing shards as input, on the same distributor
        summary = reprocess(tmp_path / "out", tmp_path / "again", distributor)
        assert summary.shards_done == 6 and summary.count == 22
        assert outcome(tmp_path / "again", "parquet") == reference["reprocessed"]
    if distributor == "pyspark":
        assert SparkSession.getActiveSession() is None  # the local session it started is stopped
    if distributor == "ray":
        assert not ray.is_initialized()  # the local instance it started is shut down


def test_pyspark_on_a_standalone_cluster_survives_a_killed_executor(tmp_path, server, reference, spark_standalone):
    urls = url_list(tmp_path, server, delay=0.3)
    spark = (
        SparkSession.builder.master(spark_standalone)
        .appName("img2dataset-ng-test")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.executor.memory", "1g")
        .config("spark.task.maxFailures", "4")
        .getOrCreate()
    )
    try:
        killer = kill_first("CoarseGrainedExecutorBackend", tmp_path / "out")
        summary = run(urls, tmp_path / "out", "pyspark")
        killer.join(1)
        assert killer.killed is not None, "no executor was killed"
        assert SparkSession.getActiveSession() is spark  # the user's session is used, and left running
    finally:
        spark.stop()
    assert summary.failed_shards == [] and summary.shards_done == 6
    assert outcome(tmp_path / "out") == reference["webdataset"]


def test_ray_on_a_head_node_survives_a_killed_worker(tmp_path, server, reference, ray_head, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    urls = url_list(tmp_path, server, delay=0.3)
    killer = kill_first("ray::_run_shard", tmp_path / "out")
    summary = run(urls, tmp_path / "out", "ray")
    killer.join(1)
    assert killer.killed is not None, "no ray worker was killed"
    assert not ray.is_initialized()
    assert summary.failed_shards == [] and summary.shards_done == 6
    assert outcome(tmp_path / "out") == reference["webdataset"]


def test_spark_speculation_is_refused(tmp_path, server):
    spark = (
        SparkSession.builder.master("local[1]")
        .config("spark.speculation", "true")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        with pytest.raises(ConfigError, match="spark.speculation"):
            run(url_list(tmp_path, server, n=2), tmp_path / "out", "pyspark")
    finally:
        spark.stop()


def test_a_third_party_distributor_can_be_registered(tmp_path, server, reference):
    register_distributor("in-process", InProcessDistributor)
    InProcessDistributor.seen.clear()
    run(url_list(tmp_path, server), tmp_path / "out", "in-process")
    assert sorted(InProcessDistributor.seen) == list(range(6))
    assert outcome(tmp_path / "out") == reference["webdataset"]


def test_missing_engine_fails_at_once_with_an_install_hint(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the ray package: pip install 'img2dataset-ng\[ray\]'"):
        download(str(tmp_path / "u.txt"), distributor="ray", output_folder=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
