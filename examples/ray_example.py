"""Download a url list on a Ray cluster (or a local Ray) with `distributor="ray"`.

    python examples/ray_example.py [URL_LIST] [OUTPUT_FOLDER]
    RAY_ADDRESS=10.0.0.1:6379 python examples/ray_example.py urls.parquet s3://bucket/dataset

URL_LIST (default: urls.txt): one image url per line, or a .parquet/.csv/.jsonl/... file with a
`url` column (and maybe `caption`, for parquet); OUTPUT_FOLDER (default: ray_output).

Which Ray: the cluster at `RAY_ADDRESS` when that is set (`RAY_ADDRESS=auto`: the one started
with `ray start --head` on this machine); else a local Ray started here with one worker per core,
and stopped at the end. On a real cluster, OUTPUT_FOLDER must be a location every node reaches
under the same url (s3://, gs://, a shared mount): each shard is written by whichever node runs
it. See docs/distributed.md for setting up the cluster.

We connect to Ray ourselves (instead of letting `download()` do it) to show where the connection's
options go: `runtime_env` passes environment variables, credentials for example, to the workers.
`download()` uses a connection that is already open and leaves it open.
"""

from __future__ import annotations

import logging
import os
import sys

import pyarrow.parquet as pq
import ray

from img2dataset_ng import ConfigError, InputError, download

# environment variables the workers need too (storage credentials), passed on when set here
WORKER_ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")
WORKER_ENV = {name: os.environ[name] for name in WORKER_ENV_NAMES if name in os.environ}


def input_format_of(url_list: str) -> str:
    """txt, csv, tsv, json, jsonl (each maybe .gz) or parquet, from the file's extension; txt otherwise."""
    name = url_list.rstrip("/").lower()
    for fmt in ("parquet", "txt", "csv", "tsv", "jsonl", "json"):
        for suffix in (f".{fmt}", f".{fmt}.gz"):
            if name.endswith(suffix) and suffix != ".parquet.gz":
                return suffix[1:]
    return "txt"


def caption_col_of(url_list: str, input_format: str) -> str | None:
    """`caption` when a parquet url list has that column."""
    if input_format == "parquet" and os.path.isfile(url_list) and "caption" in pq.read_schema(url_list).names:
        return "caption"
    return None


def connect() -> None:
    """Connect to the cluster at RAY_ADDRESS, else start a local Ray with one worker per core."""
    runtime_env = {"env_vars": WORKER_ENV} if WORKER_ENV else None
    address = os.environ.get("RAY_ADDRESS")  # "10.0.0.1:6379"; "auto": the cluster started on this machine
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, runtime_env=runtime_env)


def main(argv: list[str]) -> int:
    if len(argv) > 2 or any(arg in ("-h", "--help") for arg in argv):
        print(__doc__)
        return 2
    url_list = argv[0] if argv else "urls.txt"
    output_folder = argv[1] if len(argv) > 1 else "ray_output"
    input_format = input_format_of(url_list)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("img2dataset_ng").setLevel(logging.INFO)
    connect()
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        print(f"Ray cluster with {cpus} CPUs on {len(ray.nodes())} node(s)")
        summary = download(
            url_list,
            input_format=input_format,
            caption_col=caption_col_of(url_list, input_format),
            output_folder=output_folder,
            output_format="webdataset",
            image_size=256,
            number_sample_per_shard=1000,  # many more shards than CPUs keeps every node busy to the end
            thread_count=32,  # concurrent downloads in each task (one task = one shard = one CPU)
            retries=1,
            distributor="ray",
            max_shard_retry=2,
        )
    except (ConfigError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()  # disconnects; a cluster started by `ray start` keeps running
    print(summary.line())
    if summary.failed_shards:
        print(f"shards that failed as a whole: {summary.failed_shards}; run again to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
