"""Shards appear complete or not at all; the stats file, written last, is checked before it counts.

Each test builds its hostile situation for real: a `kill -9` of a running download in the middle of
a shard, a disk that really fills up (a small tmpfs in a private mount namespace, made by a child
process), a stage that crashes in the middle of a shard on local disk and on an S3 server (moto),
stats files cut short or swapped. Each ends with the same command run again, whose output must be
that of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from img2dataset_ng import ConfigError, Stage, download
from img2dataset_ng.naming import is_ours, partial_name
from tests.outputs import read_metadata, stored_images, tar_samples, write_url_list
from tests.test_storage import fetch as copy_from_s3
from tests.test_storage import s3  # noqa: F401 - the S3 server fixture

PER_SHARD = 6
SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet", "tfrecord": ".tfrecord", "files": ""}


def url_list(tmp_path: Path, server, n: int, delay: float = 0.0, size: str = "64x48") -> Path:
    rows = []
    for i in range(n):
        path = "/status/404" if i % 7 == 3 else f"/img/{size}.jpg?seed={i}"
        rows.append({"url": server.url(f"/slow/{delay}{path}" if delay else path), "caption": f"c{i}"})
    return write_url_list(rows, tmp_path / f"urls-{n}-{delay}-{size}.parquet", "parquet")


def options(output: str, output_format: str = "webdataset", **extra) -> dict:
    return {
        "input_format": "parquet",
        "caption_col": "caption",
        "output_folder": output,
        "output_format": output_format,
        "number_sample_per_shard": PER_SHARD,
        "thread_count": 2,
        "processes_count": 1,
        **extra,
    }


def cli(urls: Path, output: Path, output_format: str, processes: int = 2) -> list[str]:
    flags = options(str(output), output_format, processes_count=processes)
    return [sys.executable, "-m", "img2dataset_ng", str(urls)] + [f"--{k}={v}" for k, v in flags.items()]


def outcome(folder: Path, output_format: str) -> dict:
    """What a finished run left: entry names, (key, status, error) rows, and the stored samples."""
    table = read_metadata(folder)
    rows = sorted(zip(*(table.column(c).to_pylist() for c in ("key", "status", "error_message"))))
    images = {key: value["image"] for key, value in stored_images(folder, output_format).items()}
    return {"names": sorted(p.name for p in folder.iterdir()), "rows": rows, "images": images}


def shard_files(folder: Path, output_format: str) -> dict[str, bytes]:
    """Every shard file's bytes (tar, tfrecord, parquet; each file of the `files` folders): must be
    identical to a reference run's."""
    if output_format == "files":
        paths = [*folder.glob("*.parquet"), *(p for d in folder.iterdir() if d.name.isdigit() for p in d.iterdir())]
    else:
        paths = [p for p in folder.glob(f"*{SUFFIXES[output_format]}") if p.is_file()]
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(paths)}


# --- 5. a killed run leaves no partial shard under a shard name ---------------------------------


