"""Distributors only decide where the per-shard callable runs; retries live in `run_shards`.

A distributor maps a picklable callable over an iterable of shards and yields, in completion
order, each shard with its result or the exception it raised. `run_shards` (shared by every
distributor) re-runs failed shards `max_shard_retry` times.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol, TypeVar

from .config import ConfigError, RunConfig

logger = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")


class Distributor(Protocol):
    def map(self, fn: Callable[[S], R], shards: Iterable[S]) -> Iterator[tuple[S, R | BaseException]]:
        ...

    def close(self) -> None:
        ...


class MultiprocessingDistributor:
    """A pool of `processes_count` spawned processes; at most two shards per process in flight.

    A process that dies (killed, out of memory) fails only the shards it held: the pool is
    rebuilt and those shards come back as failures for `run_shards` to retry.
    """

    def __init__(self, processes_count: int):
        self.processes_count = processes_count
        self.executor: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(
                self.processes_count, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=32
            )
        return self.executor

    def map(self, fn: Callable[[S], R], shards: Iterable[S]) -> Iterator[tuple[S, R | BaseException]]:
        pending: dict[Future, S] = {}
        source = iter(shards)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < 2 * self.processes_count:
                shard = next(source, None)
                if shard is None:
                    exhausted = True
                else:
                    pending[self._submit(fn, shard)] = shard
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                shard = pending.pop(future)
                error = future.exception()
                broken |= isinstance(error, BrokenProcessPool)
                yield shard, (error if error is not None else future.result())
            if broken:
                self._rebuild()

    def _submit(self, fn: Callable[[S], R], shard: S) -> Future:
        try:
            return self._executor().submit(fn, shard)
        except BrokenProcessPool:
            self._rebuild()
            return self._executor().submit(fn, shard)

    def _rebuild(self) -> None:
        logger.warning("a worker process died; restarting the pool")
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def make_distributor(config: RunConfig) -> Distributor:
    if config.distributor == "multiprocessing":
        return MultiprocessingDistributor(config.processes_count)
    if config.distributor in ("pyspark", "ray"):
        raise ConfigError(f"distributor {config.distributor!r} is not available in this version; use multiprocessing")
    raise ConfigError(f"distributor must be one of multiprocessing, pyspark, ray; got {config.distributor!r}")


def run_shards(
    distributor: Distributor,
    fn: Callable[[S], R],
    shards: Iterable[S],
    max_shard_retry: int,
    on_result: Callable[[R], None],
) -> list[S]:
    """Run `fn` over `shards`, re-running failures up to `max_shard_retry` rounds; returns the shards that still failed."""
    failed: list[S] = []
    for attempt in range(max_shard_retry + 1):
        if attempt and not failed:
            break
        todo, failed = (shards if attempt == 0 else failed), []
        if attempt:
            logger.warning("retrying %d failed shard(s), round %d of %d", len(todo), attempt, max_shard_retry)
        for shard, outcome in distributor.map(fn, todo):
            if isinstance(outcome, BaseException):
                logger.error("shard %s failed: %s", getattr(shard, "shard_id", shard), outcome, exc_info=outcome)
                failed.append(shard)
            else:
                on_result(outcome)
    return failed
