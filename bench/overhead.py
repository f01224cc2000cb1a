"""Where a download worker's CPU goes, per success: one process runs the shards itself (a distributor
registered here, as a third party would), on a corpus served by nginx on 127.0.0.1.

It reports CPU ms per success, the share of each stage (the CPU time of the thread running it) and of
Python's garbage collector (timed with `gc.callbacks`, per generation); the rest is the worker's own
(threads, ordering, writing the shard) and the run's start-up.

    .venv/bin/python bench/overhead.py --mix web --count 3000 --threads 32
    .venv/bin/python bench/overhead.py --mix web --gc-threshold 10000   # gen-0 threshold tried
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from corpus import MIXES, corpus_folder, make_corpus  # noqa: E402
from server import Nginx  # noqa: E402

import img2dataset_ng.worker  # noqa: E402
from img2dataset_ng import download, register_distributor  # noqa: E402
from img2dataset_ng.stages.base import StageError  # noqa: E402


class HereDistributor:
    """The shards one after the other in this process."""

    reports_progress = False
    workers = 1

    def __init__(self, config) -> None:
        pass

    def map(self, fn, shards, on_progress=None):
        for shard in shards:
            yield shard, fn(shard, None)

    def close(self) -> None:
        pass


class GcTimer:
    """Seconds spent in each generation's collections, and how many there were."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.thread_time()  # the collecting thread holds the GIL: its CPU is the cost
        else:
            self.seconds[info["generation"]] += time.thread_time() - self.started
            self.count[info["generation"]] += 1


STAGE_CPU: dict[str, float] = {}


def timed_run_stages(stages, sample):
    """The worker's `run_stages`, with each stage's thread CPU time added up by stage class."""
    for stage in stages:
        if not sample.ok:
            break
        start = time.thread_time()
        try:
            stage(sample)
        except StageError as error:
            sample.fail(error.status or stage.failure, error.message)
        name = type(stage).__name__
        STAGE_CPU[name] = STAGE_CPU.get(name, 0.0) + time.thread_time() - start
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", choices=MIXES, default="web")
    parser.add_argument("--count", type=int, default=3000, help="urls, cycling over the corpus")
    parser.add_argument("--corpus", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--gc-threshold", type=int, default=0, help="gen-0 threshold to try (0: Python's)")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after start-up")
    args = parser.parse_args()

    register_distributor("here", HereDistributor)
    img2dataset_ng.worker.run_stages = timed_run_stages
    names = make_corpus(args.corpus, args.mix)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-", dir=BENCH))
    timer = GcTimer()
    try:
        with Nginx(corpus_folder(args.mix)) as nginx:
            url_list = work / "urls.parquet"
            urls = [f"{nginx.base}/{names[i % len(names)]}" for i in range(args.count)]
            pq.write_table(pa.table({"url": urls}), url_list)
            if args.gc_threshold:
                gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
            if args.gc_freeze:
                gc.freeze()
            gc.callbacks.append(timer)
            cpu, wall = time.process_time(), time.monotonic()
            summary = download(
                str(url_list),
                input_format="parquet",
                output_folder=str(work / "out"),
                output_format="webdataset",
                image_size=256,
                resize_mode="keep_ratio",
                thread_count=args.threads,
                number_sample_per_shard=args.per_shard,
                max_host_concurrency=args.threads,
                distributor="here",
                progress=False,
            )
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            gc.callbacks.remove(timer)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = 1000 / max(summary.successes, 1)
    print(f"{summary.successes} successes of {summary.count}, {summary.successes / wall:.1f}/s on one process")
    print(f"CPU {cpu * per:.2f} ms per success; in the garbage collector {sum(timer.seconds) * per:.3f} ms", end="")
    print(f" ({100 * sum(timer.seconds) / cpu:.1f}%)")
    for name, seconds in sorted(STAGE_CPU.items(), key=lambda item: -item[1]):
        print(f"  stage {name}: {seconds * per:.2f} ms per success")
    for generation in range(3):
        print(
            f"  generation {generation}: {timer.count[generation]} collections, "
            f"{timer.seconds[generation] * per:.3f} ms per success"
        )


if __name__ == "__main__":
    main()
