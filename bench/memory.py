"""Peak memory of one worker process at the default 256 threads, over large bodies and large decodes.

    .venv/bin/python bench/memory.py                    # ours (default budget and 2 GiB) and img2dataset 1.47

The stream: `--bodies` urls of a `--body-mib` MiB body (random bytes: held while downloading, then
refused as no image) interleaved with `--decodes` urls of a 9000 x 9000 PNG (a few hundred KiB
that decodes to 243 MB of pixels). nginx serves them on 127.0.0.1 at once, so every thread holds
a body at the same time unless something stops it. Without a budget a process could hold
`thread_count x max_download_bytes` (12.5 GiB at the defaults); ours holds at most `memory_budget`
of bodies and decodes (half each; the default is min(4 GiB, half the machine's memory / processes)),
plus the interpreter, libraries and the reorder buffer. Reported: the peak RSS of the largest process
of each run, and the documented budget it must stay under (`memory_budget` + 600 MiB).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from compare import OURS, run_tool  # noqa: E402
from reader_rss import ensure_img2dataset  # noqa: E402
from server import Nginx  # noqa: E402

from img2dataset_ng.budget import memory_budget  # noqa: E402

BASELINE_MIB = 600  # interpreter, pyarrow, OpenCV, threads' stacks, the reorder buffer: what a budget does not cover


def make_corpus(folder: Path, body_mib: int) -> None:
    rng = np.random.default_rng(0)
    (folder / "body.bin").write_bytes(rng.integers(0, 256, body_mib << 20, dtype=np.uint8).tobytes())
    image = np.zeros((9000, 9000, 3), np.uint8)
    image[::97] = 255  # a few lines, so that the PNG is small but not trivially so
    cv2.imwrite(str(folder / "huge.png"), image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=256)
    parser.add_argument("--body-mib", type=int, default=24)
    parser.add_argument("--decodes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=256)
    parser.add_argument("--budgets-mib", type=int, nargs="*", default=[0, 2048], help="0: the default budget")
    parser.add_argument("--skip-theirs", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=BENCH))
    work.chmod(0o755)  # nginx's worker process reads the corpus as another user
    corpus = work / "corpus"
    corpus.mkdir()
    make_corpus(corpus, args.body_mib)
    with Nginx(corpus) as nginx:
        urls = [f"{nginx.base}/body.bin?{i}" for i in range(args.bodies)]
        step = max(1, args.bodies // max(1, args.decodes))
        for i in range(args.decodes):
            urls.insert(i * (step + 1), f"{nginx.base}/huge.png?{i}")
        url_list = work / "urls.parquet"
        pq.write_table(pa.table({"url": urls}), url_list)
        common = [str(url_list), "--input_format", "parquet", "--output_format", "webdataset"]
        common += ["--processes_count", "1", "--thread_count", str(args.threads), "--timeout", "60"]
        common += ["--number_sample_per_shard", str(len(urls))]
        rows = []
        runs = [("img2dataset-ng", budget) for budget in args.budgets_mib]
        if not args.skip_theirs:
            runs.append(("img2dataset 1.47", None))
        for tool, budget_mib in runs:
            output = work / "out"
            if budget_mib is None:
                command = [str(ensure_img2dataset().parent / "img2dataset"), *common]
                limit = "none"
            else:
                command = [str(OURS), *common, "--max_host_concurrency", str(args.threads)]  # one local host
                if budget_mib:
                    command += ["--memory_budget", str(budget_mib << 20)]
                budget = memory_budget(budget_mib << 20 if budget_mib else None, 1) >> 20
                limit = f"{budget + BASELINE_MIB:,}"
                tool = f"{tool}, memory_budget {'default ' if not budget_mib else ''}{budget:,} MiB"
            run = run_tool(tool, [*command, "--output_folder", str(output)], output)
            rows.append((tool, run.peak_rss_mib, limit, run.successes, run.wall))
            print(f"{tool}: peak {run.peak_rss_mib:,.0f} MiB in {run.wall:.0f} s", flush=True)
    print(
        f"\n{args.bodies} bodies of {args.body_mib} MiB and {args.decodes} decodes of 9000x9000, "
        f"1 process x {args.threads} threads\n"
    )
    print("| run | peak RSS of the worker (MiB) | documented limit (MiB) | successes | wall (s) |")
    print("|---|---:|---:|---:|---:|")
    for tool, peak, limit, successes, wall in rows:
        print(f"| {tool} | {peak:,.0f} | {limit} | {successes} | {wall:.0f} |")
    over = [row for row in rows if row[2] != "none" and row[1] > float(row[2].replace(",", ""))]
    shutil.rmtree(work, ignore_errors=True)
    if over:
        sys.exit(f"over the documented limit: {over}")


if __name__ == "__main__":
    main()
