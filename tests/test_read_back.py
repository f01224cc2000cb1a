"""What img2dataset-ng writes is read unchanged by the readers people use (see docs/output_formats.md).

One webdataset output (three shards, captions, one failed url) is made once, then read with
webdataset, Ray Data, Spark and Hugging Face `datasets`, each as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from img2dataset_ng import download
from tests.outputs import read_metadata, write_url_list

IMAGES = 11
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def webdataset_output(tmp_path_factory, server) -> Path:
    """12 urls (one fails with 404) with captions, 5 per shard: 00000.tar .. 00002.tar and their metadata."""
    tmp = tmp_path_factory.mktemp("readers")
    rows = [{"url": server.url(f"/img/64x48.jpg?seed={i}"), "caption": f"caption {i}"} for i in range(IMAGES)]
    rows.insert(3, {"url": server.url("/status/404"), "caption": "missing"})
    urls = write_url_list(rows, tmp / "urls.parquet", "parquet")
    output = tmp / "out"
    summary = download(
        str(urls),
        input_format="parquet",
        caption_col="caption",
        output_folder=str(output),
        output_format="webdataset",
        image_size=IMAGE_SIZE,
        number_sample_per_shard=5,
        thread_count=4,
    )
    assert summary.count == IMAGES + 1 and summary.successes == IMAGES and summary.shards_done == 3
    return output


def expected_samples(output: Path) -> dict[str, dict]:
    """{key: metadata row} of the successes, from the parquet metadata."""
    return {row["key"]: row for row in read_metadata(output).to_pylist() if row["status"] == "success"}


def test_webdataset_reads_the_tars(webdataset_output):
    wds = pytest.importorskip("webdataset")
    tars = [str(p) for p in sorted(webdataset_output.glob("*.tar"))]
    dataset = wds.WebDataset(tars, shardshuffle=False).decode("rgb8")
    samples = list(dataset)
    expected = expected_samples(webdataset_output)
    assert sorted(sample["__key__"] for sample in samples) == sorted(expected)
    for sample in samples:
        row = expected[sample["__key__"]]
        assert sample["jpg"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert sample["txt"] == row["caption"]
        assert sample["json"]["url"] == row["url"] and sample["json"]["key"] == sample["__key__"]
    # the usual training pipeline: tuples of (image, caption)
    pairs = list(wds.WebDataset(tars, shardshuffle=False).decode("rgb8").to_tuple("jpg", "txt"))
    assert len(pairs) == IMAGES and all(image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for image, _ in pairs)


def test_ray_data_reads_the_tars_and_the_metadata(webdataset_output):
    ray = pytest.importorskip("ray")
    # "local": our own instance, even when a test cluster is running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        folder = str(webdataset_output)
        images = ray.data.read_webdataset(folder, file_extensions=["tar"])  # the folder also holds .parquet/.json
        rows = images.take_all()
        expected = expected_samples(webdataset_output)
        assert sorted(row["__key__"] for row in rows) == sorted(expected)
        for row in rows:  # Ray's default decoder: images as arrays, json as dicts, txt as str
            assert row["jpg"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
            assert row["txt"] == expected[row["__key__"]]["caption"]
            assert row["json"]["key"] == row["__key__"]

        metadata = ray.data.read_parquet(folder, file_extensions=["parquet"])
        assert metadata.count() == IMAGES + 1
        statuses = [row["status"] for row in metadata.select_columns(["status"]).take_all()]
        assert statuses.count("success") == IMAGES
    finally:
        ray.shutdown()


def test_spark_reads_the_parquet_metadata(webdataset_output):
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("img2dataset-ng-readers")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        metadata = spark.read.parquet(str(webdataset_output) + "/*.parquet")
        assert metadata.columns[:4] == ["caption", "url", "key", "status"]
        counts = {
            (row["status"], row["error_message"]): row["count"]
            for row in metadata.groupBy("status", "error_message").count().collect()  # one query: each costs seconds
        }
        assert sum(counts.values()) == IMAGES + 1
        assert counts == {("success", None): IMAGES, ("failed_to_download", "HTTP Error 404: Not Found"): 1}
    finally:
        spark.stop()


HF_READ = """
import json
import sys
from pathlib import Path

import datasets

folder = Path(sys.argv[1])
tars = sorted(str(p) for p in folder.glob("*.tar"))
parquets = sorted(str(p) for p in folder.glob("*.parquet"))
images = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train")
metadata = datasets.load_dataset("parquet", data_files={"train": parquets}, split="train")
first = images[0]
print(json.dumps({
    "rows": images.num_rows,
    "keys": sorted(images["__key__"]),
    "size": list(first["jpg"].size),
    "caption_matches": first["txt"] == first["json"]["caption"],
    "metadata_rows": metadata.num_rows,
    "successes": sum(status == "success" for status in metadata["status"]),
}))
"""


def test_hugging_face_datasets_reads_tars_and_parquet_offline(webdataset_output, tmp_path):
    """In a fresh interpreter: `datasets` reads its offline switches when imported."""
    pytest.importorskip("datasets")
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HF_READ), str(webdataset_output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["rows"] == IMAGES and found["keys"] == sorted(expected_samples(webdataset_output))
    assert found["size"] == [IMAGE_SIZE, IMAGE_SIZE] and found["caption_matches"]
    assert found["metadata_rows"] == IMAGES + 1 and found["successes"] == IMAGES
