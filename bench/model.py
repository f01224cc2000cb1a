"""The model stage: images/s and CPU seconds per 1000 images, ours against a plain Ray Data pipeline.

    unshare --net sh -c 'ip link set lo up && exec .venv/bin/python bench/model.py --count 6000 --rounds 3'

The model is `tests/models.py`'s `small_cnn` with width 16, depth 4 and 64 outputs (four 3x3 convolutions
of 16 channels on a 224x224 input, the first with stride 2): about 3 ms of CPU per image on one core in
batches of 32, of the order of decoding a web image (the corpus averages about 10 ms per image for decode
and resize), so that neither the model nor the decoding is the whole cost. The same .onnx file and the same
batch size (`--batch-size`, default 32) in every run; onnxruntime on one intra-op thread per model, without
spinning, in ours and in Ray's actors alike.

Per round, on the url list of `--count` urls that cycle over the benchmark corpus (bench/corpus.py's
2000 images, served by nginx; the corpus itself is never remade with another count). The default, 6000
urls, keeps start-up (about 2 s for ours, 9 s for starting and stopping Ray) a small part of each run:

- (a0) ours, download only (image_size 256, webdataset, 2 processes x 32 threads): the reference;
- (a) ours, the same download with the model (`model`, `model_batch_size`, `model_save_npy`): the
  embeddings come from the pixels the resize stage already has, no second decode;
- (b) ours over the shards of (a0) with the model (`input_format="webdataset"`, `output_format="metadata"`,
  `resize_mode="no"`, `skip_reencode`, encode_format jpg): NNNNN.parquet + NNNNN.npy, no image written;
- (b, ray) the same with `distributor="ray"` (a local Ray of 2 CPUs, the model in a 1-CPU actor pool);
- (c) a plain Ray Data pipeline over the same shards, written as Ray's batch inference guide and
  performance tips recommend: `ray.data.read_webdataset`, the decode, shorter side to 224, center crop and
  ImageNet normalisation to NCHW float32 in `map_batches`, onnxruntime in an actor pool of `map_batches`
  with a callable class (the model loaded once per actor, `concurrency=`), batches of `--batch-size`,
  streaming execution, `write_parquet` of key + embedding. Local Ray with num_cpus=2, started and shut
  down inside the run (`--ray-configs` picks the layouts, see `RAY_CONFIGS`); its embeddings are checked
  to be (b)'s.

Every run is its own process tree, timed by `compare.run_tool` (wall, peak RSS) under a child subreaper
(`REAP_ALL`) that keeps what Ray's daemons leave orphaned in the tree. Its CPU (user + sys) is the larger of
RUSAGE_CHILDREN and a sampling of the tree in /proc (`TreeCpu`): Ray's raylet ignores SIGCHLD, so the CPU
of Ray's workers never reaches RUSAGE_CHILDREN. A Ray run that hangs is ended by a watchdog, reported and
left out of the medians. "images/s" is successful images over the wall time of the whole command
(start-up included); "work images/s" excludes start-up: ours from its first shard's start to its last
shard's end (stats files), Ray Data's from building the dataset to the end of `write_parquet` (after
`ray.init`). Medians over rounds; the order of the runs alternates by round, (a0) first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from compare import OURS, Run, run_tool  # noqa: E402
from corpus import CORPUS, make_corpus  # noqa: E402
from server import Nginx  # noqa: E402

HUNG = "_hung.json"  # left by a run that its watchdog ended
CORPUS_COUNT = 2000  # the corpus `make bench` makes: --count cycles over it instead of remaking it
WIDTH, DEPTH, DIM = 16, 4, 64  # small_cnn: about 3 ms of CPU per image on one core
SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Ray Data layouts on 2 CPUs (onnxruntime on one thread per model actor). Reads and writes are cheap
# (tar members, small parquet): at 1 CPU each (Ray's default) they hold a CPU slot that the model or the
# decode then cannot have, so the tuned layouts give them a quarter of a CPU.
# - guide: as the batch inference guide writes it: a stateless map_batches that decodes, crops and normalises
#   (tasks, 1 CPU), then the model class in map_batches with concurrency=1 (1 CPU), Ray's default resources
#   for the read and the write. Ray fuses the preprocessing into the actor (Task -> Actor fusion).
# - split: the preprocessing as tasks of 0.5 CPU (not fused: their resources differ; two at once, one CPU),
#   the model in an actor pool of 1 (1 CPU), read and write at 0.25 CPU;
# - split uint8: the same, but the tasks hand on uint8 crops (4x fewer bytes than float32) and the actor
#   normalises;
# - fused x2: two actors of 0.75 CPU that each decode, crop, normalise and run the model (as ours does in
#   each of its 2 processes), read and write at 0.25 CPU;
# - decode in read: read_webdataset's own `decoder=` decodes and crops (the read tasks, 1 CPU, never fused
#   into an actor), the actor (1 CPU) normalises and runs the model.
RAY_CONFIGS: dict[str, dict[str, Any]] = {
    "guide": {"io_cpus": None, "tasks": 1, "actors": 1, "actor_cpus": 1, "actor_does": "normalised"},
    "split": {"io_cpus": 0.25, "tasks": 0.5, "actors": 1, "actor_cpus": 1, "actor_does": "normalised"},
    "split uint8": {"io_cpus": 0.25, "tasks": 0.5, "actors": 1, "actor_cpus": 1, "actor_does": "crops"},
    "fused x2": {"io_cpus": 0.25, "tasks": None, "actors": 2, "actor_cpus": 0.75, "actor_does": "jpg"},
    "decode in read": {"io_cpus": None, "tasks": None, "actors": 1, "actor_cpus": 1, "actor_does": "crops"},
}
# tried on 1989 images, batch 32 (work images/s): guide 97, decode in read 81, fused x2 71, split 63,
# split uint8 62; batch 16, 64 or 128 within noise of 32 (bench/RESULTS.md)
DEFAULT_RAY_CONFIGS = ["guide", "decode in read"]

# Runs a command as a child subreaper: descendants orphaned by their parent (Ray's workers and daemons) are
# reparented here, stay in the run's tree for `TreeCpu` and are reaped (and ended 30 s after the command).
REAP_ALL = """
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
code = subprocess.run(sys.argv[1:]).returncode
deadline = time.monotonic() + 30
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > deadline:  # left behind by the run: ours to end, by pid
            for proc in os.listdir('/proc'):
                try:
                    stat = open(f'/proc/{proc}/stat').read()
                    if proc.isdigit() and int(stat.rsplit(')', 1)[1].split()[1]) == os.getpid():
                        os.kill(int(proc), signal.SIGKILL)
                except (OSError, IndexError, ValueError):
                    pass
        time.sleep(0.05)
