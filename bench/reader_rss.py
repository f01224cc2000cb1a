"""Reader benchmark: peak RSS (and time) while sharding a big parquet url list, ours vs img2dataset 1.47.

Each tool shards the same file in its own child process (bench/_shard_child.py, ours under .venv,
theirs under bench/.venv-img2dataset, installed here on first use), into its own temp folder under
bench/.work that is deleted afterwards. A child's peak RSS is the ru_maxrss that os.wait4 returns
for that one child. The parent then reads every shard file back: both tools must have written the
same shards (same count, same rows, same first and last url in each) covering every input row.

    .venv/bin/python bench/reader_rss.py                          # 10M rows, both tools
    .venv/bin/python bench/reader_rss.py --rows 1000000 10000000  # one table row per size and tool
    .venv/bin/python bench/reader_rss.py --parquet my.parquet --skip-theirs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from make_url_parquet import default_path, make_url_parquet, parquet_rows

BENCH = Path(__file__).resolve().parent
OURS_PYTHON = BENCH.parent / ".venv" / "bin" / "python"
THEIRS_VENV = BENCH / ".venv-img2dataset"
THEIRS_PYTHON = THEIRS_VENV / "bin" / "python"
THEIRS_REQUIREMENT = "img2dataset==1.47.0"
CHILD = BENCH / "_shard_child.py"
WORK = BENCH / ".work"
# albumentations (imported by img2dataset) asks PyPI for its newest version on import otherwise
CHILD_ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}


@dataclass(frozen=True)
class ShardSummary:
    rows: int
    first_url: str
    last_url: str


@dataclass(frozen=True)
class Run:
    tool: str
    input_rows: int
    shards: list[ShardSummary]
    peak_rss_mib: float
    rss_imported_mib: float
    sharding_s: float
    first_shard_s: float
    process_s: float

    @property
    def rows_seen(self) -> int:
        return sum(s.rows for s in self.shards)


def ensure_img2dataset() -> Path:
    """The python of bench/.venv-img2dataset, with img2dataset 1.47 installed there if missing."""

    def importable() -> bool:
        check = [str(THEIRS_PYTHON), "-c", "import img2dataset.reader"]
        return THEIRS_PYTHON.exists() and subprocess.run(check, env=CHILD_ENV, capture_output=True).returncode == 0

    if not importable():
        if not THEIRS_PYTHON.exists():
            print(f"creating {THEIRS_VENV}", flush=True)
            subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(THEIRS_VENV)], check=True)
        print(f"installing {THEIRS_REQUIREMENT} into {THEIRS_VENV}", flush=True)
        subprocess.run([str(THEIRS_PYTHON), "-m", "pip", "install", "-q", THEIRS_REQUIREMENT], check=True)
        if not importable():
            raise SystemExit(f"img2dataset still not importable from {THEIRS_PYTHON}")
    return THEIRS_PYTHON


def warm_page_cache(path: Path) -> None:
    """Read the file once so that neither tool pays for a cold disk read the other does not."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def read_back(shards: list[tuple[int, str]]) -> list[ShardSummary]:
    """Row count and first/last url of each shard file, in shard id order; the ids must be 0..n-1."""
    ids = [shard_id for shard_id, _ in shards]
    if sorted(ids) != list(range(len(ids))):
        raise AssertionError(f"shard ids are not 0..{len(ids) - 1}: {sorted(ids)[:10]}...")
    summaries = []
    for _, path in sorted(shards):
        with pa.memory_map(path.removeprefix("file://")) as source:
            reader = pa.ipc.open_file(source)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            urls = [b.column("url") for b in batches if b.num_rows]
            summaries.append(ShardSummary(sum(b.num_rows for b in batches), urls[0][0].as_py(), urls[-1][-1].as_py()))
    return summaries


