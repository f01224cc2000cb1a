"""Politeness: how hard each tool hits one host, and what one throttled host costs all the others.

    unshare --net sh -c 'ip link set lo up && exec .venv/bin/python bench/politeness.py --rounds 2'

A web crawl is a few big hosts and a long tail; one of the big ones rate-limits. A polite downloader
keeps its concurrency per host low, backs off when told 429 Too Many Requests, and still keeps the
other hosts busy. This measures it from the server's side, where it shows:

- 50 hostnames, h00.bench.test .. h49.bench.test, all served by one Python server on 127.0.0.1
  (tests/server.py's virtual hosts: it tells hosts apart by the Host header and counts requests,
  concurrent requests and 429s per host). h00 holds `--throttled-share` of the urls and admits
  `--rate` requests per sliding second, answering the rest 429 with Retry-After; the other urls
  spread over h01..h49 with a Zipf skew. Every response waits `--latency-ms` (a web server's
  latency: concurrency, not CPU alone, then bounds the throughput, and per-host peaks show).
- Images: web-like JPEGs of 400x300 to 800x600 (bench/corpus.py's `photo`), made once, served
  from memory at a distinct path per url.
- Names: img2dataset 1.47 has no option to resolve names itself, so each tool runs in a mount
  namespace of its own (`unshare --mount`, we are root) where /etc/hosts is bind-mounted over by
  a file that maps the 50 names to 127.0.0.1: both tools resolve them the ordinary way, and each
  url names its host in the Host header. The bench process itself is not in that namespace.
- Both tools run their command line with the same options (image_size 256, webdataset, 2
  processes x 32 threads, retries 3, 500 urls per shard so that both processes work), alternating
  over rounds, each in its own process group, killed as a group when it ends (or times out).

Per run: the highest number of concurrent requests one host got (max over hosts, and on h00), the
429s h00 sent, successes per second overall (wall of the whole run), and successes per second on
the unthrottled hosts (successes on h01..h49 over the time from the first request the server saw to
the last response it gave one of h01..h49: what the throttled host cost the rest); the server's
CPU (this process: the benchmark itself only waits) shows it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from compare import print_ratio  # noqa: E402
from corpus import photo  # noqa: E402
from reader_rss import CHILD_ENV, ensure_img2dataset  # noqa: E402

from tests.server import ImageServer, Throttle  # noqa: E402

OURS = BENCH.parent / ".venv" / "bin" / "img2dataset-ng"
WORK = BENCH / ".work"
DOMAIN = "bench.test"


@dataclass
class Run:
    tool: str
    wall: float
    tool_cpu: float
    server_cpu: float
    successes: int
    throttled_successes: int
    span_unthrottled: float  # first request seen -> last response of an unthrottled host
    span_throttled: float  # first request seen -> last response of the throttled host
    peak_host: str
    peak_max: int
    peak_throttled: int
    sent_429: int
    requests: int
    leftovers: int  # processes of the tool's group still alive when it exited, then killed
    top_errors: list[tuple[str, int]]

    @property
    def rate(self) -> float:
        return self.successes / self.wall

    @property
    def rate_unthrottled(self) -> float:
        return (self.successes - self.throttled_successes) / max(self.span_unthrottled, 1e-9)


# --- the corpus: hosts, urls, images --------------------------------------------------------


def host_names(count: int) -> list[str]:
    return [f"h{i:02d}.{DOMAIN}" for i in range(count)]


def url_hosts(count: int, hosts: list[str], throttled_share: float, seed: int) -> list[str]:
    """One host per url, shuffled: hosts[0] gets `throttled_share`, the rest a Zipf skew (1/rank)."""
    rng = random.Random(seed)
    throttled = round(count * throttled_share)
    others = hosts[1:]
    weights = [1 / rank for rank in range(1, len(others) + 1)]
    chosen = [hosts[0]] * throttled + rng.choices(others, weights, k=count - throttled)
    rng.shuffle(chosen)
    return chosen


def make_images(count: int, seed: int) -> list[bytes]:
    """`count` web-like JPEGs from 400x300 to 800x600, in several aspect ratios."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        width = int(rng.integers(400, 801))
        height = int(np.clip(width / rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4]), 300, 600))
        ok, data = cv2.imencode(
            ".jpg", photo(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 92))]
        )
        assert ok
        images.append(data.tobytes())
    return images


