"""The pex file: built from the wheelhouse (offline), it runs examples/pyspark_example.py as the
driver and as the Python of every Spark executor, on a standalone cluster on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.outputs import read_metadata, tar_samples, write_url_list

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / "wheelhouse"
# Spark options that examples/pyspark_example.py leaves unset, given to the driver it starts (pyspark reads
# PYSPARK_SUBMIT_ARGS) and through it to the executors the worker starts for this run: the JIT compiles
# with C1 only (a JVM that lives for seconds spends more CPU in C2 compiles than they give back: the
# JVMs of this run take about half the CPU time), and no web UI. The run: ~27 s -> ~20 s.
FAST_JVM = "-XX:TieredStopAtLevel=1"
SUBMIT_ARGS = (
    f"--driver-java-options={FAST_JVM} --conf spark.executor.extraJavaOptions={FAST_JVM} "
    "--conf spark.ui.enabled=false pyspark-shell"
)


def build_pex(tmp: Path, env: dict[str, str]) -> Path:
    if not (WHEELHOUSE / ".stamp").exists():
        pytest.fail(
            "wheelhouse/ is missing: `make install` fetches the wheels of pex/requirements.txt from the package "
            "registry, which this test cannot reach (it runs without network). Run `make install` first."
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "self"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    pex = tmp / "img2dataset.pex"
    build = subprocess.run(
        [
            str(Path(sys.executable).parent / "pex"),
            "img2dataset-ng",
            "-r",
            str(REPO / "pex" / "requirements.txt"),
            "--no-pypi",
            "--find-links",
            str(WHEELHOUSE),
            "--find-links",
            str(tmp / "self"),
            "--python-shebang",
            "/usr/bin/env python3",
            # `make pex` deflates the zip entries; storing them instead builds the same zipapp (same
            # files, same pre-installed wheels, same boot) in ~15 s instead of ~50 s: deflating ~900 MB
            # was most of the build. The file is bigger (~930 MB instead of ~610 MB), and is deleted.
            "--no-compress",
            "-o",
            str(pex),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if build.returncode != 0:
        hint = (
            " (a wheel is missing from wheelhouse/: rerun `make install` with the registry reachable)"
            if ("No matching distribution" in build.stderr or "Could not find" in build.stderr)
            else ""
        )
        pytest.fail(f"pex build failed{hint}:\n{build.stderr[-3000:]}")
    return pex


def test_pex_runs_the_pyspark_example_on_a_standalone_cluster(tmp_path, server, spark_standalone):
    env = {**os.environ, "PEX_ROOT": str(tmp_path / "pex_root")}  # unpack here, not in the job's folder
    try:
        pex = build_pex(tmp_path, env)
        rows = [{"url": server.url(f"/img/{60 + i}x40.jpg")} for i in range(11)] + [{"url": server.url("/status/404")}]
        url_list = write_url_list(rows, tmp_path / "urls.csv", "csv")
        output = tmp_path / "dataset"
        run = subprocess.run(
            [str(pex), str(REPO / "examples" / "pyspark_example.py"), str(url_list), str(output)],
            env={
                **env,
                "PYSPARK_PYTHON": str(pex),
                "SPARK_MASTER": spark_standalone,
                "SPARK_DRIVER_HOST": "127.0.0.1",
                "SPARK_EXECUTOR_MEMORY": "1g",
                "NUMBER_SAMPLE_PER_SHARD": "5",
                "PYTHONPATH": "",
                "PYSPARK_SUBMIT_ARGS": SUBMIT_ARGS,
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "3 shard(s) done: 12 samples, 11 successes" in run.stdout
        table = read_metadata(output)
        assert sorted(table.column("url").to_pylist()) == sorted(r["url"] for r in rows)
        assert table.column("status").to_pylist().count("success") == 11
        members = [name for tar in sorted(output.glob("*.tar")) for name in tar_samples(tar)[0]]
        assert len(members) == 2 * 11
    finally:
        shutil.rmtree(tmp_path / "pex_root", ignore_errors=True)
        (tmp_path / "img2dataset.pex").unlink(missing_ok=True)