@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "tfrecord", "files"])
def test_kill_9_mid_shard_leaves_only_complete_shards_and_the_rerun_completes(tmp_path, server, output_format):
    urls = url_list(tmp_path, server, 5 * PER_SHARD, delay=0.3)
    reference = tmp_path / "reference"
    subprocess.run(cli(urls, reference, output_format), check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        cli(urls, killed, output_format), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a shard done, and others being written: kill them in the middle
        names = os.listdir(killed) if killed.exists() else []
        if any(n.endswith("_stats.json") for n in names) and any(n.startswith("_partial_") for n in names):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    names = os.listdir(killed)
    assert any(n.startswith("_partial_") for n in names), "the kill did not land in the middle of a shard"
    assert all(is_ours(n) for n in names)

    # what is visible under a shard name is a whole shard, byte for byte the uninterrupted run's
    visible = shard_files(killed, output_format)
    assert visible and all(data == (reference / name).read_bytes() for name, data in visible.items())
    for name in os.listdir(killed):
        if output_format == "files" and name.isdigit():  # a whole folder, or none
            assert sorted(os.listdir(killed / name)) == sorted(os.listdir(reference / name))
    if output_format == "webdataset":  # the docs' recipe reads whole shards only
        for path in killed.glob("*.tar"):
            with tarfile.open(path) as tar:
                assert len(tar.getmembers()) == len(tar_samples(reference / path.name)[0])
        for path in killed.glob("*.parquet"):
            assert pq.read_table(path).equals(pq.read_table(reference / path.name))

    again = subprocess.run(cli(urls, killed, output_format), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert outcome(killed, output_format) == outcome(reference, output_format)
    assert shard_files(killed, output_format) == shard_files(reference, output_format)
    assert not [n for n in os.listdir(killed) if n.startswith("_partial_") or n.startswith("_img2dataset_ng.lock")]


def test_partial_names_match_no_shard_glob_and_are_ours():
    for name in ("00042.tar", "00042.parquet", "00042.tfrecord", "00042_stats.json", "00042"):
        partial = partial_name(name, "3f9c2a1b0d4e")
        assert is_ours(partial)
        assert not partial.endswith((".tar", ".parquet", ".tfrecord", "_stats.json")) and partial.startswith("_")


# --- a shard that fails half-way: nothing of it is visible, on local disk and on S3 -----------------


class CrashOnce(Stage):
    """Raises a non-StageError (a bug) on sample 2 of shard 1 while the marker file exists, and removes it:
    the shard fails half-way once; its retry succeeds."""

    def __init__(self, config):
        self.marker = Path(os.environ["IMG2DATASET_TEST_CRASH_MARKER"])

    def __call__(self, sample):
        if sample.key[:5] == "00001" and sample.index == 2 and self.marker.exists():
            self.marker.unlink()
            raise RuntimeError("stage bug in the middle of shard 1")


# shards run in the test's process: a stage's failure takes the same path under every distributor (and
# the killed-process cases above use real worker processes), without spawning one per download
IN_PROCESS = {"distributor": "tests.outputs:InProcessDistributor", "stages": ["tests.test_atomic:CrashOnce"]}


def run_with_crash(tmp_path, monkeypatch, urls, output, output_format, retries, storage_options=None):
    marker = tmp_path / f"crash-{time.monotonic_ns()}"
    marker.touch()
    monkeypatch.setenv("IMG2DATASET_TEST_CRASH_MARKER", str(marker))
    extra = {"storage_options": storage_options} if storage_options else {}
    return download(str(urls), **options(output, output_format, max_shard_retry=retries, **IN_PROCESS, **extra))


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "tfrecord", "files"])
def test_a_shard_failing_half_way_leaves_nothing_and_its_retry_gives_the_same_output(
    tmp_path, server, monkeypatch, request, where, output_format
):
    urls = url_list(tmp_path, server, 3 * PER_SHARD)
    monkeypatch.setenv("IMG2DATASET_TEST_CRASH_MARKER", str(tmp_path / "no-marker"))
    reference = tmp_path / "reference"
    download(str(urls), **options(str(reference), output_format, **IN_PROCESS))
    if where == "s3":
        endpoint, fs = request.getfixturevalue("s3")
        prefix = f"img2dataset-ng-tests/atomic-{output_format}-{time.monotonic_ns()}"
        output, storage_options = f"s3://{prefix}", {"endpoint_url": endpoint}
    else:
        output, storage_options = str(tmp_path / "out"), None

    failed = run_with_crash(tmp_path, monkeypatch, urls, output, output_format, 0, storage_options)
    assert failed.failed_shards == [1]
    local = fetch(request, prefix, tmp_path / "copy1") if where == "s3" else Path(output)
    names = sorted(p.name for p in local.iterdir())
    assert not [n for n in names if n.startswith(("00001", "_partial_"))], names  # nothing of shard 1
    assert "00000_stats.json" in names and "00002_stats.json" in names

    again = download(
        str(urls),
        **options(
            output, output_format, **IN_PROCESS, **({"storage_options": storage_options} if storage_options else {})
        ),
    )
    assert (again.shards_done, again.shards_skipped) == (1, 2)
    local = fetch(request, prefix, tmp_path / "copy2") if where == "s3" else Path(output)
    assert outcome(local, output_format) == outcome(reference, output_format)
    assert shard_files(local, output_format) == shard_files(reference, output_format)

    retried = output + "-retried"
    summary = run_with_crash(tmp_path, monkeypatch, urls, retried, output_format, 1, storage_options)
    assert summary.failed_shards == [] and summary.shards_done == 3
    local = fetch(request, retried.removeprefix("s3://"), tmp_path / "copy3") if where == "s3" else Path(retried)
    assert outcome(local, output_format) == outcome(reference, output_format)


def fetch(request, prefix: str, local: Path) -> Path:
    """A local copy of an S3 folder of the test server."""
    return copy_from_s3(request.getfixturevalue("s3")[1], prefix, local)


