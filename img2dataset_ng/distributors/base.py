"""Distributors only decide where the per-shard callable runs; retries live in `run_shards`.

A distributor maps a picklable callable `fn(shard, report)` over an iterable of shards and yields,
in completion order, each shard with its result or the exception it raised. `report(samples,
successes)` is how a running shard tells the progress bar about finished samples; a distributor
forwards it to `on_progress` in the driver where it can. A `report` may also have an `idle()` method,
which the shard worker calls once when its shard only waits for hosts that back off: a distributor that
gives it one may start another shard in the same process (`local.py` does). `run_shards` (shared by every
distributor) re-runs failed shards `max_shard_retry` times, so resume, stats and retry semantics
cannot drift between backends. A distributor with a `model_pool` method runs the model stage's batches
where it chooses (`ray.py`: an actor pool).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from ..config import RunConfig
from ..registry import Builtin, Registry

logger = logging.getLogger(__name__)
_END = object()
Report = Callable[[int, int], None]  # (samples, successes) finished since the last report
ShardFn = Callable[[Any, Report], Any]

S = TypeVar("S")
R = TypeVar("R")


class Distributor(Protocol):
    reports_progress: bool  # whether `map` forwards the running shards' reports to `on_progress`
    # optional: how many shards run at once (they share max_host_rate); processes_count when absent
    # workers: int
    # optional: `model_pool(model_config)`, a callable that runs the model stage's batches elsewhere (Ray's
    # actor pool); without it each worker process loads the model itself
    # def model_pool(self, config: ModelConfig) -> Callable[[np.ndarray], np.ndarray]: ...

    def map(
        self, fn: ShardFn, shards: Iterable[S], on_progress: Report | None = None
    ) -> Iterator[tuple[S, R | BaseException]]: ...

    def close(self) -> None: ...


DistributorFactory = Callable[[RunConfig], Distributor]


def no_progress(samples: int, successes: int) -> None:
    """For shards whose backend cannot call back into the driver: the progress bar counts finished shards."""


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


# name -> a factory taking a RunConfig
DISTRIBUTORS: Registry[DistributorFactory] = Registry(
    "distributor",
    "img2dataset_ng.distributors",
    builtins={
        "multiprocessing": Builtin("img2dataset_ng.distributors.local:MultiprocessingDistributor.from_config"),
        "pyspark": Builtin(
            "img2dataset_ng.distributors.spark:SparkDistributor.from_config", "pyspark", "img2dataset-ng[spark]"
        ),
        "ray": Builtin("img2dataset_ng.distributors.ray:RayDistributor.from_config", "ray", "img2dataset-ng[ray]"),
    },
)


def register_distributor(name: str, factory: DistributorFactory) -> None:
    """Make `distributor=name` use `factory(run_config)`; third parties may also declare an entry point
    in the `img2dataset_ng.distributors` group whose object is such a factory."""
    DISTRIBUTORS.register(name, factory)


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
