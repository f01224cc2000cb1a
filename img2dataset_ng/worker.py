"""The unit of work: run one shard's samples through the stages and hand each to the writer.

`ShardWorker` is a picklable callable that holds configuration only; stages, threads and the
writer are made inside the worker for each shard, whichever distributor runs it. Every row of the
shard becomes one `Sample` and one metadata row, success or failure alike; the shard's stats file
is its last write and marks it as done.

Samples start in the order the fetch stage's per-host scheduler allows (`stages/politeness.py`),
finish in any order on `thread_count` threads, but reach the writer in row order, so the same
input gives byte-identical shards. Finished samples wait for the ones before them in a buffer;
past `REORDER_BUDGET` bytes only the oldest sample not handed on may start (it is running, or
waiting for its host, so it ends within its deadline and backoffs).

A retry of a finished shard (incremental_mode="retry_failed") runs only its selected rows through the
stages; `retry.RetryShard` carries the others from the old shard, stages the writer's output and commits it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .config import Config
from .distributors.base import Report
from .naming import shard_file, stats_file
from .reader import Shard
from .reader.datasets import INPUT_KEY, INPUT_REASON, INPUT_STATUS, InputShard, carry_download_columns, input_rows
from .retry import RetryShard
from .sample import INPUT_ERROR, Deferred, Sample, Status, metadata_schema
from .stages.base import Stage, columns_of, run_stages
from .stages.model import extra_suffixes, npy_rows
from .stages.pipeline import download_stages
from .stages.politeness import HostScheduler
from .stats import ShardStats

logger = logging.getLogger(__name__)
REPORT_EVERY = 0.5  # seconds between progress reports of a running shard
IDLE_CHECK = 0.25  # seconds between looks at whether a shard only waits for hosts that back off
REORDER_BUDGET = 64 * 1024 * 1024  # bytes of finished samples that may wait for an earlier one, per process
IDLE_THREADS = 4  # threads an idle shard keeps (the others end when they find nothing to start)
M_ARENA_MAX = -8  # a mallopt parameter, from glibc's malloc.h


@functools.cache
def tune_process() -> None:
    """Settings for a process that runs shards, made once, before its first shard starts threads.

    glibc gives each thread that allocates its own arena (up to 8 per core) and keeps freed memory
    in them; with dozens of download threads that doubles the resident set: two arenas halve the
    peak RSS at no cost in speed. (A fixed mmap threshold would save another ~15% of memory but
    costs ~1 ms of page faults per sample: not taken.) OpenCV's own thread pool only adds
    contention: shards already run in parallel. Applied by the shard worker itself, so processes
    of Spark executors and Ray workers get it as the multiprocessing ones do.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    import cv2

    cv2.setNumThreads(1)


@dataclass(frozen=True)
class ShardWorker:
    """Picklable: configuration only. Call it with a `Shard`; it returns the shard's stats.

    `report(samples, successes)`, when given, is called about twice a second with the samples
    finished since its last call (for a progress bar).
    """

    config: Config

    def __call__(self, shard: Shard | InputShard, report: Report | None = None) -> ShardStats:
        tune_process()
        config = self.config
        stats = ShardStats(shard.shard_id, start_time=time.time())
        shard_name = config.key_format.shard_name(shard.shard_id)
        writer_class = config.write.writer
        # retry_failed: a finished shard is written again beside the old one, then moved over it (retry.py)
        retry = RetryShard(config, shard_name) if shard.retry else None
        folder = config.write.output_folder if retry is None else retry.staging
        # what an interrupted attempt may have left; the stats file first
        suffixes = (*writer_class.suffixes, *extra_suffixes(config))
        folder.remove([stats_file(shard_name), *(shard_file(shard_name, s) for s in suffixes)])
        folder.makedirs()  # a worker may run where the driver did not make it (a node-local path)

        # existing shards as input: their rows, and their images
        npy = npy_rows(config)  # model_save_npy: NNNNN.npy beside the metadata
        table, images = shard.load() if isinstance(shard, InputShard) else (shard.read(), None)
        stages = download_stages(config, images)
        if images is not None:  # the input's key, status and reason; columns the stages fill again aside
            table = input_rows(table, frozenset(c.name for c in columns_of(stages)))
        samples = [
            Sample(index, row.pop(INPUT_KEY, None) or config.key_format.key(shard.shard_id, index), row)
            for index, row in enumerate(table.to_pylist())
        ]
        for sample in samples:  # rows the reader could not read, or that had failed in the input, fail here
            if sample.row.get(INPUT_ERROR) is not None:
                sample.fail(Status.FAILED_TO_DOWNLOAD, sample.row[INPUT_ERROR])
            elif sample.row.get(INPUT_STATUS) not in (None, Status.SUCCESS.value):
                sample.fail(input_status(sample.row[INPUT_STATUS]), sample.row.get(INPUT_REASON) or "")
        to_run = samples if retry is None else retry.plan(samples)  # a retry's other rows are carried as they were
        scheduler = next((s for s in (stage.scheduler(to_run) for stage in stages) if s is not None), None)
        try:
            schema = metadata_schema(table.schema, columns_of(stages))
            image_format = config.resize.encode_format.value
            reported = (0, 0)  # (samples, successes) that `report` has been told of
            next_report = time.monotonic() + REPORT_EVERY
            with writer_class(folder, shard_name, schema, image_format) as writer:
                idle = getattr(report, "idle", None)  # a distributor that may start another shard beside this one
                finished = in_order(to_run, stages, config.fetch.thread_count, scheduler, idle)
                for sample in finished if retry is None else retry.merge(finished):
                    if images is not None and sample.ok:
                        carry_download_columns(sample.row, sample.fields)
                    writer.write(sample)
                    if npy is not None:
                        npy.add(sample)
                    stats.counts.add(sample)
                    if report is not None and (time.monotonic() >= next_report or stats.counts.count == len(samples)):
                        done = (stats.counts.count, stats.counts.successes)
                        report(done[0] - reported[0], done[1] - reported[1])
                        reported, next_report = done, time.monotonic() + REPORT_EVERY
        finally:
            for stage in stages:
                stage.close()
        if scheduler is not None:
            stats.hosts = scheduler.host_stats()
        if npy is not None:
            npy.write(folder, shard_name)
        if config.model.info is not None:
            stats.model = config.model.info.as_dict(config.model.model_column)

        stats.end_time = time.time()
        folder.write(stats_file(shard_name), stats.to_json().encode("utf-8"))
        if retry is not None:
            retry.commit()
        return stats


