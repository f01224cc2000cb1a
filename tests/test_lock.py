"""One run per output folder: real concurrent runs, real dead holders, on local disk and on S3 (moto)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from img2dataset_ng import download, lock
from img2dataset_ng.errors import FolderLocked
from img2dataset_ng.lock import FolderLock, _identity
from img2dataset_ng.naming import LOCK_FILE
from img2dataset_ng.storage import Folder
from tests.test_atomic import cli, options, outcome, shard_files, url_list
from tests.test_storage import s3  # noqa: F401 - the S3 server fixture


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_second_run_refuses_at_once_a_third_waits_and_the_output_is_the_uninterrupted_one(tmp_path, server):
    urls = url_list(tmp_path, server, 24, delay=0.3)
    reference = tmp_path / "reference"
    subprocess.run(cli(urls, reference, "webdataset"), check=True, capture_output=True, timeout=300)

    out = tmp_path / "out"
    first = subprocess.Popen(cli(urls, out, "webdataset"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (out / "_tmp").exists())  # running, its lock taken
    started = time.monotonic()
    second = subprocess.run(cli(urls, out, "webdataset"), capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20
    assert second.returncode == 2
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith(f"img2dataset-ng: error: output_folder {out} is in use by another run: pid {first.pid} on ")
    assert "wait_for_lock" in line and LOCK_FILE in line

    third = subprocess.Popen(
        cli(urls, out, "webdataset") + ["--wait_for_lock", "true"], stderr=subprocess.PIPE, text=True
    )
    assert first.wait(timeout=300) == 0
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert f"waiting for {out}, in use by pid {first.pid}" in err
    assert "0 shard(s) done (4 already done, skipped)" in err  # the first did them; nothing twice
    assert outcome(out, "webdataset") == outcome(reference, "webdataset")
    assert shard_files(out, "webdataset") == shard_files(reference, "webdataset")
    assert not (out / LOCK_FILE).exists()


def lock_content(**fields) -> bytes:
    me = _identity()
    now = time.time()
    return json.dumps({"token": "theirs", "started": now - 10, "heartbeat": now, **me, **fields}).encode()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    "holder, why",
    [
        ({"pid": "dead"}, ": that process is no longer running on this machine"),
        ({"host": "elsewhere", "heartbeat": -3600}, "heartbeat 3600s ago: its heartbeat is older than the 120s limit"),
    ],
)
def test_a_stale_lock_is_taken_over_with_a_warning_naming_its_owner(tmp_path, server, caplog, holder, why):
    urls = url_list(tmp_path, server, 8)
    out = tmp_path / "out"
    out.mkdir()
    pid = dead_pid() if holder.get("pid") == "dead" else 4242
    heartbeat = time.time() + holder.get("heartbeat", 0)
    (out / LOCK_FILE).write_bytes(lock_content(**{**holder, "pid": pid, "heartbeat": heartbeat}))
    caplog.set_level(logging.WARNING, logger="img2dataset_ng")
    summary = download(str(urls), **options(str(out)))
    assert summary.shards_done == 2
    (warning,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert f"taking over the lock of pid {pid} on host {holder.get('host', socket.gethostname())}" in warning
    assert why in warning
    assert not (out / LOCK_FILE).exists()


def test_a_live_lock_refuses_before_anything_in_the_folder_changes(tmp_path, server):
    urls = url_list(tmp_path, server, 8)
    out = tmp_path / "out"
    download(str(urls), **options(str(out)))
    (out / LOCK_FILE).write_bytes(lock_content(host="elsewhere", pid=4242))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    with pytest.raises(FolderLocked, match="in use by another run: pid 4242 on host elsewhere"):
        download(str(urls), **options(str(out), incremental_mode="overwrite"))
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


def test_the_heartbeat_refreshes_the_lock_and_release_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT", 0.1)
    folder = Folder(str(tmp_path / "out"))
    folder.makedirs()
    held = FolderLock(folder)
    held.acquire()
    first = json.loads((tmp_path / "out" / LOCK_FILE).read_bytes())
    time.sleep(0.5)
    later = json.loads((tmp_path / "out" / LOCK_FILE).read_bytes())
    assert later["token"] == first["token"] == held.token and later["heartbeat"] > first["heartbeat"]
    assert (later["pid"], later["host"]) == (os.getpid(), socket.gethostname())
    held.release()
    assert os.listdir(tmp_path / "out") == []


RACER = """
import sys, time
from img2dataset_ng.errors import FolderLocked
from img2dataset_ng.lock import FolderLock
from img2dataset_ng.storage import Folder
folder, start, options = sys.argv[1], float(sys.argv[2]), eval(sys.argv[3])
held = FolderLock(Folder(folder, options))
time.sleep(max(0.0, start - time.time()))
try:
    held.acquire()
