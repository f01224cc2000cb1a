"""distributor="ray": shards run as Ray tasks on the running cluster, or on a local Ray.

The cluster is found the way `ray.init` finds it: `RAY_ADDRESS`, else a cluster already running on
this machine (`address="auto"`), else a local instance started here and stopped at the end.
At most 2 x the cluster's CPUs shards are in flight (`subjob_size` plays no part). A shard whose
worker dies, or that raises, is retried by `run_shards` (`max_shard_retry` rounds), as with every
distributor; a retried shard is rewritten from scratch.

With model=..., the model lives in an actor pool (`ModelPool`): each actor loads it once (on its GPU
when the cluster has GPUs: `model_num_gpus` each, else on `CPUS_PER_MODEL_ACTOR` CPU), the shard
tasks decode and preprocess, and each batch goes to an actor in turn. A task waits for its batch's
output before its threads start more samples, so the images in flight are bounded by the shards in
flight (backpressure); a dead actor is restarted and its calls are tried again (`max_restarts`,
`max_task_retries`), so a killed model worker costs time, not output. The actors' resources are reserved in
a placement group: a restarting actor gets its bundle back, never taken by a waiting shard task (which
would wait on the actor for ever). A pool the cluster cannot place (GPUs it does not have, CPUs the shards
need) is refused before the shards start.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ModelConfig, RunConfig
from ..errors import ConfigError
from ..stages import model
from .base import Report, ShardFn, fill, no_progress

logger = logging.getLogger(__name__)
CPUS_PER_MODEL_ACTOR = 1  # without GPUs: a model actor's CPUs (and onnxruntime's threads in it)
CPUS_PER_ACTOR_IN_POOL = 4  # without GPUs and without model_pool_size: one actor per this many CPUs
MODEL_ACTOR_RESTARTS = 3  # then its calls fail, and so do their shards (run_shards retries them): no endless loop
PLACEMENT_TIMEOUT = 120  # seconds for the cluster to reserve the pool's resources (autoscalers add nodes)


# no retries of Ray's own: a shard whose worker died fails like any other, and run_shards retries it
@ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)
def _run_shard(fn: ShardFn, shard: Any) -> Any:
    return fn(shard, no_progress)


class _ModelActor:
    """Holds the model (loaded once, when the actor starts) and runs batches on it."""

    def __init__(self, config: ModelConfig, threads: int, gpu: bool):
        self.runner = model.load(config, threads=threads, gpu=gpu)[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return model.run_batch(self.runner, batch)

    def pid(self) -> int:
        return os.getpid()


class ModelPool:
    """The model stage's runner under Ray: picklable (actor handles), called with a batch from any task's
    threads; the batches go to the actors in turn, from a random first one per process. An actor that died
    for good (past its restarts) is left out from then on, in this process; with none left, calls fail."""

    def __init__(self, actors: list[Any]):
        self.actors = list(actors)
        self._turns = itertools.count(random.randrange(len(actors)))  # next() on it is atomic under the GIL
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"actors": self.actors}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["actors"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        while True:
            actors = self.actors
            if not actors:
                raise RuntimeError("every model actor died (see the Ray logs of _ModelActor)")
            actor = actors[next(self._turns) % len(actors)]
            try:
                return ray.get(actor.run.remote(batch))
            except ray.exceptions.RayActorError:
                with self._lock:
                    self.actors = [a for a in self.actors if a is not actor]


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

    def model_pool(self, config: ModelConfig) -> ModelPool:
        """Start the model's actors (killed by `close`): `model_pool_size` of them, each with `model_num_gpus`
        GPUs (default: 1 when the cluster has GPUs) or `CPUS_PER_MODEL_ACTOR` CPUs. Actors the cluster cannot
        place would never start, and the shards that wait for them would wait for ever: refused here."""
        resources = ray.cluster_resources()
        cluster_gpus, cluster_cpus = resources.get("GPU", 0), int(resources.get("CPU", self.processes_count))
        gpus = config.model_num_gpus if config.model_num_gpus is not None else (1.0 if cluster_gpus else 0.0)
        if gpus > 0:
            fits = int(cluster_gpus / gpus)
            if fits < 1:
                raise ConfigError(f"model_num_gpus={gpus:g}, but the Ray cluster has {cluster_gpus:g} GPU(s)")
        else:  # the shard tasks need a CPU too
            fits = (cluster_cpus - 1) // CPUS_PER_MODEL_ACTOR
            if fits < 1:
                raise ConfigError(
                    f"the model's CPU actors need {CPUS_PER_MODEL_ACTOR} CPU(s) each besides one for the shards; "
                    f"the Ray cluster has {cluster_cpus}"
                )
        size = config.model_pool_size or (fits if gpus > 0 else max(1, cluster_cpus // CPUS_PER_ACTOR_IN_POOL))
        if size > fits:
            raise ConfigError(
                f"model_pool_size={size}: the Ray cluster ({cluster_cpus} CPUs, {cluster_gpus:g} GPUs) fits {fits} "
                f"model actor(s) of {f'{gpus:g} GPU(s)' if gpus > 0 else f'{CPUS_PER_MODEL_ACTOR} CPU(s)'} "
                "besides the shards"
            )
        cpus = 0 if gpus > 0 else CPUS_PER_MODEL_ACTOR
        bundle = {name: amount for name, amount in (("CPU", cpus), ("GPU", gpus)) if amount > 0}
        self.group = placement_group([bundle] * size, strategy="SPREAD")
        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.group)
            self.group = None
            raise ConfigError(
                f"the Ray cluster did not reserve {size} x {bundle} for the model's actors in {PLACEMENT_TIMEOUT} s"
            ) from None
        # a restarted actor's calls are tried again; an actor that keeps dying fails its shards' calls
        self.actors = [
            ray.remote(_ModelActor)
            .options(
                num_cpus=cpus,
                num_gpus=gpus,
                max_restarts=MODEL_ACTOR_RESTARTS,
                max_task_retries=-1,
                max_concurrency=1,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index),
            )
            .remote(config, max(1, cpus), gpus > 0)
            for index in range(size)
        ]
        logger.info("model %s: %d actor(s) with %s GPU(s) each", config.model, size, gpus)
        return ModelPool(self.actors)

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        if getattr(self, "group", None) is not None:
            remove_placement_group(self.group)
        if self.owned:
            ray.shutdown()
