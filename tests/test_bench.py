"""The benchmark scripts still run against the package (on tiny inputs; timing is not tested)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_reader_benchmark_runs_on_our_side(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH / "reader_rss.py"),
            "--rows",
            "30000",
            "--parquet",
            str(tmp_path / "u.parquet"),
            "--per-shard",
            "10000",
            "--skip-theirs",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| 30,000 | ours (img2dataset-ng) | 3 | 30,000 |" in result.stdout  # rows, tool, shards, rows in shards
