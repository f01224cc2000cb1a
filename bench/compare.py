"""Side by side: img2dataset 1.47 and img2dataset-ng on the same local corpus, alternating A/B.

    .venv/bin/python bench/compare.py                      # CPU-bound: nginx serves at once
    .venv/bin/python bench/compare.py --mix web            # the same on the web-like mix (bench/corpus.py)
    .venv/bin/python bench/compare.py --latency-ms 200     # latency-bound: every response waits 200 ms

Both tools run as their command-line programs with the same options (image_size 256, the same
resize mode, webdataset output, the same processes, threads and shard size), each in its own
process tree, alternating over rounds. The url list (`--count`, 10,000 by default: long enough
that start-up is a small part of a run) cycles over the corpus (`--corpus` images of `--mix`). For
each run: successful samples/s (wall), CPU seconds per 1000 samples (user + sys of the whole process
tree), and peak RSS of the largest process.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from corpus import MIXES, corpus_folder, make_corpus  # noqa: E402
from reader_rss import ensure_img2dataset  # noqa: E402
from server import DelayProxy, Nginx  # noqa: E402

OURS = BENCH.parent / ".venv" / "bin" / "img2dataset-ng"


@dataclass
class Run:
    tool: str
    successes: int
    wall: float
    cpu: float
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.successes / self.wall

    @property
    def cpu_per_1000(self) -> float:
        return 1000 * self.cpu / max(self.successes, 1)


def successes(folder: Path) -> int:
    return sum(
        pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success")
        for p in folder.glob("*.parquet")
    )


def run_tool(tool: str, command: list[str], output: Path) -> Run:
    shutil.rmtree(output, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    # a fresh wrapper process per run, so that ru_maxrss is this run's peak and not an earlier one's
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    peak_kib = int(
        subprocess.run(
            [sys.executable, "-c", wrapper, *command],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
        ).stdout
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(tool, successes(output), wall, cpu, peak_kib / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10000, help="urls, cycling over the corpus")
    parser.add_argument("--corpus", type=int, default=2000, help="images in the corpus")
    parser.add_argument("--mix", choices=MIXES, default="heavy", help="the corpus (bench/corpus.py)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--resize-mode", default="keep_ratio")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay every response (latency mode)")
    args = parser.parse_args()

    theirs = ensure_img2dataset().parent / "img2dataset"
    names = make_corpus(args.corpus, args.mix)
    urls = [names[i % len(names)] for i in range(args.count)]
    work = Path(tempfile.mkdtemp(prefix="bench-compare-", dir=BENCH))
    runs: list[Run] = []
    try:
        with Nginx(corpus_folder(args.mix)) as nginx, DelayProxy(nginx.port, args.latency_ms / 1000) as server:
            url_list = work / "urls.parquet"
            pq.write_table(pa.table({"url": [f"{server.base}/{name}" for name in urls]}), url_list)
            common = [
                str(url_list),
                "--input_format",
                "parquet",
                "--output_format",
                "webdataset",
                "--image_size",
                "256",
                "--resize_mode",
                args.resize_mode,
                "--processes_count",
                str(args.processes),
                "--thread_count",
                str(args.threads),
                "--number_sample_per_shard",
                str(args.per_shard),
                "--timeout",
                "30",
            ]
            for round_ in range(args.rounds):
                order = [("img2dataset 1.47", theirs), ("img2dataset-ng", OURS)]
                for tool, binary in order if round_ % 2 == 0 else order[::-1]:
                    output = work / "out"
                    command = [str(binary), *common, "--output_folder", str(output)]
                    if binary == OURS:  # one local host serves the whole corpus: no per-host cap (see politeness.py)
                        command += ["--max_host_concurrency", str(args.threads)]
                    run = run_tool(tool, command, output)
                    runs.append(run)
                    print(
                        f"round {round_ + 1} {tool}: {run.rate:.1f} samples/s, {run.cpu_per_1000:.1f} CPU s/1000, "
                        f"peak {run.peak_rss_mib:.0f} MiB, {run.successes} successes",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, args)


def report(runs: list[Run], args: argparse.Namespace) -> None:
    by_tool: dict[str, list[Run]] = {}
    for run in runs:
        by_tool.setdefault(run.tool, []).append(run)
    mode = f"latency {args.latency_ms} ms per response" if args.latency_ms else "CPU-bound (no added latency)"
    print(
        f"\n{args.count} urls over the {args.mix} corpus ({args.corpus} images), {mode}, "
        f"resize_mode={args.resize_mode}, processes={args.processes}, threads={args.threads}, "
        f"{args.per_shard} per shard, {args.rounds} rounds (A/B alternating)\n"
    )
    print("| tool | successful samples/s (median, min-max) | CPU s per 1000 samples | peak RSS of a process (MiB) |")
    print("|---|---:|---:|---:|")
    for tool, tool_runs in by_tool.items():
        rates = [r.rate for r in tool_runs]
        print(
            f"| {tool} | {statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f}) | "
            f"{statistics.median(r.cpu_per_1000 for r in tool_runs):.1f} | "
            f"{max(r.peak_rss_mib for r in tool_runs):.0f} |"
        )
    print_ratio(by_tool, lambda run: run.rate, "ours/theirs samples/s")


def print_ratio(by_tool: dict[str, list], metric: Callable[[Any], float], label: str) -> None:
    """The median ratio of ours to img2dataset 1.47 over the rounds (they alternate), and each round's."""
    ours, theirs = by_tool.get("img2dataset-ng", []), by_tool.get("img2dataset 1.47", [])
    if ours and theirs:
        ratios = [metric(o) / metric(t) for o, t in zip(ours, theirs)]
        print(
            f"\n{label}: median {statistics.median(ratios):.2f}x (per round: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
