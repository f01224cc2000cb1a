"""Real clusters on 127.0.0.1 for the tests, and helpers to watch and kill their processes.

Every process a fixture starts runs in its own session and is stopped by PID (never `ray stop`,
which would stop other people's Ray too). Every process this test session starts, and theirs (Ray's and
Spark's workers), inherits `MARK` in its environment: `processes(ours=True)` lists only those, so a test
that kills a worker never kills another session's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MARK = "I2D_TEST_SESSION"
os.environ.setdefault(MARK, uuid.uuid4().hex)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def spark_standalone(tmp_path_factory) -> Iterator[str]:
    """A Spark standalone master and one worker (2 cores) on 127.0.0.1, stopped by PID at the end."""
    pyspark = pytest.importorskip("pyspark")
    home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("spark")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(logs / "work")}
    env["SPARK_DAEMON_JAVA_OPTS"] = (
        "-XX:TieredStopAtLevel=1"  # short-lived daemons: C2 compiles cost more than they give
    )
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    spark_class = str(home / "bin" / "spark-class")
    commands = {
        "master": [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(free_port()),
        ],
        "worker": [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            "--cores",
            "2",
            "--memory",
            "2g",
            "--host",
            "127.0.0.1",
            "--webui-port",
            str(free_port()),
            url,
        ],
    }
    ready = {"master": "New state: ALIVE", "worker": "Successfully registered with master"}
    processes = []
    try:
        for name, command in commands.items():
            log = logs / f"{name}.log"
            with open(log, "w") as out:
                processes.append(
                    subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                )
            wait_for(lambda log=log, name=name: ready[name] in log.read_text(), 120, f"spark {name} did not start")
        yield url
    finally:
        for process in reversed(processes):  # each in its own session: its executors go with it
            stop_group(process)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 in its own session, stopped by PID (never `ray stop`)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # ray's socket paths must stay short
    process = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: _ray_reachable(address), 120, "ray head did not start")
        yield address
    finally:
        stop_group(process, grace=5)  # `ray start --block` does not exit on SIGTERM: SIGKILL soon
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_reachable(address: str) -> bool:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "status", f"--address={address}"], capture_output=True, timeout=60
    )
    return result.returncode == 0


def wait_for(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.5)


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process's group, then SIGKILL whatever of it is left after `grace` seconds."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # members that outlived the leader, too
    except ProcessLookupError:
        pass
    process.wait(20)


def processes(ours: bool = False) -> Iterator[tuple[int, str]]:
    """(pid, full command line) of every process (ps would cut long command lines); with `ours`, only
    those with this test session's `MARK` in their environment."""
    mark = f"{MARK}={os.environ[MARK]}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ours and mark not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
