"""cluster/spark/start.sh and stop.sh, run for real on 127.0.0.1.

There is no sshd here: SSH is a small wrapper that ignores the host and runs the command locally with
`bash -c`, which is what ssh does on the host. The master and a worker both run on 127.0.0.1, a driver
runs a job on them, and stop.sh must leave no process behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pyspark = pytest.importorskip("pyspark")
from pyspark.sql import SparkSession  # noqa: E402

SPARK_SCRIPTS = Path(__file__).resolve().parent.parent / "cluster" / "spark"
FAKE_SSH = '#!/bin/sh\n# stands in for ssh: $1 is the host (ignored), $2 the command to run there\nexec bash -c "$2"\n'
# JIT with C1 only, for the JVMs this test starts (master, worker, executor): a JVM that lives for seconds
# spends more CPU in C2 compiles than they give back; C1 about halves their CPU time, and the test takes
# ~30-45 s instead of ~55-95 s on a busy 2-core machine. It reaches the daemons through start.sh's
# SPARK_MASTER_OPTS / SPARK_WORKER_OPTS (so the test checks those too), the executor through the session's
# spark.executor.extraJavaOptions (which, like the session's other settings, stays a default of later
# sessions of this Python process when this test is the one that starts its JVM).
FAST_JVM = "-XX:TieredStopAtLevel=1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether `pid` is a running process. A zombie is not: where PID 1 does not reap orphans, a
    stopped daemon stays in the process table as a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes_under(folder: Path) -> list[int]:
    """Running processes whose working directory is inside `folder` (executors and their Python
    workers run in the Spark worker's work dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(folder)) and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch) -> dict:
    """Settings of a one-machine cluster; the environment for the scripts."""
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("# the master, then the workers\n127.0.0.1\n\n  127.0.0.1   # a worker on the same machine\n")
    port = free_port()
    env = {
        **os.environ,
        "SSH": str(ssh),
        "PYTHON": sys.executable,
        "CLUSTER_DIR": str(tmp_path / "cluster"),
        "SPARK_PORT": str(port),
        "SPARK_WEBUI_PORT": str(free_port()),
        "SPARK_WORKER_WEBUI_PORT": str(free_port()),
        "SPARK_WORKER_CORES": "2",
        "SPARK_WORKER_MEMORY": "2g",
        "SPARK_MASTER_OPTS": FAST_JVM,
        "SPARK_WORKER_OPTS": FAST_JVM,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    return {"hosts": hosts, "env": env, "dir": tmp_path / "cluster", "url": f"spark://127.0.0.1:{port}"}


def script(name: str, cluster: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SPARK_SCRIPTS / name), str(cluster["hosts"])],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_start_run_a_job_and_stop(cluster):
    pids: dict[str, int] = {}
    try:
        started = script("start.sh", cluster)
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines()[-1] == cluster["url"]
        pids = {role: int((cluster["dir"] / "pids" / f"{role}.pid").read_text()) for role in ("master", "worker")}
        assert all(alive(pid) for pid in pids.values())
        # SPARK_MASTER_OPTS and SPARK_WORKER_OPTS reach the daemons' JVMs
        assert all(FAST_JVM in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in pids.values())

        again = script("start.sh", cluster)  # running daemons are left as they are
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[-1] == cluster["url"] and "already running" in again.stderr

        spark = (
            SparkSession.builder.master(cluster["url"])
            .appName("img2dataset-ng-cluster-scripts")
            .config("spark.pyspark.python", sys.executable)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.executor.memory", "1g")
            .config("spark.executor.extraJavaOptions", FAST_JVM)
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        try:
            assert spark.sparkContext.master == cluster["url"]
            assert spark.sparkContext.parallelize(range(10)).sum() == 45
        finally:
            spark.stop()
    finally:
        stopped = script("stop.sh", cluster)
    assert stopped.returncode == 0, stopped.stderr
    assert "worker stopped" in stopped.stderr and "master stopped" in stopped.stderr
    assert not [pid for pid in pids.values() if alive(pid)]
    assert not list((cluster["dir"] / "pids").iterdir())
    deadline = time.monotonic() + 30  # the executor's Python workers leave when it is gone
    while processes_under(cluster["dir"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_under(cluster["dir"]) == []

    again = script("stop.sh", cluster)  # nothing left to stop is not an error
    assert again.returncode == 0 and "nothing to stop" in again.stderr


def test_a_hosts_file_without_workers_is_refused(cluster):
    cluster["hosts"].write_text("# only a master\n127.0.0.1\n")
    for name in ("start.sh", "stop.sh"):
        result = script(name, cluster)
        assert result.returncode == 1
        assert "names a master (127.0.0.1) but no worker host" in result.stderr
    assert not cluster["dir"].exists()  # nothing was started
