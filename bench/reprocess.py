"""Decode once: a perceptual hash computed during the download, or by reading the shards back afterwards.

    .venv/bin/python bench/reprocess.py --count 2000 --rounds 3

On the benchmark corpus (bench/corpus.py, served by nginx), per round:

- img2dataset 1.47: the download alone (image_size 256, webdataset), the reference;
- ours, one pass: the same download with `compute_phash` (the hash is taken from the pixels the resize
  stage encoded: no second decode);
- ours, two passes: the same download without the hash, then a reprocess of its shards
  (`input_format="webdataset"`) that only adds the hash (`resize_mode="no"`, stored bytes kept), which
  decodes every stored image again and rewrites the shards.

CPU seconds per 1000 samples (user + sys of the whole process tree) and wall time, medians over rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from compare import OURS, Run, run_tool  # noqa: E402
from corpus import CORPUS, make_corpus  # noqa: E402
from reader_rss import ensure_img2dataset  # noqa: E402
from server import Nginx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="images in the corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=500)
    args = parser.parse_args()

    theirs = ensure_img2dataset().parent / "img2dataset"
    names = make_corpus(args.count)
    work = Path(tempfile.mkdtemp(prefix="bench-reprocess-", dir=BENCH))
    runs: dict[str, list[Run]] = {}
    try:
        with Nginx(CORPUS) as nginx:
            url_list = work / "urls.parquet"
            pq.write_table(pa.table({"url": [f"http://127.0.0.1:{nginx.port}/{name}" for name in names]}), url_list)
            common = ["--output_format", "webdataset", "--processes_count", str(args.processes)]
            common += ["--thread_count", str(args.threads), "--number_sample_per_shard", str(args.per_shard)]
            download = [str(url_list), "--input_format", "parquet", "--image_size", "256", "--timeout", "30"]
            ours = [str(OURS), "--max_host_concurrency", str(args.threads)]  # one local host: no per-host cap
            first, second = work / "first", work / "second"
            for round_ in range(args.rounds):
                steps = {
                    "img2dataset 1.47, download": [[str(theirs), *download, *common, "--output_folder", str(first)]],
                    "img2dataset-ng, download with compute_phash": [
                        [*ours, *download, *common, "--compute_phash", "True", "--output_folder", str(first)]
                    ],
                    "img2dataset-ng, download then reprocess with compute_phash": [
                        [*ours, *download, *common, "--output_folder", str(first)],
                        [*ours, str(first), "--input_format", "webdataset", *common, "--resize_mode", "no"]
                        + ["--skip_reencode", "True", "--compute_phash", "True", "--output_folder", str(second)],
                    ],
                }
                order = list(steps) if round_ % 2 == 0 else list(steps)[::-1]
                for name in order:
                    parts = []
                    for command in steps[name]:
                        output = Path(command[command.index("--output_folder") + 1])
                        parts.append(run_tool(name, command, output))
                    run = Run(name, parts[0].successes, sum(p.wall for p in parts), sum(p.cpu for p in parts), 0.0)
                    runs.setdefault(name, []).append(run)
                    print(f"round {round_ + 1} {name}: {run.cpu_per_1000:.1f} CPU s/1000, {run.wall:.1f} s", flush=True)
                    shutil.rmtree(first, ignore_errors=True)
                    shutil.rmtree(second, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.count} images, processes={args.processes}, threads={args.threads}, {args.rounds} rounds\n")
    print("| run | CPU s per 1000 samples (median) | wall s (median) | successes |")
    print("|---|---:|---:|---:|")
    for name, name_runs in runs.items():
        cpu = statistics.median(r.cpu_per_1000 for r in name_runs)
        wall = statistics.median(r.wall for r in name_runs)
        print(f"| {name} | {cpu:.1f} | {wall:.1f} | {name_runs[0].successes} |")


if __name__ == "__main__":
    main()
