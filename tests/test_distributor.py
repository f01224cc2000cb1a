"""The multiprocessing distributor and the shared retry loop, with real processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from img2dataset_ng import download
from img2dataset_ng.distributor import MultiprocessingDistributor, run_shards
from tests.outputs import read_metadata, write_url_list


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
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "6 samples" in final and "samples/s" in final and "shards=3" in final and "success=50.0%" in final
    assert summary.line().startswith("3 shard(s) done: 6 samples, 3 successes (50.0%), 3 failed to download")
    assert read_metadata(tmp_path / "out").num_rows == 6