def run_tool(tool: str, python: Path, parquet: Path, input_rows: int, per_shard: int) -> Run:
    WORK.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"reader_rss_{tool}_", dir=WORK))
    try:
        result_path = tmp / "result.json"
        command = [str(python), str(CHILD), tool, str(parquet), str(tmp / "shards"), str(per_shard), str(result_path)]
        print(f"[{tool}] {input_rows:,} rows: sharding {parquet.name} ...", flush=True)
        os.sync()  # no run pays for writing back what an earlier run left dirty in the page cache
        started = time.monotonic()
        child = subprocess.Popen(command, env=CHILD_ENV, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not a max over all children
        process_s = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise SystemExit(f"[{tool}] child failed with exit code {child.returncode}: {' '.join(command)}")
        result = json.loads(result_path.read_text())
        peak = usage.ru_maxrss / 1024  # KiB on Linux
        if abs(peak - result["hwm_mib"]) > max(8.0, 0.05 * peak):
            print(f"[{tool}] warning: wait4 peak {peak:.0f} MiB but the child's VmHWM is {result['hwm_mib']:.0f} MiB")
        return Run(
            tool=tool,
            input_rows=input_rows,
            shards=read_back([(shard_id, path) for shard_id, path in result["shards"]]),
            peak_rss_mib=peak,
            rss_imported_mib=result["rss_imported_mib"],
            sharding_s=result["sharding_s"],
            first_shard_s=result["first_shard_s"],
            process_s=process_s,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(runs: list[Run], per_shard: int) -> None:
    """Every run covers all input rows in ceil(rows / per_shard) shards; the tools' shards agree."""
    for run in runs:
        expected = math.ceil(run.input_rows / per_shard)
        assert len(run.shards) == expected, f"{run.tool}: {len(run.shards)} shards, expected {expected}"
        assert run.rows_seen == run.input_rows, f"{run.tool}: {run.rows_seen} rows in shards of {run.input_rows}"
    for run in runs[1:]:
        assert run.shards == runs[0].shards, f"{run.tool} and {runs[0].tool} wrote different shards"


def table(runs: list[Run]) -> str:
    lines = [
        "| input rows | tool | shards | rows in shards | peak RSS (MiB) | RSS after imports (MiB) "
        "| peak − imports (MiB) | sharding (s) | first shard after (s) | process wall (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        label = "ours (img2dataset-ng)" if r.tool == "ours" else "img2dataset 1.47"
        lines.append(
            f"| {r.input_rows:,} | {label} | {len(r.shards):,} | {r.rows_seen:,} | {r.peak_rss_mib:,.0f} "
            f"| {r.rss_imported_mib:,.0f} | {r.peak_rss_mib - r.rss_imported_mib:,.0f} | {r.sharding_s:.1f} "
            f"| {r.first_shard_s:.2f} | {r.process_s:.1f} |"
        )
    return "\n".join(lines)


def ratios(runs: list[Run]) -> list[str]:
    by = {(r.input_rows, r.tool): r for r in runs}
    lines = []
    for rows in sorted({r.input_rows for r in runs}):
        ours, theirs = by.get((rows, "ours")), by.get((rows, "theirs"))
        if ours and theirs:
            lines.append(
                f"- {rows:,} rows: peak RSS theirs/ours = {theirs.peak_rss_mib / ours.peak_rss_mib:.1f}x "
                f"({theirs.peak_rss_mib:,.0f} / {ours.peak_rss_mib:,.0f} MiB); "
                f"sharding time theirs/ours = {theirs.sharding_s / ours.sharding_s:.2f}x"
            )
    sizes = sorted({r.input_rows for r in runs})
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for tool in ("ours", "theirs"):
            a, b = by.get((small, tool)), by.get((large, tool))
            if a and b:
                lines.append(
                    f"- {tool}: peak RSS {a.peak_rss_mib:,.0f} MiB at {small:,} rows -> {b.peak_rss_mib:,.0f} MiB "
                    f"at {large:,} rows (x{b.peak_rss_mib / a.peak_rss_mib:.2f} for x{large / small:g} rows)"
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[10_000_000],
        help="url list size(s); each is made under bench/.corpus/ if missing (default 10M)",
    )
    parser.add_argument(
        "--parquet",
        type=Path,
        default=None,
        help="use this url list instead (made with --rows rows if it does not exist)",
    )
    parser.add_argument("--per-shard", type=int, default=10_000, help="number_sample_per_shard (default 10000)")
    parser.add_argument("--skip-theirs", action="store_true", help="run only ours")
    parser.add_argument(
        "--ensure-only", action="store_true", help="only install img2dataset 1.47 and make the url lists, then stop"
    )
    args = parser.parse_args()

    if args.parquet is not None:
        if len(args.rows) != 1:
            parser.error("--parquet takes a single --rows value")
        rows = parquet_rows(args.parquet)
        if rows is None:
            rows = args.rows[0]
            make_url_parquet(args.parquet, rows)
        corpora = [(args.parquet, rows)]
    else:
        corpora = [(make_url_parquet(default_path(rows), rows), rows) for rows in args.rows]

    tools = [("ours", OURS_PYTHON)]
    if not args.skip_theirs:
        tools.append(("theirs", ensure_img2dataset()))
    if args.ensure_only:
        return

    runs: list[Run] = []
    for parquet, rows in corpora:
        warm_page_cache(parquet)
        size_runs = [run_tool(tool, python, parquet, rows, args.per_shard) for tool, python in tools]
        check(size_runs, args.per_shard)
        runs += size_runs

    print()
    print(table(runs))
    print()
    print("\n".join(ratios(runs)))


if __name__ == "__main__":
    main()