# --- 4. the done marker: written last, atomically, and checked when read ----------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_empty_unreadable_foreign_or_orphan_stats_files_mean_not_done(tmp_path, server, request, caplog, where):
    urls = url_list(tmp_path, server, 5 * PER_SHARD)
    reference = tmp_path / "reference"
    download(str(urls), **options(str(reference)))
    if where == "s3":
        endpoint, fs = request.getfixturevalue("s3")
        prefix = f"img2dataset-ng-tests/stats-{time.monotonic_ns()}"
        output, extra = f"s3://{prefix}", {"storage_options": {"endpoint_url": endpoint}}
        write, remove = fs.pipe_file, fs.rm_file
        read = fs.cat_file
    else:
        output, extra = str(tmp_path / "out"), {}
        write = lambda path, data: Path(path).write_bytes(data)  # noqa: E731
        remove, read = os.unlink, lambda path: Path(path).read_bytes()
    first = download(str(urls), **options(output, **extra))
    assert first.shards_done == 5
    base = prefix if where == "s3" else output

    write(f"{base}/00000_stats.json", b"")  # what a full disk left before
    write(f"{base}/00001_stats.json", read(f"{base}/00001_stats.json")[:40])  # cut short
    write(f"{base}/00002_stats.json", read(f"{base}/00004_stats.json"))  # another shard's
    remove(f"{base}/00003.tar")  # a shard file deleted by hand: its stats file vouches for nothing

    caplog.set_level(logging.WARNING, logger="img2dataset_ng")
    again = download(str(urls), **options(output, **extra))
    assert (again.shards_done, again.shards_skipped) == (4, 1)
    warning = [r.getMessage() for r in caplog.records if "stats file(s)" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith("4 stats file(s)") and "00000_stats.json" in warning[0]

    local = fetch(request, prefix, tmp_path / "copy") if where == "s3" else Path(output)
    assert outcome(local, "webdataset") == outcome(reference, "webdataset")
    assert shard_files(local, "webdataset") == shard_files(reference, "webdataset")
    for stats in local.glob("*_stats.json"):
        assert json.loads(stats.read_text())["shard_id"] == int(stats.name[:5])


# --- 4 and 9. a disk that really fills up -----------------------------------------------------------

CHILD = r"""
import json, logging, os, shutil, sys
from img2dataset_ng import download


def open_files_under(disk):
    fds = [os.path.join("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd")]
    return [target for fd in fds if os.path.exists(fd) and (target := os.readlink(fd)).startswith(disk)]


def main():
    args = json.loads(sys.argv[1])
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logging.getLogger("img2dataset_ng").addHandler(Keep())
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)
    disk, out = args["disk"], os.path.join(args["disk"], "out")
    os.makedirs(out)
    with open(os.path.join(disk, "ballast"), "wb") as f:  # the disk is full but for `room` bytes
        f.write(b"x" * (args["disk_size"] - args["room"]))
    summary = download(args["urls"], **args["options"], output_folder=out)
    full = {
        "failed_shards": summary.failed_shards,
        "messages": list(messages),
        "names": sorted(os.listdir(out)),
        "sizes": {n: os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)},
        "open_files_on_disk": open_files_under(disk),
    }
    os.unlink(os.path.join(disk, "ballast"))  # room again: the same command finishes the job
    messages.clear()
    summary = download(args["urls"], **args["options"], output_folder=out)
    again = {"failed_shards": summary.failed_shards, "done": summary.shards_done, "messages": messages}
    with open(args["report"], "w") as f:
        json.dump({"full": full, "again": {**again, "skipped": summary.shards_skipped}}, f)
    shutil.copytree(out, args["copy"])


if __name__ == "__main__":
    main()
"""


def run_on_a_full_disk(tmp_path: Path, urls: Path, room: int, output_format: str) -> dict:
    """Run the download twice in a child process on a 8 MiB tmpfs of its own: first with only `room`
    bytes free (a ballast file takes the rest), then with the ballast removed. Returns the child's
    report; the output of the second run is copied to tmp_path / "copy"."""
    disk, disk_size = tmp_path / "disk", 8 << 20
    disk.mkdir()
    args = {
        "disk": str(disk),
        "disk_size": disk_size,
        "room": room,
        "urls": str(urls),
        "options": options("", output_format, tmp_folder=str(tmp_path / "tmp"), max_shard_retry=0, processes_count=1),
        "report": str(tmp_path / "report.json"),
        "copy": str(tmp_path / "copy"),
    }
    del args["options"]["output_folder"]
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    mount = f"mount -t tmpfs -o size={disk_size} tmpfs {disk}"
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mount} && exec "$0" "$@"']
    result = subprocess.run(
        [*command, sys.executable, str(script), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "report.json").read_text())