def serve_corpus(server: ImageServer, hosts_of_urls: list[str], images: list[bytes]) -> list[str]:
    """Puts one image per url on the server (every host serves every path); returns the urls."""
    urls = []
    for index, host in enumerate(hosts_of_urls):
        path = f"/photos/{index:06d}.jpg"
        server.put(path, images[index % len(images)])
        urls.append(server.host_url(host, path))
    return urls


def configure(server: ImageServer, hosts: list[str], args: argparse.Namespace) -> None:
    delay = args.latency_ms / 1000
    for host in hosts:
        server.configure_host(host, delay=delay)
    server.configure_host(hosts[0], throttle=Throttle(rate=args.rate, retry_after=args.retry_after), delay=delay)


# --- names: a mount namespace per tool, with its own /etc/hosts -----------------------------


def write_hosts_file(path: Path, hosts: list[str]) -> Path:
    original = Path("/etc/hosts").read_text()
    path.write_text(original.rstrip("\n") + "\n" + "".join(f"127.0.0.1 {host}\n" for host in hosts))
    return path


def with_hosts_file(hosts_file: Path, command: list[str]) -> list[str]:
    """`command` run in a private mount namespace where `hosts_file` is /etc/hosts."""
    mount = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mount} && exec "$0" "$@"', *command]


def check_names(hosts_file: Path, hosts: list[str]) -> None:
    """The names resolve inside the namespace (and the way both tools resolve: getaddrinfo)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise SystemExit("politeness.py needs root and unshare: each tool gets its own /etc/hosts (unshare --mount)")
    probe = f"import socket; print(socket.getaddrinfo({hosts[-1]!r}, 80)[0][4][0])"
    result = subprocess.run(with_hosts_file(hosts_file, [sys.executable, "-c", probe]), capture_output=True, text=True)
    if result.returncode != 0 or result.stdout.strip() != "127.0.0.1":
        raise SystemExit(f"{hosts[-1]} does not resolve to 127.0.0.1 in a private mount namespace: {result.stderr}")


# --- one run of one tool --------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def kill_group(pgid: int) -> int:
    """Ends every process left in the group (TERM, then KILL after 5 s); returns how many there were."""
    left = group_members(pgid)
    if left:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
    return len(left)


def log_tail(log: Path, lines: int = 20) -> str:
    """The end of a run's log, for an error message (the work folder, logs included, goes at exit)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def run_process(tool: str, command: list[str], log: Path, timeout: float) -> tuple[int, float, int]:
    """Runs `command` in a process group of its own; exit code, its CPU seconds, leftover processes."""
    with open(log, "wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=CHILD_ENV, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                return child.returncode, usage.ru_utime + usage.ru_stime, kill_group(child.pid)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tool} still running after {timeout:.0f} s; its log ends:\n{log_tail(log)}")
            time.sleep(0.1)
    finally:
        kill_group(child.pid)  # whatever happened: no process of this run outlives it
        if child.returncode is None:
            child.wait()


def read_results(folder: Path) -> pa.Table:
    tables = [pq.read_table(p, columns=["url", "status", "error_message"]) for p in sorted(folder.glob("*.parquet"))]
    return pa.concat_tables(tables) if tables else pa.table({"url": [], "status": [], "error_message": []})


def top_errors(table: pa.Table, count: int = 3) -> list[tuple[str, int]]:
    errors: dict[str, int] = {}
    for status, message in zip(table.column("status").to_pylist(), table.column("error_message").to_pylist()):
        if status != "success":
            errors[str(message)[:60]] = errors.get(str(message)[:60], 0) + 1
    return sorted(errors.items(), key=lambda item: -item[1])[:count]


