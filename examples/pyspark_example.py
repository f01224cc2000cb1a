"""Download a url list on a Spark cluster: the driver script for the pex file.

    PYSPARK_PYTHON=./img2dataset.pex SPARK_MASTER=spark://MASTER:7077 \
        ./img2dataset.pex examples/pyspark_example.py urls.parquet s3://bucket/dataset

Every worker runs the same pex as its Python (PYSPARK_PYTHON), so nothing needs installing on
the cluster. Environment: SPARK_MASTER (default local[*]), SPARK_EXECUTOR_MEMORY, SPARK_DRIVER_HOST.
The Spark settings below are the ones that matter for a download (see docs/distributed.md).
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from img2dataset_ng import download


def spark_session() -> SparkSession:
    builder = (
        SparkSession.builder.master(os.environ.get("SPARK_MASTER", "local[*]"))
        .appName("img2dataset-ng")
        # a fixed set of executors: shards are long tasks, and dynamic allocation would kill idle ones
        .config("spark.dynamicAllocation.enabled", "false")
        # a task (a shard) that fails is retried, on another executor if its own died
        .config("spark.task.maxFailures", "10")
        # two attempts of one shard at once would write the same files: img2dataset-ng refuses it
        .config("spark.speculation", "false")
        .config("spark.executor.memory", os.environ.get("SPARK_EXECUTOR_MEMORY", "4g"))
        .config("spark.ui.showConsoleProgress", "false")
    )
    if "PYSPARK_PYTHON" in os.environ:  # the pex, so that executors have everything
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    if "SPARK_DRIVER_HOST" in os.environ:
        builder = builder.config("spark.driver.host", os.environ["SPARK_DRIVER_HOST"])
    return builder.getOrCreate()


def main() -> None:
    url_list = sys.argv[1] if len(sys.argv) > 1 else "urls.parquet"
    output_folder = sys.argv[2] if len(sys.argv) > 2 else "dataset"
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)
    spark = spark_session()
    try:
        summary = download(
            url_list,
            input_format=url_list.rsplit(".", 1)[-1] if url_list.endswith((".parquet", ".csv", ".tsv")) else "txt",
            url_col="url",
            output_folder=output_folder,
            output_format="webdataset",
            image_size=256,
            resize_mode="keep_ratio",
            thread_count=64,
            number_sample_per_shard=10000
            if "NUMBER_SAMPLE_PER_SHARD" not in os.environ
            else int(os.environ["NUMBER_SAMPLE_PER_SHARD"]),
            distributor="pyspark",  # uses the session above
        )
    finally:
        spark.stop()
    print(summary.line())
    sys.exit(1 if summary.failed_shards else 0)


if __name__ == "__main__":
    main()
