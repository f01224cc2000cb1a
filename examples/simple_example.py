"""Download the images of a small url list with img2dataset-ng's Python API, on this machine.

    python examples/simple_example.py [URL_LIST] [OUTPUT_FOLDER]

URL_LIST (default: urls.txt) is a text file with one image url per line, or any other input
format, recognised by its extension: .csv, .tsv, .json, .jsonl, .parquet (each also .gz), with the
urls in a `url` column and, when there is one, the captions in a `caption` column.
OUTPUT_FOLDER (default: simple_output) receives webdataset shards: NNNNN.tar with the images
(resized to 256 px with white borders, as jpg), NNNNN.parquet with one metadata row per url and
NNNNN_stats.json per shard. Any fsspec url works for both (s3://bucket/path with s3fs installed).

Running it again with the same arguments finishes an interrupted run and skips the shards already
done (`incremental_mode="incremental"`, the default). The exit code is 0 when every shard finished,
1 when some shard failed as a whole (run it again to retry those), 2 on bad arguments.
"""

from __future__ import annotations

import logging
import os
import sys

import pyarrow.parquet as pq

from img2dataset_ng import ConfigError, InputError, download

INPUT_FORMATS = ("txt", "csv", "tsv", "json", "jsonl", "parquet")


def input_format_of(url_list: str) -> str:
    """The input format named by the file's extension (`urls.csv.gz` -> `csv.gz`); txt otherwise."""
    name = url_list.rstrip("/").rsplit("/", 1)[-1].lower()
    compressed = name.endswith(".gz")
    stem = name[:-3] if compressed else name
    for fmt in INPUT_FORMATS:
        if stem.endswith("." + fmt):
            return fmt + (".gz" if compressed and fmt != "parquet" else "")
    return "txt"


def has_caption_column(url_list: str, input_format: str) -> bool:
    """Whether a parquet/csv/tsv url list has a `caption` column (txt has only urls)."""
    if input_format == "parquet" and os.path.isfile(url_list):
        return "caption" in pq.read_schema(url_list).names
    if input_format in ("csv", "tsv") and os.path.isfile(url_list):
        with open(url_list, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("," if input_format == "csv" else "\t")
        return "caption" in (column.strip().strip('"') for column in header)
    return False


def main(argv: list[str]) -> int:
    if len(argv) > 2 or any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 2
    url_list = argv[0] if argv else "urls.txt"
    output_folder = argv[1] if len(argv) > 1 else "simple_output"
    input_format = input_format_of(url_list)

    # img2dataset-ng logs through `logging`; show its INFO messages (the summary line) only
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)
    try:
        summary = download(
            url_list,
            input_format=input_format,
            url_col="url",  # ignored for txt, where each line is one url
            caption_col="caption" if has_caption_column(url_list, input_format) else None,
            output_folder=output_folder,
            output_format="webdataset",
            image_size=256,
            resize_mode="border",
            encode_format="jpg",
            number_sample_per_shard=1000,  # a small list: small shards; 10000 (the default) for real runs
            processes_count=os.cpu_count() or 1,  # one process per core
            thread_count=32,  # concurrent downloads per process
            timeout=10,
            retries=1,
        )
    except (ConfigError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary.successes} of {summary.count} images downloaded ({summary.success_rate:.0%}) "
        f"into {summary.output_folder} in {summary.duration:.1f}s"
    )
    for reason, count in sorted(summary.status_dict.items(), key=lambda item: -item[1]):
        print(f"  {count:6d}  {reason}")
    if summary.failed_shards:
        print(f"shards that failed as a whole: {summary.failed_shards}; run again to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # required: each worker process re-imports this file
    sys.exit(main(sys.argv[1:]))