def server_view(server: ImageServer, throttled: str) -> dict:
    """Peaks, 429s, requests and the span of the unthrottled hosts, as the server saw them."""
    stats = {host: server.host_stats(host) for host in server.seen_hosts()}
    stats = {host: s for host, s in stats.items() if host.endswith(DOMAIN)}
    peak_host = max(stats, key=lambda host: stats[host].peak)
    first = min(s.first_start for s in stats.values())
    last = max(s.last_end for host, s in stats.items() if host != throttled)
    return {
        "peak_host": peak_host,
        "peak_max": stats[peak_host].peak,
        "peak_throttled": stats[throttled].peak if throttled in stats else 0,
        "sent_429": sum(s.throttled for s in stats.values()),
        "requests": sum(s.requests for s in stats.values()),
        "span_unthrottled": last - first,
        "span_throttled": stats[throttled].last_end - first if throttled in stats else 0.0,
    }


def run_tool(tool: str, command: list[str], output: Path, server: ImageServer, throttled: str, timeout: float) -> Run:
    shutil.rmtree(output, ignore_errors=True)
    server.reset_counts()
    cpu_before, start = time.process_time(), time.monotonic()
    log = output.parent / f"{output.name}.log"
    code, tool_cpu, leftovers = run_process(tool, command, log, timeout)
    wall, server_cpu = time.monotonic() - start, time.process_time() - cpu_before
    if code != 0:
        raise SystemExit(f"{tool} exited with {code}; its log ends:\n{log_tail(log)}")
    table = read_results(output)
    statuses, urls = table.column("status").to_pylist(), table.column("url").to_pylist()
    success_hosts = [urllib.parse.urlsplit(u).hostname for u, s in zip(urls, statuses) if s == "success"]
    return Run(
        tool=tool,
        wall=wall,
        tool_cpu=tool_cpu,
        server_cpu=server_cpu,
        successes=len(success_hosts),
        throttled_successes=success_hosts.count(throttled),
        leftovers=leftovers,
        top_errors=top_errors(table),
        **server_view(server, throttled),
    )


# --- the benchmark --------------------------------------------------------------------------


def common_options(url_list: Path, args: argparse.Namespace) -> list[str]:
    options = {
        "url_list": url_list,
        "input_format": "parquet",
        "output_format": "webdataset",
        "image_size": 256,
        "resize_mode": "border",
        "processes_count": args.processes,
        "thread_count": args.threads,
        "number_sample_per_shard": args.per_shard,
        "retries": args.retries,
        "timeout": args.timeout,
    }
    return [part for name, value in options.items() for part in (f"--{name}", str(value))]


def describe(run: Run, round_: int) -> str:
    return (
        f"round {round_} {run.tool}: {run.successes} successes ({run.throttled_successes} on the throttled host) "
        f"in {run.wall:.1f} s = {run.rate:.1f}/s; unthrottled {run.rate_unthrottled:.1f}/s; "
        f"last response: unthrottled hosts {run.span_unthrottled:.1f} s, throttled host {run.span_throttled:.1f} s; "
        f"peak per host {run.peak_max} ({run.peak_host}), throttled host {run.peak_throttled}; "
        f"{run.sent_429} x 429 of {run.requests} requests; server CPU {run.server_cpu:.1f} s "
        f"({100 * run.server_cpu / run.wall:.0f}% of a core), tool CPU {run.tool_cpu:.0f} s; "
        f"leftover processes killed: {run.leftovers}; top failures: {run.top_errors}"
    )


