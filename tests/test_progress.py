"""Progress a user can follow: the bar on a terminal, log lines elsewhere, failure reasons at the end.

The CLI runs in a subprocess whose stderr is a pipe, as under nohup or a scheduler; `download()`
runs under pytest, whose captured stderr is not a terminal either. The interval between periodic
lines (30 s) is made small so that short runs show several.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest

from img2dataset_ng import download, observers
from tests.outputs import read_metadata, write_url_list

# the CLI with the periodic-line interval made small, as a test's monkeypatch would
CLI = "import sys, img2dataset_ng.observers as o, img2dataset_ng.cli as c; o.LOG_EVERY = 0.2; sys.exit(c.main())"


def slow_and_failing(server, delay: float = 0.5) -> list[dict[str, str]]:
    """16 rows, 4 shards of 4: slow successes, and 6 failure reasons (404 three times, 403 twice)."""
    slow = f"/slow/{delay}/img/64x48.jpg"
    paths = [
        *(slow, slow, "/status/404", "/status/404"),
        *(slow, slow, "/status/404", "/status/403"),
        *(slow, "/status/403", "/status/500", "/status/401"),
        *(slow, "/status/400", "/status/410", "/img/64x48.jpg"),
    ]
    return [{"url": server.url(path)} for path in paths]


def progress_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("img2dataset_ng") and "progress:" in r.message]


def test_cli_outside_a_terminal_logs_progress_lines_then_the_top_failure_reasons(tmp_path, server):
    url_list = write_url_list(slow_and_failing(server), tmp_path / "urls.parquet", "parquet")
    output = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", CLI, str(url_list), "--input_format=parquet", f"--output_folder={output}"]
        + ["--number_sample_per_shard=4", "--thread_count=1", "--processes_count=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    err = run.stderr
    assert "\r" not in err and "downloading" not in err  # no carriage-return bar into a pipe
    lines = err.splitlines()

    # periodic lines while the shards run: the shard total (from the parquet footer) and an ETA
    running = [line for line in lines if "running; progress: shards done" in line]
    assert len(running) >= 3
    assert all(re.search(r"shards done [0-4]/4, samples \d+/16 \(", line) for line in running)
    assert any(re.search(r"shards done 0/4, samples [1-9]\d*/16 .* ETA \d\d:\d\d", line) for line in running)
    # and one line per finished shard, the last one complete
    done = [line for line in lines if re.search(r"shard \d done in [\d.]+s; progress:", line)]
    assert len(done) == 4
    assert re.search(
        r"shards done 4/4, samples 16/16 \(100\.0%\), success 43\.8%, .* samples/s, .* ETA 00:00$", done[-1]
    )

    # the end: the summary line, the top 5 of the 6 failure reasons with their counts, where each row's is
    end = lines[lines.index(next(line for line in lines if "4 shard(s) done: 16 samples" in line)) :]
    assert "top 5 of 6 failure reason(s), over 9 failed sample(s):" in end[1]
    reasons = [re.sub(r"^.*observers: ", "", line) for line in end[2:7]]
    assert reasons == [
        "  3  HTTP Error 404: Not Found",
        "  2  HTTP Error 403: Forbidden",
        "  1  HTTP Error 400: Bad Request",
        "  1  HTTP Error 401: Unauthorized",
        "  1  HTTP Error 410: Gone",
    ]
    assert f"the status and error_message columns of the NNNNN.parquet files in {output}" in end[7]
    assert len(end) == 8
    table = read_metadata(output)  # where the hint points: every row's reason
    assert table.column("error_message").to_pylist().count("HTTP Error 500: Internal Server Error") == 1


@pytest.mark.parametrize("input_format", ["csv", "parquet"])
def test_progress_true_draws_a_bar_with_a_total_and_a_percentage(tmp_path, server, capsys, caplog, input_format):
    caplog.set_level(logging.INFO, logger="img2dataset_ng")
    rows = [{"url": server.url("/img/40x30.jpg")}, {"url": server.url("/status/404")}] * 3
    url_list = write_url_list(rows, tmp_path / f"u.{input_format}", input_format)
    download(
        str(url_list),
        input_format=input_format,
        output_folder=str(tmp_path / "out"),
        number_sample_per_shard=2,
        thread_count=2,
        progress=True,
    )
    err = capsys.readouterr().err
    frames = [frame for frame in err.replace("\r", "\n").splitlines() if frame.startswith("downloading")]
    assert re.search(r"downloading: 100%\|.*\| 6/6 \[.*<00:00, .* samples/s, shards=3/3 success=50\.0%\]", frames[-1])
    if input_format == "parquet":  # the total is known from the footer before any sample is done
        assert any(re.search(r"\| 0/6 \[.*shards=0/3", frame) for frame in frames)
    assert progress_messages(caplog) == []  # the bar, not log lines


def test_progress_false_shows_no_bar_and_no_progress_lines_but_the_end_of_run(
    tmp_path, server, capsys, caplog, monkeypatch
):
    monkeypatch.setattr(observers, "LOG_EVERY", 0.1)
    caplog.set_level(logging.INFO, logger="img2dataset_ng")
    rows = [{"url": server.url("/slow/0.4/img/40x30.jpg")}, {"url": server.url("/status/404")}] * 3
    url_list = write_url_list(rows, tmp_path / "u.parquet", "parquet")
    download(
        str(url_list),
        input_format="parquet",
        output_folder=str(tmp_path / "out"),
        output_format="dummy",
        number_sample_per_shard=2,
        thread_count=1,
        progress=False,
    )
    err = capsys.readouterr().err
    assert "downloading" not in err and "\r" not in err
    assert progress_messages(caplog) == []
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("3 shard(s) done: 6 samples, 3 successes") for m in messages)
    assert "top 1 of 1 failure reason(s), over 3 failed sample(s):" in messages
    assert "  3  HTTP Error 404: Not Found" in messages
    assert "each row's reason is not kept: this output format writes no NNNNN.parquet files" in messages


@pytest.mark.parametrize("input_format", ["csv", "parquet"])
def test_by_default_outside_a_terminal_download_logs_lines_whose_total_leaves_out_done_shards(
    tmp_path, server, capsys, caplog, monkeypatch, input_format
):
    monkeypatch.setattr(observers, "LOG_EVERY", 0.1)
    caplog.set_level(logging.INFO, logger="img2dataset_ng")
    rows = [{"url": server.url("/slow/0.3/img/40x30.jpg")}, {"url": server.url("/status/404")}] * 3
    url_list = write_url_list(rows, tmp_path / f"u.{input_format}", input_format)
    output = tmp_path / "out"
    options = dict(input_format=input_format, output_folder=str(output), number_sample_per_shard=2, thread_count=1)
    download(str(url_list), **options)
    last = progress_messages(caplog)[-1]
    assert last.startswith("shard 2 done in") and "shards done 3/3, samples 6/6 (100.0%)" in last

    (output / "00001_stats.json").unlink()  # shard 1 unfinished: the next incremental run does only it
    caplog.clear()
    download(str(url_list), incremental_mode="incremental", **options)
    lines = progress_messages(caplog)
    assert lines and all(re.search(r"shards done [01]/1, samples \d/2\b", line) for line in lines)
    assert lines[-1].startswith("shard 1 done in") and "shards done 1/1, samples 2/2 (100.0%)" in lines[-1]
    assert "downloading" not in capsys.readouterr().err  # no bar: stderr is not a terminal
