"""Hostile traffic from the fault-injection server: every row gets the right status and reason,
nothing hangs, memory stays bounded, and nothing but the test servers is ever contacted."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import trustme

from img2dataset_ng import download
from tests.outputs import read_metadata, stored_images, write_url_list
from tests.server import ImageServer, big_png

DOWNLOAD_FAILS = "failed_to_download"
RESIZE_FAILS = "failed_to_resize"
REFUSED = "Use of image disallowed by X-Robots-Tag directive"


def robots(value: str, path: str = "/img/40x40.jpg") -> str:
    return f"/robots/{urllib.parse.quote(value)}{path}"


# path (or full url) -> (status, error_message)
FAULTS = {
    "/img/100x80.jpg": ("success", None),
    "/status/404": (DOWNLOAD_FAILS, "HTTP Error 404: Not Found"),
    "/status/500": (DOWNLOAD_FAILS, "HTTP Error 500: Internal Server Error"),
    "/status/429?retry_after=1": (DOWNLOAD_FAILS, "HTTP Error 429: Too Many Requests"),
    "/stall": (DOWNLOAD_FAILS, "timed out"),
    "/drip": (DOWNLOAD_FAILS, "timed out"),
    "/drip-headers": (DOWNLOAD_FAILS, "timed out"),
    "/slow/60/img/10x10.jpg": (DOWNLOAD_FAILS, "timed out"),
    "/lying-length": (DOWNLOAD_FAILS, "incomplete body"),
    "/huge-declared": (DOWNLOAD_FAILS, "too large"),
    "/endless": (DOWNLOAD_FAILS, "too large"),
    "/redirect/3/img/64x64.jpg": ("success", None),
    "/loop": (DOWNLOAD_FAILS, "too many redirects"),
    "/html": (RESIZE_FAILS, "unsupported image format"),
    "/text": (RESIZE_FAILS, "unsupported image format"),
    "/empty": (DOWNLOAD_FAILS, "empty body"),
    "/truncated.jpg": (RESIZE_FAILS, "truncated image"),
    "/corrupt.jpg": (RESIZE_FAILS, "Image decoding error"),
    "/corrupt.png": (RESIZE_FAILS, "Image decoding error"),
    "/bomb.png": (RESIZE_FAILS, "image dimensions too large"),
    "/bomb.jpg": (RESIZE_FAILS, "image dimensions too large"),
    "/big.png": (RESIZE_FAILS, "image dimensions too large"),
    "/img/64x64.png?alpha=1": ("success", None),
    "/img/64x64.jpg?gray=1": ("success", None),
    "/cmyk.jpg": ("success", None),
    robots("noai"): (DOWNLOAD_FAILS, REFUSED),
    robots("noindex, nofollow"): (DOWNLOAD_FAILS, REFUSED),
    robots("NoImageAI"): (DOWNLOAD_FAILS, REFUSED),
    robots("img2dataset: noai"): (DOWNLOAD_FAILS, REFUSED),
    robots("otherbot: noai"): ("success", None),
    robots("nofollow"): ("success", None),
    robots("noai", "/stall"): (DOWNLOAD_FAILS, REFUSED),  # refused from the headers: the body is never read
    "ftp://127.0.0.1/x.jpg": (DOWNLOAD_FAILS, "unsupported url scheme"),
    "file:///etc/passwd": (DOWNLOAD_FAILS, "unsupported url scheme"),
    "data:image/png;base64,iVBORw0KGgo=": (DOWNLOAD_FAILS, "unsupported url scheme"),
    "": (DOWNLOAD_FAILS, "empty url"),
    "http://": (DOWNLOAD_FAILS, "invalid url"),
    "not a url at all": (DOWNLOAD_FAILS, "unsupported url scheme"),
    "http://127.0.0.1:1/closed-port.jpg": (DOWNLOAD_FAILS, "connection refused"),
}
TIMEOUT = 2.0


def full_url(server, path: str) -> str:
    return server.url(path) if path.startswith("/") else path


def run_faults(tmp_path: Path, server, **options):
    rows = [{"url": full_url(server, path)} for path in FAULTS]
    url_list = write_url_list(rows, tmp_path / "faults.jsonl", "jsonl")
    start = time.monotonic()
    download(
        str(url_list),
        input_format="jsonl",
        output_folder=str(tmp_path / "out"),
        output_format="webdataset",
        thread_count=len(rows),
        timeout=TIMEOUT,
        max_download_bytes=1_000_000,
        user_agent_token="img2dataset",
        **options,
    )
    return rows, time.monotonic() - start, {r["url"]: r for r in read_metadata(tmp_path / "out").to_pylist()}


def test_every_fault_becomes_a_row_with_its_reason_and_nothing_hangs(tmp_path, server):
    big_png()  # generated once up front, so that serving it is not what takes time
    rows, elapsed, meta = run_faults(tmp_path, server)
    assert len(meta) == len(rows)
    got = {
        path: (meta[full_url(server, path)]["status"], meta[full_url(server, path)]["error_message"]) for path in FAULTS
    }
    assert got == FAULTS
    # the stalling routes hold a connection for 30-60 s; the run is bounded by the timeout instead
    print("fault run seconds:", round(elapsed, 1))
    assert elapsed < 20, elapsed

    images = stored_images(tmp_path / "out", "webdataset")
    by_url = {sample["json"]["url"]: sample["image"] for sample in images.values()}
    cmyk = cv2.imdecode(np.frombuffer(by_url[server.url("/cmyk.jpg")], np.uint8), cv2.IMREAD_UNCHANGED)
    assert cmyk.shape == (256, 256, 3)
    assert [int(v) for v in cmyk[128, 128]] == pytest.approx([0, 0, 255], abs=3)  # red, as BGR
    gray = cv2.imdecode(np.frombuffer(by_url[server.url("/img/64x64.jpg?gray=1")], np.uint8), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (256, 256, 3)
    alpha = cv2.imdecode(np.frombuffer(by_url[server.url("/img/64x64.png?alpha=1")], np.uint8), cv2.IMREAD_UNCHANGED)
    assert alpha.shape == (256, 256, 3)

    stats = json.loads(next((tmp_path / "out").glob("*_stats.json")).read_text())
    assert stats["status_dict"]["timed out"] == 4 and stats["status_dict"][REFUSED] == 5


def test_header_check_can_be_turned_off(tmp_path, server):
    rows = [{"url": server.url(robots(value))} for value in ("noai", "noindex")]
    url_list = write_url_list(rows, tmp_path / "u.csv", "csv")
    download(
        str(url_list),
        input_format="csv",
        output_folder=str(tmp_path / "out"),
        disallowed_header_directives=[],
        thread_count=2,
    )
    assert read_metadata(tmp_path / "out").column("status").to_pylist() == ["success", "success"]


def test_retries_only_what_can_succeed_later(tmp_path, server):
    paths = ["/flaky/r1/2/img/30x30.jpg", "/status/404", robots("noai", "/img/31x31.jpg"), "/flaky/r2/5/img/32x32.jpg"]
    url_list = write_url_list([{"url": server.url(p)} for p in paths], tmp_path / "u.csv", "csv")
    before = dict(server.hits)
    download(str(url_list), input_format="csv", output_folder=str(tmp_path / "out"), retries=2, thread_count=4)
    hits = {path: server.hits.get(path, 0) - before.get(path, 0) for path in (urllib.parse.unquote(p) for p in paths)}
    meta = {r["url"]: r for r in read_metadata(tmp_path / "out").to_pylist()}
    assert meta[server.url(paths[0])]["status"] == "success"
    assert meta[server.url(paths[3])]["error_message"] == "HTTP Error 503: Service Unavailable"
    # 503 twice then success: 3 requests; 404 and X-Robots-Tag refusals: once; always 503: 1 + 2 retries
    assert list(hits.values()) == [3, 1, 1, 3]


def test_connections_are_reused(tmp_path, server):
    before = server.connections
    rows = [{"url": server.url(f"/img/20x20.jpg?seed={i}")} for i in range(40)]
    url_list = write_url_list(rows, tmp_path / "u.csv", "csv")
    download(str(url_list), input_format="csv", output_folder=str(tmp_path / "out"), thread_count=2)
    assert read_metadata(tmp_path / "out").column("status").to_pylist() == ["success"] * 40
    assert server.connections - before <= 4  # 40 requests over at most a few keep-alive connections


def test_tls_certificate_is_checked_unless_told_not_to(tmp_path):
    ca = trustme.CA()
    with ImageServer(tls=ca.issue_cert("127.0.0.1")) as tls_server:
        url_list = write_url_list([{"url": tls_server.url("/img/16x16.jpg")}], tmp_path / "u.csv", "csv")
        for ignore, status, error in ((False, DOWNLOAD_FAILS, "ssl error"), (True, "success", None)):
            out = tmp_path / f"out-{ignore}"
            download(
                str(url_list), input_format="csv", output_folder=str(out), ignore_ssl_certificate=ignore, thread_count=1
            )
            row = read_metadata(out).to_pylist()[0]
            assert (row["status"], row["error_message"]) == (status, error)


HOOK = textwrap.dedent(
    """
    import os, sys
    _log = os.environ.get("CONNECT_LOG")
    if _log:
        def _record(event, args):
            if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto"):
                unix = event != "socket.getaddrinfo" and getattr(args[0], "family", None) == 1  # AF_UNIX
                with open(_log, "a") as f:
                    where = args[1] if event != "socket.getaddrinfo" else args[:2]
                    f.write(f"{os.getpid()} {event} {'unix' if unix else 'net'} {where!r}\\n")
        sys.addaudithook(_record)
    """
)


def test_no_connection_but_to_the_test_server(tmp_path, server):
    """Every socket connection made by the import and a download, workers included, is recorded."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "connections.log"
    rows = [{"url": server.url(p)} for p in ("/img/30x30.jpg", "/exif.jpg", "/redirect/1/img/20x20.png", "/status/404")]
    url_list = write_url_list(rows, tmp_path / "u.csv", "csv")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "hook"), "CONNECT_LOG": str(log)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "img2dataset_ng",
            str(url_list),
            "--input_format",
            "csv",
            "--output_folder",
            str(tmp_path / "out"),
            "--processes_count",
            "2",
            "--number_sample_per_shard",
            "2",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert read_metadata(tmp_path / "out").num_rows == 4
    lines = log.read_text().splitlines()
    pids = {line.split()[0] for line in lines}
    assert len(pids) >= 2, "the worker processes were not watched"  # both workers fetched something
    port = str(server.httpd.server_address[1])
    for line in lines:  # Unix sockets are this machine's own (the fork server's, which the workers come from)
        assert line.split()[2] == "unix" or ("127.0.0.1" in line and port in line), line