def ours_politeness(extra: str) -> str:
    """Which per-host politeness options img2dataset-ng has, and how they were set (results are labelled with it)."""
    help_text = subprocess.run([str(OURS), "--help"], capture_output=True, text=True, env=CHILD_ENV).stdout
    names = ("max_host_concurrency", "min_host_interval", "respect_robots_txt")
    present = [name for name in names if name in help_text]
    if not present:
        return "without per-host politeness options"
    return f"with {', '.join(present)} ({f'and {extra}' if extra else 'defaults'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="urls (default 5000)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tool, alternating (default 2)")
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--throttled-share", type=float, default=0.03, help="share of the urls on h00 (default 0.03)")
    parser.add_argument("--rate", type=int, default=10, help="requests per second h00 admits (default 10)")
    parser.add_argument("--retry-after", type=int, default=1, help="the Retry-After of h00's 429s (default 1)")
    parser.add_argument("--latency-ms", type=int, default=100, help="every response waits this long (default 100)")
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs served (default 64)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=10, help="each tool's per-request timeout (default 10)")
    parser.add_argument("--run-timeout", type=float, default=1200, help="kill a run after this many seconds")
    parser.add_argument(
        "--ours-extra", default="", help="more options for img2dataset-ng, e.g. '--min_host_interval 0'"
    )
    parser.add_argument("--skip-theirs", action="store_true", help="run only img2dataset-ng")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tools = [("img2dataset-ng", [str(OURS)], shlex.split(args.ours_extra))]
    if not args.skip_theirs:
        tools.insert(0, ("img2dataset 1.47", [str(ensure_img2dataset().parent / "img2dataset")], []))
    hosts = host_names(args.hosts)
    WORK.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="politeness-", dir=WORK))
    runs: list[Run] = []
    try:
        hosts_file = write_hosts_file(work / "hosts", hosts)
        check_names(hosts_file, hosts)
        images = make_images(args.images, args.seed)
        with ImageServer() as server:
            configure(server, hosts, args)
            urls = serve_corpus(server, url_hosts(args.count, hosts, args.throttled_share, args.seed), images)
            url_list = work / "urls.parquet"
            pq.write_table(pa.table({"url": urls}), url_list)
            for round_ in range(args.rounds):
                for tool, binary, extra in tools if round_ % 2 == 0 else tools[::-1]:
                    output = work / "out"
                    command = with_hosts_file(
                        hosts_file, [*binary, *common_options(url_list, args), *extra, "--output_folder", str(output)]
                    )
                    run = run_tool(tool, command, output, server, hosts[0], args.run_timeout)
                    runs.append(run)
                    print(describe(run, round_ + 1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(runs, args, hosts[0], ours_politeness(args.ours_extra))


def report(runs: list[Run], args: argparse.Namespace, throttled: str, ours: str) -> None:
    by_tool: dict[str, list[Run]] = {}
    for run in runs:
        by_tool.setdefault(run.tool, []).append(run)
    print(
        f"\n{args.count} urls on {args.hosts} hosts, {args.throttled_share:.0%} on {throttled} (admits {args.rate} "
        f"requests/s, then 429 with Retry-After {args.retry_after}), {args.latency_ms} ms per response; "
        f"processes={args.processes}, threads={args.threads}, retries={args.retries}, {args.per_shard} per shard, "
        f"{args.rounds} rounds (A/B alternating); medians over rounds, peaks are maxima; img2dataset-ng {ours}\n"
    )
    print(
        "| tool | peak concurrent requests on one host | on the throttled host | 429s received | successes "
        "(throttled host) | successes/s | successes/s, unthrottled hosts | wall (s) | server CPU (% of a core) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tool, tool_runs in by_tool.items():

        def median(metric, runs=tool_runs):
            return statistics.median(metric(r) for r in runs)

        print(
            f"| {tool} | {max(r.peak_max for r in tool_runs)} | {max(r.peak_throttled for r in tool_runs)} | "
            f"{median(lambda r: r.sent_429):.0f} | {median(lambda r: r.successes):.0f} "
            f"({median(lambda r: r.throttled_successes):.0f}) | {median(lambda r: r.rate):.1f} | "
            f"{median(lambda r: r.rate_unthrottled):.1f} | {median(lambda r: r.wall):.1f} | "
            f"{median(lambda r: 100 * r.server_cpu / r.wall):.0f} |"
        )
    print_ratio(by_tool, lambda run: run.rate_unthrottled, "ours/1.47 successes/s on the unthrottled hosts")


if __name__ == "__main__":
    main()
