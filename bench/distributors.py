"""samples/s of the three distributors on the same url list, served by nginx on 127.0.0.1.

    .venv/bin/python bench/distributors.py --count 2000 --rounds 1

Each run uses the same settings (processes_count, thread_count, shard size, webdataset output,
image_size 256 border). "samples/s" counts from the first shard to the last (session start-up
excluded); "wall" includes starting Spark or Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import CORPUS, make_corpus  # noqa: E402
from server import Nginx  # noqa: E402

from img2dataset_ng import download  # noqa: E402

DISTRIBUTORS = ["multiprocessing", "pyspark", "ray"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--distributors", nargs="+", default=DISTRIBUTORS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    names = make_corpus(args.count)
    work = Path(tempfile.mkdtemp(prefix="bench-distributors-"))
    results: dict[str, list[tuple[float, float, int]]] = {d: [] for d in args.distributors}
    try:
        with Nginx(CORPUS) as nginx:
            url_list = work / "urls.parquet"
            pq.write_table(pa.table({"url": [f"{nginx.base}/{name}" for name in names]}), url_list)
            for _ in range(args.rounds):
                for distributor in args.distributors:
                    output = work / distributor
                    start = time.monotonic()
                    summary = download(
                        str(url_list),
                        input_format="parquet",
                        output_folder=str(output),
                        output_format="webdataset",
                        processes_count=args.processes,
                        thread_count=args.threads,
                        max_host_concurrency=args.threads,  # one local host serves everything
                        number_sample_per_shard=args.per_shard,
                        distributor=distributor,
                        progress=False,
                    )
                    wall = time.monotonic() - start
                    results[distributor].append((summary.samples_per_second, wall, summary.successes))
                    shutil.rmtree(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.count} urls, processes_count={args.processes}, thread_count={args.threads}, "
        f"{args.per_shard} per shard, {args.rounds} round(s)\n"
    )
    print("| distributor | samples/s | wall (s) | successes |")
    print("|---|---:|---:|---:|")
    for distributor, runs in results.items():
        rate = sum(r[0] for r in runs) / len(runs)
        wall = sum(r[1] for r in runs) / len(runs)
        print(f"| {distributor} | {rate:.1f} | {wall:.1f} | {runs[-1][2]} |")


if __name__ == "__main__":
    main()
