"""Helpers for tests: write url lists in every input format, read every output format back."""

from __future__ import annotations

import csv
import gzip
import json
import tarfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BASE_COLUMNS = ["url", "key", "status", "error_message", "width", "height", "original_width", "original_height"]


def write_url_list(rows: list[dict[str, Any]], path: Path, input_format: str) -> Path:
    """Write `rows` (dicts with the same keys) as a url list of `input_format` at `path`."""
    fmt, _, gz = input_format.partition(".")
    opener = (
        (lambda p: gzip.open(p, "wt", encoding="utf-8", newline=""))
        if gz
        else (lambda p: open(p, "w", encoding="utf-8", newline=""))
    )
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "txt":
        with opener(path) as f:
            f.write("".join(row["url"] + "\n" for row in rows))
    elif fmt in ("csv", "tsv"):
        with opener(path) as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "json":
        with opener(path) as f:
            json.dump(rows, f)
    elif fmt == "jsonl":
        with opener(path) as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
    else:
        raise ValueError(input_format)
    return path


def read_metadata(folder: Path) -> pa.Table:
    """All metadata parquet files of an output folder, in shard order."""
    files = sorted(p for p in folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in files]) if files else pa.table({})


def read_stats(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*_stats.json"))}


def tar_samples(path: Path) -> tuple[list[str], dict[str, dict[str, bytes]]]:
    """Member names in order, and samples grouped by key: {key: {extension: bytes}}."""
    names, samples = [], {}
    with tarfile.open(path) as tar:
        for member in tar:
            names.append(member.name)
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return names, samples


def tfrecord_examples(path: Path) -> list[dict[str, Any]]:
    """The Examples of a .tfrecord file, read with the independent `tfrecord` package.

    {feature: value}: a single bytes value as bytes, several as a list; numbers as lists.
    """
    from tfrecord.reader import tfrecord_loader

    return [
        {name: value.tolist() if hasattr(value, "tolist") else value for name, value in example.items()}
        for example in tfrecord_loader(str(path), None)
    ]


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes, decoded for real."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None, "stored image does not decode"
    return img.shape[1], img.shape[0]


def stored_images(folder: Path, output_format: str, encode_format: str = "jpg") -> dict[str, dict[str, Any]]:
    """{key: {"image": bytes, "json": dict, "txt": str | None}} for every stored sample."""
    out: dict[str, dict[str, Any]] = {}
    if output_format == "webdataset":
        for tar in sorted(folder.glob("*.tar")):
            _, samples = tar_samples(tar)
            for key, members in samples.items():
                out[key] = {
                    "image": members[encode_format],
                    "json": json.loads(members["json"]),
                    "txt": members["txt"].decode() if "txt" in members else None,
                }
    elif output_format == "files":
        for image in sorted(folder.glob(f"*/*.{encode_format}")):
            txt = image.with_suffix(".txt")
            out[image.stem] = {
                "image": image.read_bytes(),
                "json": json.loads(image.with_suffix(".json").read_text()),
                "txt": txt.read_text() if txt.exists() else None,
            }
    elif output_format == "parquet":
        table = read_metadata(folder)
        for row in table.to_pylist():
            if row[encode_format] is not None:
                out[row["key"]] = {"image": row[encode_format], "json": row, "txt": row.get("caption")}
    elif output_format == "tfrecord":
        for path in sorted(folder.glob("*.tfrecord")):
            for example in tfrecord_examples(path):
                fields = {
                    name: value[0] if isinstance(value, list) and len(value) == 1 else value
                    for name, value in example.items()
                    if name != encode_format
                }
                fields = {name: v.decode() if isinstance(v, bytes) else v for name, v in fields.items()}
                out[fields["key"]] = {"image": example[encode_format], "json": fields, "txt": fields.get("txt")}
    return out


class InProcessDistributor:
    """A distributor as a third party writes one: runs the shards one after the other in this process."""

    reports_progress = True
    seen: list[int] = []  # shard ids run, over all instances

    def __init__(self, config) -> None:
        self.config = config

    def map(self, fn, shards, on_progress=None):
        for shard in shards:
            InProcessDistributor.seen.append(shard.shard_id)
            try:
                outcome = fn(shard, on_progress or (lambda *_: None))
            except Exception as error:  # noqa: BLE001 - the shard's failure, for run_shards to retry
                outcome = error
            yield shard, outcome

    def close(self) -> None:
        pass