sys.exit(code)
"""


@dataclasses.dataclass
class Result:
    run: Run
    work_rate: float  # successful images per second of work (start-up excluded)
    rusage_cpu: float = 0.0  # CPU seconds as RUSAGE_CHILDREN saw them
    proc_cpu: float = 0.0  # and as /proc did (`TreeCpu`); the run's is the larger
    hung: bool = False  # ended by its watchdog: left out of the medians


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:  # a run's own process (see `measure`)
        CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=6000, help="urls, cycling over the 2000-image corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32, help="the model's batch, in every run")
    parser.add_argument("--ray-configs", nargs="+", default=DEFAULT_RAY_CONFIGS, choices=RAY_CONFIGS)
    parser.add_argument("--no-ours-ray", action="store_true", help="skip the (b) row with distributor=ray")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH.parent))
    from tests.models import small_cnn

    names = make_corpus(CORPUS_COUNT)
    work = Path(tempfile.mkdtemp(prefix="bench-model-", dir=BENCH))
    results: dict[str, list[Result]] = {}
    ray_alone: list[Run] = []
    try:
        model = small_cnn(work / "model.onnx", dim=DIM, width=WIDTH, depth=DEPTH, size=SIZE)
        with Nginx(CORPUS) as nginx:
            url_list = work / "urls.parquet"
            urls = [f"{nginx.base}/{names[i % len(names)]}" for i in range(args.count)]
            urls = [url if i < len(names) else f"{url}?copy={i // len(names)}" for i, url in enumerate(urls)]
            pq.write_table(pa.table({"url": urls}), url_list)
            common = ["--processes_count", str(args.processes), "--thread_count", str(args.threads)]
            common += ["--number_sample_per_shard", str(args.per_shard)]
            with_model = ["--model", str(model), "--model_batch_size", str(args.batch_size)]
            with_model += ["--model_input_size", str(SIZE), "--model_save_npy", "True"]
            ours = [str(OURS), "--max_host_concurrency", str(args.threads)]  # one local host: no per-host cap
            download = [*ours, str(url_list), "--input_format", "parquet", "--output_format", "webdataset"]
            download += ["--image_size", "256", "--timeout", "30", *common]
            shards = work / "shards"  # (a0)'s output: the input of (b) and (c)
            over_shards = [*ours, str(shards), "--input_format", "webdataset", "--output_format", "metadata"]
            over_shards += ["--resize_mode", "no", "--skip_reencode", "True", "--encode_format", "jpg", *common]
            runs: dict[str, tuple[str, Callable[[Path], list[str]], Path]] = {  # name: kind, command, output
                "(a0) ours, download only": ("ours", lambda out: [*download, "--output_folder", str(out)], shards),
                "(a) ours, download with the model": (
                    "ours",
                    lambda out: [*download, *with_model, "--output_folder", str(out)],
                    work / "a",
                ),
                "(b) ours over the shards, multiprocessing": (
                    "ours",
                    lambda out: [*over_shards, *with_model, "--output_folder", str(out)],
                    work / "b",
                ),
            }
            timeout = 60 + args.count / 40  # a Ray run's watchdog: about 3x what one takes on this machine
            if not args.no_ours_ray:
                options = {"url_list": str(shards), "input_format": "webdataset", "output_format": "metadata"}
                options |= {"resize_mode": "no", "skip_reencode": True, "encode_format": "jpg"}
                options |= {"processes_count": args.processes, "thread_count": args.threads}
                options |= {"number_sample_per_shard": args.per_shard, "distributor": "ray", "model": str(model)}
                options |= {"model_batch_size": args.batch_size, "model_input_size": SIZE, "model_save_npy": True}
                options |= {"timeout": timeout}
                runs["(b) ours over the shards, distributor=ray"] = ("ours", child("ours-ray", options), work / "b-ray")
            for config in args.ray_configs:
                options = {"shards": str(shards), "model": str(model), "batch_size": args.batch_size}
                options |= {"config": config, "cpus": args.processes, "timeout": timeout}
                output = work / f"c-{config.replace(' ', '_')}"
                runs[f"(c) Ray Data, {config}"] = ("ray-data", child("ray-data", options), output)
            exclude = {nginx.process.pid}
            first, *others = runs  # (a0) first in every round: its shards are the input of (b) and (c)
            for round_ in range(args.rounds):
                for name in [first, *(others if round_ % 2 == 0 else others[::-1])]:
                    kind, command, output = runs[name]
                    result = measure(name, kind, command(output), output, exclude)
                    results.setdefault(name, []).append(result)
                    run = result.run
                    if result.hung:
                        print(f"round {round_ + 1} {name}: HUNG, ended after {timeout:.0f} s", flush=True)
                        continue
                    print(
                        f"round {round_ + 1} {name}: {run.rate:.1f} images/s ({result.work_rate:.1f} at work), "
                        f"{run.cpu_per_1000:.2f} CPU s/1000 (rusage {result.rusage_cpu:.1f} s, /proc "
                        f"{result.proc_cpu:.1f} s), {run.wall:.1f} s, {run.successes} images",
                        flush=True,
                    )
                    if kind == "ray-data":
                        check_same_outputs(runs["(b) ours over the shards, multiprocessing"][2], output)
                for _, _, output in runs.values():
                    shutil.rmtree(output, ignore_errors=True)
                if len(runs) > 3:  # Ray ran: its fixed cost, started and stopped with no work
                    idle = measure(
                        "Ray alone", "idle", child("ray-idle", {"cpus": args.processes})(work), work / "idle", exclude
                    )
                    ray_alone.append(idle.run)
                    print(
                        f"round {round_ + 1} Ray started and shut down, no work: {idle.run.wall:.1f} s, "
                        f"{idle.run.cpu:.1f} CPU s (rusage {idle.rusage_cpu:.1f}, /proc {idle.proc_cpu:.1f})",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, ray_alone, args)


def child(kind: str, options: dict[str, Any]) -> Callable[[Path], list[str]]:
    """The command of a run that is a Python function of this file (`CHILDREN`), not a command line."""
    return lambda out: [
        sys.executable,
        str(Path(__file__).resolve()),
        kind,
        json.dumps({**options, "output": str(out)}),
    ]


class TreeCpu:
    """CPU seconds of this process's descendants (but the subtrees of `exclude`), from /proc every
    `interval` s: the last utime + stime seen of each process. RUSAGE_CHILDREN misses the CPU of processes
    whose parent reaps them unseen: Ray's raylet ignores SIGCHLD, so its workers' CPU never reaches it.
    This misses at most `interval` s of each process's last CPU, and processes that live less than that."""

    def __init__(self, exclude: set[int], interval: float = 0.2):
        self.exclude, self.interval = exclude, interval
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> its CPU seconds
        self.stop = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def scan(self) -> None:
        parents: dict[int, list[tuple[int, int, float]]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except OSError:  # gone meanwhile
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / self.ticks
                parents.setdefault(int(fields[1]), []).append((int(entry), int(fields[19]), cpu))
        todo = [os.getpid()]
        while todo:
            for pid, start, cpu in parents.get(todo.pop(), []):
                if pid not in self.exclude:
                    self.seen[(pid, start)] = cpu
                    todo.append(pid)

    def __enter__(self) -> TreeCpu:
        def sample() -> None:
            while not self.stop.wait(self.interval):
                self.scan()

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def cpu(self) -> float:
        return sum(self.seen.values())


def measure(name: str, kind: str, command: list[str], output: Path, exclude: set[int]) -> Result:
    """`command` in its own process tree (every descendant reaped: `REAP_ALL`), timed by `run_tool`; its CPU
    is the larger of RUSAGE_CHILDREN's and /proc's (`TreeCpu`). `kind`: "ours" (the images/s at work from
    the shards' stats files), "ray-data" (from the child's timings), "idle" (no output)."""
    shutil.rmtree(output, ignore_errors=True)
    scratch = output.with_name(output.name + "-count")  # run_tool counts `status` rows: Ray Data's have none
    with TreeCpu(exclude) as tree:
        run = run_tool(name, [sys.executable, "-c", REAP_ALL, *command], output if kind == "ours" else scratch)
    result = Result(dataclasses.replace(run, cpu=max(run.cpu, tree.cpu)), 0.0, rusage_cpu=run.cpu, proc_cpu=tree.cpu)
    run = result.run
    if (output / HUNG).exists():
        result.hung = True
    elif kind == "ray-data":
        rows = sum(pq.read_metadata(p).num_rows for p in output.glob("*.parquet"))
        result.run = dataclasses.replace(run, successes=rows)
        result.work_rate = rows / json.loads((output / "_timings.json").read_text())["pipeline"]
    elif kind == "ours":
        stats = [json.loads(p.read_text()) for p in output.glob("*_stats.json")]
        result.work_rate = run.successes / (max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats))
    return result


