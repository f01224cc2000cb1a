"""Input and output on object storage, against a real S3-compatible server (moto) on 127.0.0.1,
and on fsspec's memory filesystem."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from img2dataset_ng import download, register_distributor
from tests.outputs import InProcessDistributor, read_metadata, tar_samples, write_url_list
from tests.test_pipeline import check_output, corpus_rows

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
pa_fs = pytest.importorskip("pyarrow.fs")

BUCKET = "img2dataset-ng-tests"
PER_SHARD = 5


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1; yields (endpoint, an s3fs filesystem on it)."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    if not fs.exists(BUCKET):  # moto's state is per process: another module's server may have made it
        fs.mkdir(BUCKET)
    try:
        yield endpoint, fs
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fresh_prefix(fs, name: str) -> str:
    prefix = f"{BUCKET}/{name}-{time.monotonic_ns()}"
    fs.invalidate_cache()
    return prefix


def fetch(fs, prefix: str, local: Path) -> Path:
    """A local copy of an S3 folder, to check it with the same assertions as local output."""
    fs.invalidate_cache()
    local.mkdir(parents=True)
    for path in fs.find(prefix):
        target = local / path[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(path))
    return local


@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "files"])
@pytest.mark.parametrize("route", ["s3-to-s3", "local-to-s3", "s3-to-local"])
def test_round_trips_through_s3(tmp_path, server, s3, route, output_format):
    endpoint, fs = s3
    rows = corpus_rows(server)
    local_list = write_url_list(rows, tmp_path / "urls.csv", "csv")
    prefix = fresh_prefix(fs, route + output_format)
    if route.startswith("s3"):
        fs.put_file(str(local_list), f"{prefix}-input/urls.csv")
        url_list = f"s3://{prefix}-input/urls.csv"
    else:
        url_list = str(local_list)
    output = f"s3://{prefix}/out" if route.endswith("s3") else str(tmp_path / "out")
    summary = download(
        url_list,
        input_format="csv",
        caption_col="caption",
        save_additional_columns=["extra"],
        output_folder=output,
        output_format=output_format,
        number_sample_per_shard=PER_SHARD,
        thread_count=8,
        processes_count=2,
        storage_options={"endpoint_url": endpoint},
    )
    assert summary.count == len(rows)
    local = fetch(fs, f"{prefix}/out", tmp_path / "copy") if route.endswith("s3") else tmp_path / "out"
    check_output(rows, local, output_format, with_caption=True)  # also: no _tmp left behind


def test_outputs_on_s3_read_back_with_webdataset_and_pyarrow(tmp_path, server, s3):
    webdataset = pytest.importorskip("webdataset")
    endpoint, fs = s3
    rows = corpus_rows(server)
    prefix = fresh_prefix(fs, "readback")
    download(
        str(write_url_list(rows, tmp_path / "u.parquet", "parquet")),
        input_format="parquet",
        caption_col="caption",
        output_folder=f"s3://{prefix}",
        output_format="webdataset",
        number_sample_per_shard=PER_SHARD,
        thread_count=8,
        storage_options={"endpoint_url": endpoint},
    )

    reader = "import s3fs,sys; sys.stdout.buffer.write(s3fs.S3FileSystem(endpoint_url=sys.argv[1]).cat(sys.argv[2]))"
    urls = [f"pipe:{sys.executable} -c '{reader}' {endpoint} {prefix}/{s:05d}.tar" for s in range(3)]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 7
    for sample in samples:
        assert sample["txt"].decode() == json.loads(sample["json"])["caption"]
        assert sample["jpg"][:3] == b"\xff\xd8\xff"

    s3_arrow = pa_fs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", access_key="testing", secret_key="testing", region="us-east-1"
    )
    import pyarrow.parquet as pq

    table = pq.read_table([f"{prefix}/{s:05d}.parquet" for s in range(3)], filesystem=s3_arrow)
    assert table.num_rows == len(rows) and sorted(table.column("url").to_pylist()) == sorted(r["url"] for r in rows)


def test_resume_on_s3_after_a_killed_run(tmp_path, server, s3):
    endpoint, fs = s3
    rows = [{"url": server.url(f"/slow/0.25/img/50x40.jpg?seed={i}"), "caption": f"c{i}"} for i in range(40)]
    url_list = write_url_list(rows, tmp_path / "u.parquet", "parquet")
    prefix = fresh_prefix(fs, "resume")

    def command(output: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "img2dataset_ng",
            str(url_list),
            "--input_format",
            "parquet",
            "--caption_col",
            "caption",
            "--output_folder",
            output,
            "--output_format",
            "webdataset",
            "--number_sample_per_shard",
            "4",
            "--thread_count",
            "2",
            "--processes_count",
            "2",
            "--storage_options",
            json.dumps({"endpoint_url": endpoint}),
        ]

    process = subprocess.Popen(
        command(f"s3://{prefix}"), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    watcher = s3fs.S3FileSystem(endpoint_url=endpoint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        watcher.invalidate_cache()
        if len(watcher.glob(f"{prefix}/*_stats.json")) >= 3:
            break
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    watcher.invalidate_cache()
    assert 3 <= len(watcher.glob(f"{prefix}/*_stats.json")) < 10, "the kill did not land halfway"

    subprocess.run(command(f"s3://{prefix}"), check=True, capture_output=True, timeout=300)
    subprocess.run(command(str(tmp_path / "reference")), check=True, capture_output=True, timeout=300)
    resumed = fetch(fs, prefix, tmp_path / "resumed")
    for folder in (resumed, tmp_path / "reference"):
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert _rows(resumed) == _rows(tmp_path / "reference") and len(_rows(resumed)) == 40
    assert {p.name: sorted(tar_samples(p)[0]) for p in resumed.glob("*.tar")} == {
        p.name: sorted(tar_samples(p)[0]) for p in (tmp_path / "reference").glob("*.tar")
    }


def _rows(folder: Path) -> list[tuple]:
    table = read_metadata(folder)
    return sorted(zip(*(table.column(c).to_pylist() for c in ("key", "status", "error_message", "caption"))))


@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "files"])
def test_round_trip_on_memory_filesystem(tmp_path, server, output_format):
    """memory:// lives in one process, so shards run in this process (a registered distributor)."""
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    rows = corpus_rows(server)
    url_list = f"memory://lists-{output_format}/urls.jsonl"
    memory.pipe_file(url_list, write_url_list(rows, tmp_path / "u.jsonl", "jsonl").read_bytes())
    register_distributor("in-process", InProcessDistributor)
    output = f"memory://out-{output_format}"
    download(
        url_list,
        input_format="jsonl",
        caption_col="caption",
        save_additional_columns=["extra"],
        output_folder=output,
        output_format=output_format,
        number_sample_per_shard=PER_SHARD,
        thread_count=8,
        distributor="in-process",
    )
    local = tmp_path / "copy"
    memory.get(output + "/", str(local), recursive=True)
    check_output(rows, local, output_format, with_caption=True)


