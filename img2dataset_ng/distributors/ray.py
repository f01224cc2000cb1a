"""distributor="ray": shards run as Ray tasks on the running cluster, or on a local Ray.

The cluster is found the way `ray.init` finds it: `RAY_ADDRESS`, else a cluster already running on
this machine (`address="auto"`), else a local instance started here and stopped at the end.
At most 2 x the cluster's CPUs shards are in flight (`subjob_size` plays no part). A shard whose
worker dies, or that raises, is retried by `run_shards` (`max_shard_retry` rounds), as with every
distributor; a retried shard is rewritten from scratch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import ray

from ..config import RunConfig
from .base import Report, ShardFn, fill, no_progress

logger = logging.getLogger(__name__)


# no retries of Ray's own: a shard whose worker died fails like any other, and run_shards retries it
@ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)
def _run_shard(fn: ShardFn, shard: Any) -> Any:
    return fn(shard, no_progress)


class RayDistributor:
    reports_progress = False

    def __init__(self, processes_count: int):
        self.owned = False
        if not ray.is_initialized():
            if os.environ.get("RAY_ADDRESS"):
                ray.init()
            else:
                try:
                    ray.init(address="auto")
                except ConnectionError:
                    logger.info("no running Ray cluster: starting a local one with %d CPUs", processes_count)
                    ray.init(num_cpus=processes_count, include_dashboard=False)
            self.owned = True
        self.processes_count = processes_count

    @property
    def workers(self) -> int:
        """Shards that run at once: one task per CPU of the cluster (as it is when the run starts)."""
        return max(1, int(ray.cluster_resources().get("CPU", self.processes_count)))

    @property
    def window(self) -> int:
        """Shards in flight: twice the cluster's CPUs, read again as shards finish (nodes may join)."""
        return max(1, 2 * int(ray.cluster_resources().get("CPU", self.processes_count)))

    @classmethod
    def from_config(cls, config: RunConfig) -> RayDistributor:
        return cls(config.processes_count)

    def map(self, fn: ShardFn, shards: Iterable[Any], on_progress: Report | None = None) -> Iterator[tuple[Any, Any]]:
        source = iter(shards)
        fn_ref = ray.put(fn)
        pending: dict[ray.ObjectRef, Any] = {}
        more = True
        while pending or more:
            more = more and fill(source, pending, self.window, lambda shard: _run_shard.remote(fn_ref, shard))
            if not pending:
                break
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ready)
            try:
                outcome = ray.get(ready)
            except Exception as error:  # noqa: BLE001 - the shard's failure, retried by run_shards
                outcome = error
            yield shard, outcome

    def close(self) -> None:
        if self.owned:
            ray.shutdown()