def check_same_outputs(ours: Path, theirs: Path) -> None:
    """(b) and (c) did the same work: the same keys, and embeddings within float noise of each other."""
    if not ours.exists():  # (b) did not run yet in this round
        return
    a = pa.concat_tables(pq.read_table(p, columns=["key", "status", "embedding"]) for p in ours.glob("*.parquet"))
    a = a.to_pandas()
    a = a[a.status == "success"].set_index("key")
    b = pa.concat_tables(pq.read_table(p) for p in theirs.glob("*.parquet")).to_pandas().set_index("key")
    common = a.index.intersection(b.index)
    diff = max(float(np.abs(np.stack(a.loc[common].embedding) - np.stack(b.loc[common].embedding)).max()), 0.0)
    scale = float(np.abs(np.stack(a.loc[common].embedding)).mean())
    print(
        f"    same work as (b): {len(common)} of {len(a)}/{len(b)} keys in both, "
        f"max |diff| {diff:.2e} (mean |x| {scale:.2f})"
    )


def report(results: dict[str, list[Result]], ray_alone: list[Run], args: argparse.Namespace) -> None:
    print(
        f"\n{args.count} images (urls over the {CORPUS_COUNT}-image corpus), model small_cnn width {WIDTH} depth "
        f"{DEPTH} -> {DIM} values, batch {args.batch_size}, processes={args.processes}, threads={args.threads}, "
        f"{args.per_shard} per shard, {args.rounds} rounds, {os.cpu_count()} cores\n"
    )
    print(
        "| run | images/s (median, min-max) | work images/s | CPU s per 1000 images | wall s "
        "| peak RSS of a process (MiB) | images |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, dict[str, float]] = {}
    hangs = []
    for name, all_runs in results.items():
        runs = [r for r in all_runs if not r.hung]
        if len(runs) < len(all_runs):
            hangs.append(
                f"{name}: hung in {len(all_runs) - len(runs)} of {len(all_runs)} rounds (ended by the watchdog)"
            )
        if not runs:
            print(f"| {name} | hung in every round | | | | | |")
            continue
        rates = [r.run.rate for r in runs]
        m = medians[name] = {
            "rate": statistics.median(rates),
            "work": statistics.median(r.work_rate for r in runs),
            "cpu": statistics.median(r.run.cpu_per_1000 for r in runs),
            "wall": statistics.median(r.run.wall for r in runs),
        }
        print(
            f"| {name} | {m['rate']:.1f} ({min(rates):.1f}-{max(rates):.1f}) | {m['work']:.1f} | {m['cpu']:.2f} | "
            f"{m['wall']:.1f} | {max(r.run.peak_rss_mib for r in runs):.0f} | {runs[0].run.successes} |"
        )
    for line in hangs:
        print(f"\n{line}")
    if ray_alone:
        print(
            f"\nRay alone (ray.init(num_cpus={args.processes}) then ray.shutdown(), no work; in every Ray run above): "
            f"{statistics.median(r.wall for r in ray_alone):.1f} s wall, "
            f"{statistics.median(r.cpu for r in ray_alone):.1f} CPU s (median)"
        )
    a, a0 = medians["(a) ours, download with the model"], medians["(a0) ours, download only"]
    b = medians["(b) ours over the shards, multiprocessing"]
    c_name = max((n for n in medians if n.startswith("(c)")), key=lambda n: medians[n]["rate"], default=None)
    print()
    if c_name is not None:
        c = medians[c_name]
        print(
            f"b >= c (images/s, best c: {c_name}): {b['rate']:.1f} vs {c['rate']:.1f} "
            f"({b['rate'] / c['rate']:.2f}x): {'yes' if b['rate'] >= c['rate'] else 'NO'}; at work: "
            f"{b['work']:.1f} vs {c['work']:.1f} ({b['work'] / c['work']:.2f}x): "
            f"{'yes' if b['work'] >= c['work'] else 'NO'}"
        )
    two_passes = a0["cpu"] + b["cpu"]
    print(
        f"a < a0 + b (CPU s per 1000): {a['cpu']:.2f} vs {a0['cpu']:.2f} + {b['cpu']:.2f} = {two_passes:.2f} "
        f"({a['cpu'] / two_passes:.2f}x): {'yes' if a['cpu'] < two_passes else 'NO'}"
    )


# --- the runs that are Python functions: each in its own process, started by `measure` -----------------


def watchdog(options: dict[str, Any]) -> None:
    """A run that hangs (Ray: a task or actor that waits for a CPU it will never get) ends after
    `options["timeout"]` s, leaving `HUNG` in its output folder; REAP_ALL ends what it leaves behind."""

    def give_up() -> None:
        Path(options["output"]).mkdir(parents=True, exist_ok=True)
        Path(options["output"], HUNG).write_text(json.dumps({"timeout": options["timeout"]}))
        os._exit(0)

    threading.Timer(options["timeout"], give_up).start()


def ours_ray(options: dict[str, Any]) -> None:
    """(b) with distributor=ray on a local Ray of `processes_count` CPUs started here (never one found on the
    machine: address="local"), shut down at the end."""
    import ray

    from img2dataset_ng import download

    watchdog(options)
    ray.init(address="local", num_cpus=options["processes_count"], include_dashboard=False, log_to_driver=False)
    try:
        kwargs = {k: v for k, v in options.items() if k not in ("output", "timeout")}
        download(**kwargs, output_folder=options["output"], progress=False)
    finally:
        ray.shutdown()
    os._exit(0)  # the watchdog's timer


def decode_crop(data: bytes) -> np.ndarray:
    """The stored JPEG decoded (OpenCV, BGR), its center square resized to SIZE x SIZE (area when
    shrinking, bicubic when enlarging): uint8 SIZE x SIZE x 3, the shorter side resized then center cropped."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side != SIZE:
        square = cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_AREA if side > SIZE else cv2.INTER_CUBIC)
    return square


def normalise(crops: np.ndarray) -> np.ndarray:
    """A batch of uint8 BGR crops (N, H, W, 3) -> the model's input: RGB, (x / 255 - mean) / std, NCHW float32."""
    rgb = crops[..., ::-1].astype(np.float32)
    values = (rgb - np.asarray(MEAN, np.float32) * 255) / (np.asarray(STD, np.float32) * 255)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def crop_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import cv2

    cv2.setNumThreads(1)  # one CPU per task, as the resources say
    return {"key": batch["__key__"], "pixels": np.stack([decode_crop(data) for data in batch["jpg"]])}


def decode_crop_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """read_webdataset's decoder: one sample's stored bytes -> its uint8 crop, under the names the actor reads."""
    import cv2

    cv2.setNumThreads(1)
    return {"key": sample["__key__"], "pixels": decode_crop(sample["jpg"])}


def preprocess_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    cropped = crop_batch(batch)
    return {"key": cropped["key"], "pixels": normalise(cropped["pixels"])}


class Embedder:
    """The model, loaded once per actor; called with a batch. `stage`: what reaches it ("normalised"
    pixels, uint8 "crops", or the stored "jpg" bytes) and so what it does before running the model."""

    def __init__(self, model: str, stage: str):
        import cv2
        import onnxruntime

        cv2.setNumThreads(1)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # the actor's one CPU
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.stage = stage

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.stage == "jpg":
            batch = preprocess_batch(batch)
        elif self.stage == "crops":
            batch = {"key": batch["key"], "pixels": normalise(batch["pixels"])}
        (embedding,) = self.session.run(["embedding"], {self.input: batch["pixels"]})
        return {"key": batch["key"], "embedding": embedding}


def ray_data(options: dict[str, Any]) -> None:
    """(c): the plain Ray Data pipeline over the webdataset shards, on a local Ray started here."""
    import ray

    config, batch_size, model, output = options["config"], options["batch_size"], options["model"], options["output"]
    started = time.monotonic()
    watchdog(options)  # a layout whose operators cannot all get their CPUs waits for ever
    ray.init(address="local", num_cpus=options["cpus"], include_dashboard=False, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        ready = time.monotonic()
        layout = RAY_CONFIGS[config]
        io = {} if layout["io_cpus"] is None else {"num_cpus": layout["io_cpus"]}
        # the stored bytes as they are (decoder=None): the decode is a map_batches of the pipeline, on OpenCV,
        # or (decode in read) the read's own decoder, on OpenCV too
        decoder = decode_crop_sample if config == "decode in read" else None
        ds = ray.data.read_webdataset(
            options["shards"], decoder=decoder, suffixes=["jpg"], file_extensions=["tar"], **io
        )
        if layout["tasks"] is not None:
            preprocess = crop_batch if layout["actor_does"] == "crops" else preprocess_batch
            ds = ds.map_batches(preprocess, batch_size=batch_size, num_cpus=layout["tasks"])
        ds = ds.map_batches(
            Embedder,
            fn_constructor_args=(model, layout["actor_does"]),
            batch_size=batch_size,
            concurrency=layout["actors"],
            num_cpus=layout["actor_cpus"],
        )
        ds.write_parquet(output, ray_remote_args=io)
        done = time.monotonic()
    finally:
        ray.shutdown()
    timings = {"init": ready - started, "pipeline": done - ready, "shutdown": time.monotonic() - done}
    Path(output, "_timings.json").write_text(json.dumps(timings))
    os._exit(0)  # the watchdog's timer


def ray_idle(options: dict[str, Any]) -> None:
    """Ray alone: the local Ray of (c) started and shut down, no work (its fixed cost in every Ray run)."""
    import ray

    ray.init(address="local", num_cpus=options["cpus"], include_dashboard=False, log_to_driver=False)
    ray.shutdown()


CHILDREN = {"ours-ray": ours_ray, "ray-data": ray_data, "ray-idle": ray_idle}


if __name__ == "__main__":
    main()
