"""incremental / overwrite / extend, and a run killed with SIGKILL then started again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from img2dataset_ng import download
from tests.outputs import read_metadata, tar_samples, write_url_list


def url_list(tmp_path: Path, server, n: int, delay: float = 0.0, name: str = "urls.parquet") -> Path:
    rows = []
    for i in range(n):
        path = "/status/404" if i % 7 == 3 else f"/img/64x48.jpg?seed={i}"
        rows.append({"url": server.url(f"/slow/{delay}{path}" if delay else path), "caption": f"c{i}"})
    return write_url_list(rows, tmp_path / name, "parquet")


def options(output: Path, **extra) -> dict:
    return {
        "input_format": "parquet",
        "caption_col": "caption",
        "output_folder": str(output),
        "output_format": "webdataset",
        "number_sample_per_shard": 4,
        "thread_count": 2,
        **extra,
    }


def outcome(output: Path) -> dict:
    """What a finished run left: file names, (key, status, error) rows, and tar members per shard."""
    table = read_metadata(output)
    rows = sorted(zip(*(table.column(c).to_pylist() for c in ("key", "status", "error_message"))))
    tars = {p.name: sorted(tar_samples(p)[0]) for p in output.glob("*.tar")}
    return {"files": sorted(p.name for p in output.iterdir()), "rows": rows, "tars": tars}


def test_incremental_skips_done_shards_and_redoes_unfinished_ones(tmp_path, server):
    urls = url_list(tmp_path, server, 10)
    out = tmp_path / "out"
    first = download(str(urls), **options(out))
    assert (first.shards_done, first.count) == (3, 10)
    reference = outcome(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = download(str(urls), **options(out))
    assert (again.shards_done, again.shards_skipped, again.count) == (0, 3, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # a shard without stats file is not done: its leftovers are replaced
    (out / "00001_stats.json").unlink()
    (out / "00001.tar").write_bytes(b"half a tar")
    redo = download(str(urls), **options(out))
    assert (redo.shards_done, redo.shards_skipped) == (1, 2)
    assert outcome(out) == reference


def test_overwrite_removes_every_shard_and_keeps_what_is_not_ours(tmp_path, server):
    urls = url_list(tmp_path, server, 6)
    out = tmp_path / "out"
    download(str(urls), **options(out))
    (out / "notes.txt").write_text("left by someone")
    (out / "00042_stats.json").write_text("{}")
    (out / "00043.tar").write_bytes(b"a shard of an older run")
    summary = download(str(urls), **options(out, incremental_mode="overwrite"))
    assert summary.shards_done == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "00001.parquet",
        "00001.tar",
        "00001_stats.json",
        "_img2dataset_ng_run.json",
        "notes.txt",
        "wids-index.json",
    ]
    assert (out / "notes.txt").read_text() == "left by someone"


def test_extend_appends_after_the_highest_shard(tmp_path, server):
    out = tmp_path / "out"
    download(str(url_list(tmp_path, server, 6)), **options(out))
    summary = download(
        str(url_list(tmp_path, server, 5, name="more.parquet")), **options(out, incremental_mode="extend")
    )
    assert summary.shards_done == 2
    keys = read_metadata(out).column("key").to_pylist()
    assert sorted(k[:5] for k in keys) == ["00000"] * 4 + ["00001"] * 2 + ["00002"] * 4 + ["00003"]
    assert (out / "00003_stats.json").exists()


def cli(urls: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "img2dataset_ng",
        str(urls),
        "--input_format",
        "parquet",
        "--caption_col",
        "caption",
        "--output_folder",
        str(output),
        "--output_format",
        "webdataset",
        "--number_sample_per_shard",
        "4",
        "--thread_count",
        "2",
        "--processes_count",
        "2",
    ]


def test_sigkill_halfway_then_same_command_gives_the_uninterrupted_output(tmp_path, server):
    urls = url_list(tmp_path, server, 48, delay=0.25)  # 12 shards of 4, ~0.5 s each per process
    reference = tmp_path / "reference"
    subprocess.run(cli(urls, reference), check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        cli(urls, killed), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while len(list(killed.glob("*_stats.json"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    done_when_killed = len(list(killed.glob("*_stats.json")))
    assert 4 <= done_when_killed < 12, "the kill did not land halfway"

    subprocess.run(cli(urls, killed), check=True, capture_output=True, timeout=300)
    assert outcome(killed) == outcome(reference)
    assert len(outcome(reference)["rows"]) == 48


def test_ctrl_c_prints_one_line_exits_130_and_the_same_command_finishes(tmp_path, server):
    """SIGINT to the CLI's process group, as Ctrl-C in a terminal sends it."""
    urls = url_list(tmp_path, server, 48, delay=0.25)
    reference = tmp_path / "reference"
    subprocess.run(cli(urls, reference), check=True, capture_output=True, timeout=300)

    stopped = tmp_path / "stopped"
    process = subprocess.Popen(
        cli(urls, stopped), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while len(list(stopped.glob("*_stats.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("img2dataset-ng: interrupted: ") and "run the same command again to finish" in last
    assert [line for line in err.splitlines() if "interrupted" in line] == [last]
    done = len(list(stopped.glob("*_stats.json")))
    assert 3 <= done < 12, "the interrupt did not land halfway"
    assert not (stopped / "_tmp").exists()

    again = subprocess.run(cli(urls, stopped), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert outcome(stopped) == outcome(reference)
    for path in reference.glob("*.tar"):  # and byte for byte
        assert (stopped / path.name).read_bytes() == path.read_bytes()
