"""The same input and options give byte-identical shards, whatever order the samples finish in."""

from __future__ import annotations

from pathlib import Path

import pytest

from img2dataset_ng import download
from tests.outputs import write_url_list


def url_list(tmp_path: Path, server) -> Path:
    """Successes and failures with captions; delays that differ per row, so rows finish out of order."""
    rows = []
    for i in range(14):
        delay = (0.3, 0.0, 0.15, 0.05)[i % 4]
        path = "/status/404" if i % 6 == 4 else "/corrupt.png" if i == 9 else f"/img/{50 + 7 * i}x40.jpg"
        rows.append({"url": server.url(f"/slow/{delay}{path}"), "caption": f"caption {i}"})
    return write_url_list(rows, tmp_path / "urls.parquet", "parquet")


def shard_files(folder: Path) -> dict[str, bytes]:
    """Every file of the output but the stats files (they hold the run's times)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith("_stats.json")
    }


@pytest.mark.parametrize("output_format", ["webdataset", "parquet", "tfrecord", "files"])
def test_two_runs_give_byte_identical_shards(tmp_path, server, output_format):
    """Run twice with the same options, then once more with one thread (which finishes rows in
    order, where 7 threads finish them as their delays end): all three are byte-identical."""
    urls = url_list(tmp_path, server)
    outputs = []
    for run, threads in (("a", 7), ("b", 7), ("c", 1)):
        download(
            str(urls),
            input_format="parquet",
            caption_col="caption",
            output_folder=str(tmp_path / run),
            output_format=output_format,
            number_sample_per_shard=7,
            processes_count=2,
            thread_count=threads,
        )
        outputs.append(shard_files(tmp_path / run))
    first = outputs[0]
    # the run record; 11 successes: 2 shards of metadata, plus tars (and their wids index) / tfrecords, or 3
    # files per success
    assert len(first) == 1 + {"webdataset": 5, "parquet": 2, "tfrecord": 4, "files": 2 + 3 * 11}[output_format]
    for other in outputs[1:]:
        assert sorted(other) == sorted(first)
        assert [name for name in first if first[name] != other[name]] == []