class _Reordering:
    """Bytes of finished samples waiting for an earlier one, over every shard of the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0

    def add(self, size: int) -> None:
        with self.lock:
            self.bytes += size


REORDERING = _Reordering()  # the process's


def input_status(value: str) -> Status:
    """An input row's status; one img2dataset-ng does not know counts as a failed download."""
    try:
        return Status(value)
    except ValueError:
        return Status.FAILED_TO_DOWNLOAD


def in_order(
    samples: Sequence[Sample],
    stages: Sequence[Stage],
    thread_count: int,
    scheduler: HostScheduler | None = None,
    on_idle: Callable[[], None] | None = None,
) -> Iterator[Sample]:
    """The samples, each taken through the stages on one of `thread_count` threads, in index order.

    `scheduler` decides which sample a free thread starts (the fetch stage's per-host politeness);
    without one, they start in index order. A sample whose stage raises `Deferred` goes back to the
    scheduler and starts again from the first stage when it is due. A sample's downloaded bytes are
    dropped when its stages are done, its stored bytes once the consumer asks for the next sample.

    `on_idle()` is called once, when most threads have nothing to do and every sample still to start
    waits for a host that pushed back: the shard's end is the politeness's business, and the process
    may start another shard beside it (their hosts' slots are shared: `politeness.HostTable`); from
    then on, threads that find nothing to start end, down to `IDLE_THREADS`. The reorder budget is the
    process's (`REORDERING`): shards running side by side share it, and each may always start its head.
    """
    thread_count = max(1, min(thread_count, len(samples)))
    scheduler = scheduler or HostScheduler([None] * len(samples))
    lock = scheduler.lock
    head = 0  # the next sample the consumer needs: past the reorder budget, only it may start
    buffered = 0  # bytes of this shard's finished samples waiting for an earlier one (in REORDERING too)
    running = 0  # samples on a thread
    alive = thread_count
    shedding = False  # idle: threads with nothing to start end
    stopping = False
    done: queue.SimpleQueue[tuple[int, BaseException | None]] = queue.SimpleQueue()

    def next_index() -> int | None:
        nonlocal running, alive
        with lock:
            while not stopping and scheduler.unfinished:
                within = REORDERING.bytes <= REORDER_BUDGET
                index = scheduler.take(math.inf if within else head)
                if index is not None:
                    running += 1
                    return index
                if shedding and alive > IDLE_THREADS:
                    break
                wait = scheduler.wait_time()
                lock.wait(wait if within else min(wait or IDLE_CHECK, IDLE_CHECK))  # another shard may free it
            alive -= 1
            return None

    def work() -> None:
        nonlocal buffered, running
        while (index := next_index()) is not None:
            sample = samples[index]
            try:
                run_stages(stages, sample)
                error = None
            except Deferred as deferred:  # tried again later, from the first stage
                with lock:
                    running -= 1
                    scheduler.defer(index, deferred.at)
                    lock.notify_all()
                continue
            except BaseException as raised:  # noqa: BLE001 - re-raised in the shard's thread
                error = raised
            sample.free_source()  # every stage has seen the downloaded bytes: free them now
            with lock:  # counted as soon as it is finished, so that no new sample starts past the budget
                buffered += _size(sample)
                REORDERING.add(_size(sample))
                running -= 1
                scheduler.finished(index)
                lock.notify_all()
            done.put((index, error))

    threads = [threading.Thread(target=work, daemon=True, name=f"sample-{i}") for i in range(thread_count)]
    for thread in threads:
        thread.start()
    waiting: dict[int, Sample] = {}
    next_check = time.monotonic() + IDLE_CHECK
    try:
        for next_out in range(len(samples)):
            with lock:
                head = next_out
                lock.notify_all()
            while next_out not in waiting:
                try:
                    index, error = done.get(timeout=None if on_idle is None else IDLE_CHECK)
                except queue.Empty:
                    index = None
                if on_idle is not None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + IDLE_CHECK
                    with lock:
                        shedding = running < thread_count / 2 and scheduler.waiting_on_throttled()
                    if shedding:
                        on_idle()
                        on_idle = None
                if index is None:
                    continue
                if error is not None:
                    raise error
                waiting[index] = samples[index]
            sample = waiting.pop(next_out)
            with lock:
                buffered -= _size(sample)
                REORDERING.add(-_size(sample))
                lock.notify_all()
            yield sample
            sample.data = None  # handed on: the stored bytes are the writer's business now
    finally:
        with lock:
            stopping = True
            lock.notify_all()
        for thread in threads:  # on failure, let the running samples end (each within its deadline)
            thread.join()
        REORDERING.add(-buffered)  # what a failed shard never handed on


def _size(sample: Sample) -> int:
    return len(sample.data or b"")