def test_worker_memory_stays_bounded_on_bombs_and_oversized_bodies(tmp_path, server):
    paths = ["/bomb.png", "/bomb.jpg", "/big.png", "/huge-declared"] * 4 + ["/endless"] * 8
    url_list = write_url_list([{"url": server.url(p)} for p in paths], tmp_path / "u.csv", "csv")
    script = textwrap.dedent(
        f"""
        import resource, subprocess, sys
        subprocess.run([sys.executable, "-m", "img2dataset_ng", {str(url_list)!r}, "--input_format", "csv",
                        "--output_folder", {str(tmp_path / "out")!r}, "--thread_count", "32", "--timeout", "20"],
                       check=True, capture_output=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
        """
    )
    peak_mib = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    statuses = read_metadata(tmp_path / "out").column("error_message").to_pylist()
    assert statuses.count("image dimensions too large") == 12 and statuses.count("too large") == 12
    # decoding one bomb alone would take 2.7-10 GB; 8 endless bodies are capped at 50 MB each
    print("peak worker RSS MiB:", peak_mib)
    assert peak_mib < 1500, peak_mib


@pytest.mark.parametrize("hash_type", ["md5", "sha256", "sha512"])
def test_verify_hash_and_compute_hash(tmp_path, server, hash_type):
    good, bad = server.url("/img/33x33.jpg"), server.url("/img/34x34.jpg")
    digest = getattr(hashlib, hash_type)(urllib.request.urlopen(good).read()).hexdigest()
    rows = [{"url": good, "expected": digest}, {"url": bad, "expected": digest}, {"url": good, "expected": None}]
    url_list = write_url_list(rows, tmp_path / "u.parquet", "parquet")
    download(
        str(url_list),
        input_format="parquet",
        output_folder=str(tmp_path / "out"),
        thread_count=3,
        verify_hash=["expected", hash_type],
        compute_hash=hash_type,
        save_additional_columns=["expected"],
    )
    table = read_metadata(tmp_path / "out")
    assert table.column_names[-1] == hash_type
    got = [(r["status"], r["error_message"], r[hash_type]) for r in table.to_pylist()]
    assert got == [
        ("success", None, digest),
        (DOWNLOAD_FAILS, "hash mismatch", None),
        (DOWNLOAD_FAILS, "hash mismatch", None),
    ]


def test_user_agent_carries_the_token(tmp_path, server):
    url_list = write_url_list([{"url": server.url("/img/35x35.jpg")}], tmp_path / "u.csv", "csv")
    download(str(url_list), input_format="csv", output_folder=str(tmp_path / "out"), user_agent_token="mybot")
    agent = server.httpd.user_agents["/img/35x35.jpg"]
    assert agent.startswith("Mozilla/5.0") and "img2dataset-ng; mybot)" in agent
