"""Metadata tables built without pandas (img2dataset_ng/arrow.py): the same tables as pyarrow's own
conversion, and a worker process that never imports pandas."""

from __future__ import annotations

import math
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img2dataset_ng import Sample, Stage, download
from img2dataset_ng.arrow import array, table
from tests.outputs import write_url_list

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("width", pa.int32()),
        ("size", pa.int64()),
        ("score", pa.float64()),
        ("ok", pa.bool_()),
        ("jpg", pa.binary()),
        ("embedding", pa.list_(pa.float32(), 3)),
        ("nothing", pa.null()),
        ("tags", pa.list_(pa.string())),  # not built here: through pa.array
    ]
)


def rows(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        gap = rng.random() < 0.3  # a null in every column now and then
        row = {
            "key": None if gap else f"{i:09d}-é",
            "status": "success" if i % 3 else "failed_to_download",
            "width": None if gap else int(rng.integers(-(2**31), 2**31)),
            "size": int(rng.integers(0, 2**62)),
            "score": None if gap else float(rng.normal()),
            "ok": None if gap else bool(i % 2),
            "jpg": None if gap else rng.bytes(int(rng.integers(0, 50))),
            "embedding": None if gap else (rng.normal(size=3).astype(np.float32) if i % 2 else [0.5, 1.0, -2.0]),
            "tags": None if gap else ["a", "b"][: i % 3],
        }
        if i % 5 == 0:
            del row["score"]  # a missing key is a null
        out.append(row)
    return out


@pytest.mark.parametrize("count", [0, 1, 7, 500])
def test_the_same_table_as_pyarrows_conversion(count):
    built = table(rows(count), SCHEMA)
    expected = pa.Table.from_pylist(rows(count), schema=SCHEMA)
    assert built.schema == expected.schema
    assert built.equals(expected)
    built.validate(full=True)


def test_nan_stays_a_number_and_odd_values_go_through_pyarrow():
    assert math.isnan(array([float("nan"), None], pa.float64())[0].as_py())
    assert array([float("nan"), None], pa.float64()).null_count == 1
    assert array([1, 2.5], pa.float32()).to_pylist() == [1.0, 2.5]
    assert array([1.5], pa.int64()).equals(pa.array([1.5], pa.int64()))  # whatever pyarrow makes of it
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        array(["x"], pa.int32())
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError)):
        array([[1.0, 2.0]], pa.list_(pa.float32(), 3))


class PandasSeen(Stage):
    """Records whether pandas was imported in this worker process when the sample came."""

    def __init__(self, config=None) -> None:
        pass

    def columns(self) -> list[pa.Field]:
        return [pa.field("pandas_imported", pa.bool_())]

    def __call__(self, sample: Sample) -> None:
        sample.fields["pandas_imported"] = "pandas" in sys.modules


@pytest.mark.parametrize("output_format", ["webdataset", "parquet"])
def test_a_worker_never_imports_pandas(tmp_path, server, output_format):
    """One worker process downloads three shards, then reads them back as input: its later samples would
    see pandas if writing or reading a shard had imported it."""
    urls = write_url_list(
        [{"url": server.url(f"/img/{40 + i}x30.jpg")} for i in range(6)], tmp_path / "u.parquet", "parquet"
    )
    common = {"number_sample_per_shard": 2, "processes_count": 1, "thread_count": 1,
              "stages": ["tests.test_arrow:PandasSeen"]}  # fmt: skip
    download(str(urls), input_format="parquet", output_folder=str(tmp_path / "out"), output_format=output_format,
             **common)  # fmt: skip
    download(str(tmp_path / "out"), input_format=output_format, output_folder=str(tmp_path / "again"),
             output_format="parquet", **common)  # fmt: skip
    for folder in ("out", "again"):
        seen = pq.read_table(tmp_path / folder / "00002.parquet").column("pandas_imported").to_pylist()
        assert seen == [False, False], f"pandas was imported in the worker ({folder})"
