"""Distributors only decide where the per-shard callable runs; retries live in `run_shards`.

A distributor maps a picklable callable `fn(shard, report)` over an iterable of shards and yields,
in completion order, each shard with its result or the exception it raised. `report(samples,
successes)` is how a running shard tells the progress bar about finished samples; a distributor
forwards it to `on_progress` in the driver where it can. `run_shards` (shared by every
distributor) re-runs failed shards `max_shard_retry` times.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import multiprocessing
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from typing import Any, Protocol, TypeVar

from .config import ConfigError, RunConfig

logger = logging.getLogger(__name__)
_END = object()
Report = Callable[[int, int], None]  # (samples, successes) finished since the last report
ShardFn = Callable[[Any, Report], Any]

S = TypeVar("S")
R = TypeVar("R")


class Distributor(Protocol):
    reports_progress: bool  # whether `map` forwards the running shards' reports to `on_progress`

    def map(
        self, fn: ShardFn, shards: Iterable[S], on_progress: Report | None = None
    ) -> Iterator[tuple[S, R | BaseException]]: ...

    def close(self) -> None: ...


def fill(source: Iterator[S], pending: dict[Any, S], window: int, submit: Callable[[S], Any]) -> bool:
    """Submit shards from `source` until `window` are pending (`pending[submit(shard)] = shard`).

    Returns False once `source` is exhausted. Shards are drawn only as room frees up, so the reader
    never runs far ahead of the workers.
    """
    while len(pending) < window:
        shard = next(source, _END)
        if shard is _END:
            return False
        pending[submit(shard)] = shard
    return True


class WorkerDied(RuntimeError):
    """The process running a shard exited before returning its result (killed, out of memory)."""


class ShardError(RuntimeError):
    """A shard raised in a worker process; the message carries the worker's traceback."""


PROGRESS, DONE = "progress", "done"


def tune_worker_process() -> None:
    """Settings for a process of ours that runs shards, made before it starts any thread.

    glibc gives each thread that allocates its own arena (up to 8 per core) and keeps freed memory
    in them; with dozens of download threads that doubles the resident set: two arenas halve the
    peak RSS at no cost in speed. (A fixed mmap threshold would save another ~15% of memory but
    costs ~1 ms of page faults per sample: not taken.) OpenCV's own thread pool only adds
    contention: shards already run in parallel.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    import cv2

    cv2.setNumThreads(1)


M_ARENA_MAX = -8  # a mallopt parameter, from glibc's malloc.h


def _worker_loop(conn: Connection) -> None:
    """Runs in each worker process: receive (fn, shard); send progress messages, then the outcome."""
    tune_worker_process()
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        fn, shard = task

        def report(samples: int, successes: int) -> None:
            conn.send((PROGRESS, samples, successes))

        try:
            outcome: tuple[str, Any, Any] = (DONE, True, fn(shard, report))
        except Exception:  # noqa: BLE001 - reported to the parent as the shard's failure
            outcome = (DONE, False, ShardError(traceback.format_exc()))
        conn.send(outcome)


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_loop, args=(child,), daemon=True, name="img2dataset-ng-worker")
        self.process.start()
        child.close()
        self.shard: Any = None

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.conn.close()


class MultiprocessingDistributor:
    """`processes_count` spawned processes, one shard each at a time.

    Each process is watched: one that dies (killed, out of memory) fails exactly the shard it
    held, with `WorkerDied`, and is replaced; nothing waits forever on a dead process.
    """

    reports_progress = True

    def __init__(self, processes_count: int):
        self.processes_count = processes_count
        self.context = multiprocessing.get_context("spawn")
        self.idle: list[_Worker] = []

    @classmethod
    def from_config(cls, config: RunConfig) -> MultiprocessingDistributor:
        return cls(config.processes_count)

    def map(
        self, fn: ShardFn, shards: Iterable[S], on_progress: Report | None = None
    ) -> Iterator[tuple[S, R | BaseException]]:
        source = iter(shards)
        busy: dict[_Worker, S] = {}

        def submit(shard: S) -> _Worker:
            worker = self.idle.pop() if self.idle else _Worker(self.context)
            worker.conn.send((fn, shard))
            return worker

        more = True
        try:
            while busy or more:
                more = more and fill(source, busy, self.processes_count, submit)
                if not busy:
                    break
                ready = set(connection_wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        shard = busy.pop(worker)
                        worker.process.join()
                        worker.conn.close()
                        yield shard, WorkerDied(f"worker process died with exit code {worker.process.exitcode}")
                        continue
                    if message[0] == PROGRESS:
                        if on_progress is not None:
                            on_progress(message[1], message[2])
                        continue
                    shard = busy.pop(worker)
                    self.idle.append(worker)
                    yield shard, message[2]
        finally:
            for worker in busy:  # interrupted: do not leave processes behind
                worker.process.terminate()
                worker.stop()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().stop()


DistributorFactory = Callable[[RunConfig], Distributor]
# name -> (dotted path of a factory taking a RunConfig, the package it needs, how to install it)
BUILTIN_DISTRIBUTORS: dict[str, tuple[str, str | None, str | None]] = {
    "multiprocessing": ("img2dataset_ng.distributor:MultiprocessingDistributor.from_config", None, None),
    "pyspark": ("img2dataset_ng.spark_distributor:SparkDistributor.from_config", "pyspark", "img2dataset-ng[spark]"),
    "ray": ("img2dataset_ng.ray_distributor:RayDistributor.from_config", "ray", "img2dataset-ng[ray]"),
}
ENTRY_POINT_GROUP = "img2dataset_ng.distributors"
_registered: dict[str, DistributorFactory] = {}


def register_distributor(name: str, factory: DistributorFactory) -> None:
    """Make `distributor=name` use `factory(run_config)`; third parties may also declare an entry point
    in the `img2dataset_ng.distributors` group whose object is such a factory."""
    _registered[name] = factory


def _entry_points() -> dict[str, Any]:
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def distributor_names() -> list[str]:
    return sorted({*BUILTIN_DISTRIBUTORS, *_registered, *_entry_points()})


def distributor_factory(name: str) -> DistributorFactory:
    """The factory of distributor `name`; fails at once, naming what to install when its package is missing."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_DISTRIBUTORS:
        target, package, install = BUILTIN_DISTRIBUTORS[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"distributor {name!r} needs the {package} package: pip install '{install}'")
        module, _, attribute = target.partition(":")
        return functools.reduce(getattr, attribute.split("."), importlib.import_module(module))
    entry_points = _entry_points()
    if name in entry_points:
        return entry_points[name].load()
    raise ConfigError(f"distributor must be one of {', '.join(distributor_names())}; got {name!r}")


def run_shards(
    distributor: Distributor,
    fn: Callable[[S], R],
    shards: Iterable[S],
    max_shard_retry: int,
    on_result: Callable[[R], None],
    on_progress: Report | None = None,
) -> list[S]:
    """Run `fn` over `shards`, re-running failures up to `max_shard_retry` rounds.

    Returns the shards that still failed after the last round.
    """
    failed: list[S] = []
    for attempt in range(max_shard_retry + 1):
        if attempt and not failed:
            break
        todo, failed = (shards if attempt == 0 else failed), []
        if attempt:
            logger.warning("retrying %d failed shard(s), round %d of %d", len(todo), attempt, max_shard_retry)
        for shard, outcome in distributor.map(fn, todo, on_progress):
            if isinstance(outcome, BaseException):
                logger.error("shard %s failed: %s", getattr(shard, "shard_id", shard), outcome)
                failed.append(shard)
            else:
                on_result(outcome)
    return failed