def test_endpoint_from_the_environment_and_tmp_folder_on_s3(tmp_path, server, s3, monkeypatch):
    endpoint, fs = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the filesystem's own configuration, no storage_options
    rows = corpus_rows(server)
    prefix = fresh_prefix(fs, "env")
    download(
        str(write_url_list(rows, tmp_path / "u.csv", "csv")),
        input_format="csv",
        caption_col="caption",
        save_additional_columns=["extra"],
        output_folder=str(tmp_path / "out"),
        output_format="webdataset",
        number_sample_per_shard=PER_SHARD,
        thread_count=8,
        tmp_folder=f"s3://{prefix}/tmp",
    )
    check_output(rows, tmp_path / "out", "webdataset", with_caption=True)
    fs.invalidate_cache()
    assert fs.find(f"{prefix}/tmp") == []  # the shard inputs were written there, and removed


class SlowDownProxy(ThreadingHTTPServer):
    """Forwards S3 requests to moto, but answers every `every`-th upload with 503 SlowDown first."""

    daemon_threads = True

    def __init__(self, target: str, every: int):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.target, self.every, self.uploads, self.refused = target, every, 0, 0
        self.lock = threading.Lock()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _forward(self) -> None:
        body = self._body()
        if self.command in ("PUT", "POST"):
            with self.server.lock:
                self.server.uploads += 1
                refuse = self.server.uploads % self.server.every == 0
                self.server.refused += refuse
            if refuse:
                error = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)
                return
        skip = ("host", "content-length", "transfer-encoding", "expect")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        if not any(k.lower() == "content-type" for k in headers):  # else urllib says it is a form
            headers["Content-Type"] = "application/octet-stream"
        request = urllib.request.Request(
            self.server.target + self.path, data=body or None, headers=headers, method=self.command
        )
        try:
            response = urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as error:
            response = error
        data = response.read()
        self.send_response(response.status if hasattr(response, "status") else response.code)
        for key, value in response.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(key, value)
        # a HEAD answer has no body but announces the object's length
        length = response.headers.get("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def test_throttled_uploads_are_retried_without_corrupting_shards(tmp_path, server, s3):
    endpoint, fs = s3
    proxy = SlowDownProxy(endpoint, every=3)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        rows = corpus_rows(server)
        prefix = fresh_prefix(fs, "throttled")
        download(
            str(write_url_list(rows, tmp_path / "u.csv", "csv")),
            input_format="csv",
            caption_col="caption",
            save_additional_columns=["extra"],
            output_folder=f"s3://{prefix}",
            output_format="webdataset",
            number_sample_per_shard=PER_SHARD,
            thread_count=8,
            storage_options={"endpoint_url": f"http://127.0.0.1:{proxy.server_address[1]}"},
        )
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert proxy.refused >= 3
    check_output(rows, fetch(fs, prefix, tmp_path / "copy"), "webdataset", with_caption=True)
