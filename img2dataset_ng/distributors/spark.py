"""distributor="pyspark": shards run as Spark tasks, on the active session or a local one.

img2dataset runs batches of `subjob_size` shards as one Spark job each and waits for a batch's
slowest shard before starting the next. Here every shard is its own one-task job, and up to
`min(subjob_size, 2 x the cluster's cores)` of them are in flight at once, submitted from driver
threads: a slow shard holds back nothing but itself, and a finished shard is reported at once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from pyspark.sql import SparkSession

from ..config import RunConfig
from ..errors import ConfigError
from .base import Report, ShardFn, fill, no_progress

logger = logging.getLogger(__name__)


def _run_on_executor(fn: ShardFn, shard: Any) -> Any:
    return fn(shard, no_progress)


class SparkDistributor:
    reports_progress = False  # running tasks cannot report to the driver

    def __init__(self, processes_count: int, subjob_size: int):
        session = SparkSession.getActiveSession()
        self.owned = session is None
        if session is None:
            logger.info("no active SparkSession: starting local[%d]", processes_count)
            session = (
                SparkSession.builder.master(f"local[{processes_count}]")
                .appName("img2dataset-ng")
                .config("spark.pyspark.python", os.environ.get("PYSPARK_PYTHON", sys.executable))
                .config("spark.ui.showConsoleProgress", "false")
                .getOrCreate()
            )
        self.session = session
        context = session.sparkContext
        if context.getConf().get("spark.speculation", "false").lower() == "true":
            raise ConfigError(
                "spark.speculation is on: two attempts of one shard would write the same files at once; "
                "turn it off for img2dataset-ng"
            )
        self.subjob_size = subjob_size

    @property
    def workers(self) -> int:
        """Shards that run at once: one task per executor core (as the cluster is when the run starts)."""
        return max(1, self.session.sparkContext.defaultParallelism)

    @property
    def window(self) -> int:
        """Shards in flight; read again as shards finish, since executors may still be joining."""
        return max(1, min(self.subjob_size, 2 * self.session.sparkContext.defaultParallelism))

    @classmethod
    def from_config(cls, config: RunConfig) -> SparkDistributor:
        return cls(config.processes_count, config.subjob_size)

    def _run(self, fn: ShardFn, shard: Any) -> Any:
        context = self.session.sparkContext
        context.setJobDescription(f"img2dataset-ng shard {getattr(shard, 'shard_id', shard)}")
        return context.parallelize([shard], 1).map(lambda s: _run_on_executor(fn, s)).collect()[0]

    def map(self, fn: ShardFn, shards: Iterable[Any], on_progress: Report | None = None) -> Iterator[tuple[Any, Any]]:
        source = iter(shards)
        pending: dict[Future, Any] = {}
        with ThreadPoolExecutor(self.subjob_size, thread_name_prefix="spark-shard") as threads:
            more = True
            while pending or more:
                more = more and fill(source, pending, self.window, lambda shard: threads.submit(self._run, fn, shard))
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    shard = pending.pop(future)
                    error = future.exception()
                    yield shard, (error if error is not None else future.result())

    def close(self) -> None:
        if self.owned:
            self.session.stop()