except FolderLocked:
    print("lost")
else:
    print("won")
    time.sleep(3)
    held.release()
"""


def race(folder: str, storage_options: dict, runs: int = 6) -> list[str]:
    """`runs` processes that try to take the lock at the same instant; what each got."""
    start = time.time() + 3
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, folder, str(start), repr(storage_options)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(runs)
    ]
    return sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)


def test_processes_racing_for_a_local_lock_one_wins(tmp_path):
    (tmp_path / "out").mkdir()
    assert race(str(tmp_path / "out"), {}) == ["lost"] * 5 + ["won"]
    assert os.listdir(tmp_path / "out") == []


def test_lock_on_s3_races_refuses_takes_over_and_is_released(tmp_path, server, s3, caplog):  # noqa: F811
    endpoint, fs = s3
    prefix = f"img2dataset-ng-tests/lock-{time.monotonic_ns()}"
    storage_options = {"endpoint_url": endpoint}
    assert race(f"s3://{prefix}/race", storage_options) == ["lost"] * 5 + ["won"]
    fs.invalidate_cache()
    assert not fs.exists(f"{prefix}/race/{LOCK_FILE}")

    urls = url_list(tmp_path, server, 8)
    output = f"s3://{prefix}/out"
    held = FolderLock(Folder(output, storage_options))
    held.acquire()
    with pytest.raises(FolderLocked, match=f"in use by another run: pid {os.getpid()}"):
        download(str(urls), **options(output, storage_options=storage_options))
    fs.invalidate_cache()
    assert fs.ls(f"{prefix}/out", detail=False) == [f"{prefix}/out/{LOCK_FILE}"]  # nothing else made
    held.release()

    fs.pipe_file(f"{prefix}/out/{LOCK_FILE}", lock_content(host="elsewhere", pid=7, heartbeat=time.time() - 600))
    caplog.set_level(logging.WARNING, logger="img2dataset_ng")
    summary = download(str(urls), **options(output, storage_options=storage_options))
    assert summary.shards_done == 2
    assert [r for r in caplog.records if "taking over the lock of pid 7 on host elsewhere" in r.getMessage()]
    fs.invalidate_cache()
    assert not fs.exists(f"{prefix}/out/{LOCK_FILE}")


def test_threads_of_one_process_racing_on_s3_one_wins(s3):  # noqa: F811
    endpoint, _ = s3
    folder = Folder(f"s3://img2dataset-ng-tests/threads-{time.monotonic_ns()}", {"endpoint_url": endpoint})
    locks = [FolderLock(folder) for _ in range(8)]
    results: list[str] = []
    barrier = threading.Barrier(len(locks))

    def take(held: FolderLock) -> None:
        barrier.wait()
        try:
            held.acquire()
            results.append("won")
        except FolderLocked:
            results.append("lost")

    threads = [threading.Thread(target=take, args=(held,)) for held in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == ["lost"] * 7 + ["won"]
    for held in locks:
        held.release()


def test_ctrl_c_releases_the_lock(tmp_path, server):
    urls = url_list(tmp_path, server, 24, delay=0.3)
    out = tmp_path / "out"
    process = subprocess.Popen(
        cli(urls, out, "webdataset"), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wait_for(lambda: len(list(out.glob("*_stats.json"))) >= 1)
    assert (out / LOCK_FILE).exists()
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    assert not (out / LOCK_FILE).exists() and not (out / "_tmp").exists()
