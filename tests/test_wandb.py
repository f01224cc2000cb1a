"""enable_wandb under WANDB_MODE=offline: the metrics land in the offline run directory."""

from __future__ import annotations

import importlib.util
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from img2dataset_ng import ConfigError, download
from tests.outputs import read_metadata, write_url_list

pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768  # the run file is a LevelDB-style log: 32 KiB blocks of (crc, length, type, data) records


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def logged(path: Path) -> tuple[list[dict], dict]:
    """The history rows and the final summary of an offline run."""
    history, summary = [], {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
    return history, summary


def test_progress_and_errors_are_logged_offline(tmp_path, server, monkeypatch):
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [{"url": server.url(f"/img/{30 + i}x20.jpg")} for i in range(5)] + [{"url": server.url("/status/404")}] * 2
    url_list = write_url_list(rows, tmp_path / "u.csv", "csv")
    download(
        str(url_list),
        input_format="csv",
        output_folder=str(tmp_path / "out"),
        number_sample_per_shard=3,
        thread_count=4,
        enable_wandb=True,
        wandb_project="img2dataset-ng-test",
        storage_options={"secret": "do-not-log"},
    )
    assert read_metadata(tmp_path / "out").num_rows == 7

    runs = list((tmp_path / "WANDB_DIR" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    history, summary = logged(next(runs[0].glob("run-*.wandb")))
    progress = [row for row in history if "samples" in row]
    assert [row["shards_done"] for row in progress] == [1, 2, 3]  # logged while the run goes, shard by shard
    assert progress[-1]["samples"] == 7 and progress[-1]["successes"] == 5
    assert progress[-1]["success_rate"] == pytest.approx(5 / 7) and progress[-1]["samples_per_sec"] > 0
    table_ref = next(row for row in history if "errors/path" in row)
    assert table_ref["errors/_type"] == "table-file"
    table = json.loads((runs[0] / "files" / table_ref["errors/path"]).read_text())
    assert table["data"] == [["HTTP Error 404: Not Found", 2]]
    assert summary["failed_shards"] == 0
    config = json.dumps(
        [
            json.loads(i.value_json)
            for r in wandb_records(next(runs[0].glob("run-*.wandb")))
            if r.WhichOneof("record_type") == "config"
            for i in r.config.update
        ]
    )
    assert "do-not-log" not in config


def test_missing_wandb_is_a_clear_error_only_when_enabled(tmp_path, server, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    url_list = write_url_list([{"url": server.url("/img/10x10.jpg")}], tmp_path / "u.csv", "csv")
    with pytest.raises(
        ConfigError, match=r"enable_wandb needs the wandb package: pip install 'img2dataset-ng\[wandb\]'"
    ):
        download(str(url_list), input_format="csv", output_folder=str(tmp_path / "a"), enable_wandb=True)
    download(str(url_list), input_format="csv", output_folder=str(tmp_path / "b"), thread_count=1)
    assert read_metadata(tmp_path / "b").num_rows == 1