def the_one_error(failure: str) -> str:
    """The error a shard failure reports (its last line: the multiprocessing distributor sends the
    worker's traceback), checked to be the only one: no error raised while handling it."""
    assert "During handling of the above exception" not in failure and "direct cause" not in failure, failure
    return failure.strip().splitlines()[-1].removeprefix("shard 0 failed: ")


def pages(size: int) -> int:
    return -(-size // 4096) * 4096


@pytest.fixture(scope="module")
def full_disk_reference(tmp_path_factory, server):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a small tmpfs")
    tmp = tmp_path_factory.mktemp("full-disk")
    urls = url_list(tmp, server, PER_SHARD, size="256x256")  # one shard of ~100 KiB
    reference = tmp / "reference"
    download(str(urls), **options(str(reference), tmp_folder=str(tmp / "tmp")))
    return urls, reference


def test_a_disk_full_at_the_stats_write_leaves_the_shard_not_done(tmp_path, full_disk_reference):
    urls, reference = full_disk_reference
    # room for the lock, the run record, the tar and the parquet, not one more page: the stats file cannot be written
    room = sum(
        pages((reference / n).stat().st_size) for n in ("_img2dataset_ng_run.json", "00000.tar", "00000.parquet")
    )
    report = run_on_a_full_disk(tmp_path, urls, room + 4096, "webdataset")
    full = report["full"]
    assert full["failed_shards"] == [0]
    assert "00000_stats.json" not in full["names"], full["sizes"]  # neither empty nor cut short: absent
    (failure,) = [m for m in full["messages"] if m.startswith("shard 0 failed")]
    assert (
        the_one_error(failure) == f"OSError: [Errno 28] No space left on device: '{tmp_path}/disk/out/00000_stats.json'"
    )
    assert full["open_files_on_disk"] == []
    assert not [n for n in full["names"] if n.startswith("_partial_")]

    again = report["again"]
    assert (again["failed_shards"], again["done"], again["skipped"]) == ([], 1, 0)
    copy = tmp_path / "copy"
    assert outcome(copy, "webdataset") == outcome(reference, "webdataset")
    assert shard_files(copy, "webdataset") == shard_files(reference, "webdataset")


def test_a_disk_full_inside_a_webdataset_shard_shows_the_real_error_and_closes_every_file(
    tmp_path, full_disk_reference
):
    urls, reference = full_disk_reference
    room = pages((reference / "_img2dataset_ng_run.json").stat().st_size) + 4096 + 40 * 1024  # ~half of the tar
    report = run_on_a_full_disk(tmp_path, urls, room, "webdataset")
    full = report["full"]
    assert full["failed_shards"] == [0]
    (failure,) = [m for m in full["messages"] if m.startswith("shard 0 failed")]
    assert the_one_error(failure) == f"OSError: [Errno 28] No space left on device: '{tmp_path}/disk/out/00000.tar'"
    assert not [m for m in full["messages"] if "discard" in m.lower() or "autocommit" in m]
    assert full["open_files_on_disk"] == []
    assert sorted(full["names"]) == ["_img2dataset_ng_run.json"], full["names"]  # no tar, partial or not

    assert report["again"]["failed_shards"] == []
    copy = tmp_path / "copy"
    assert outcome(copy, "webdataset") == outcome(reference, "webdataset")
    assert shard_files(copy, "webdataset") == shard_files(reference, "webdataset")


# --- 9. an output folder that is the root of its filesystem ------------------------------------------


@pytest.mark.parametrize("output", ["/", "file:///", "/..", ""])
def test_the_root_of_a_filesystem_is_refused_before_any_work(tmp_path, server, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "00000.tar").write_bytes(b"someone's file in the working directory")
    urls = url_list(tmp_path, server, 3)
    with pytest.raises(ConfigError) as raised:
        download(str(urls), **options(output, incremental_mode="overwrite"))
    assert "root of its filesystem" in str(raised.value) and "\n" not in str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", urls.name]


def test_the_cli_refuses_the_root_in_one_line(tmp_path, server):
    urls = url_list(tmp_path, server, 3)
    result = subprocess.run(
        cli(urls, Path("/"), "webdataset") + ["--incremental_mode", "overwrite"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("img2dataset-ng: error: output_folder '/' is the root of its filesystem")
