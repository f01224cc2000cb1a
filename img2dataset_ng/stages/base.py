"""The stage contract: one per-sample step, the metadata columns it adds and the status it fails with.

A stage is built once per shard in the worker, called for each sample from many threads at once
(so it must be thread-safe), and closed when the shard ends; it is also built once in the driver,
to check its columns before any work, so its `__init__` should be cheap (load models on first
use). It reads and fills the `Sample`; to fail it, it raises `StageError`; the stages after it
then skip the sample. Stages that need batches (a model) subclass `BatchStage`: each sample is
prepared on its own thread, then the prepared samples are processed together.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from ..registry import Registry
from ..sample import Sample, StageError, Status

if TYPE_CHECKING:
    from .politeness import HostScheduler


class Stage(ABC):
    # what a StageError raised here marks the sample as; img2dataset's statuses are
    # failed_to_download and failed_to_resize, which counts every failure after the download
    failure: ClassVar[Status] = Status.FAILED_TO_RESIZE

    def columns(self) -> list[pa.Field]:
        """The metadata columns this stage fills in `sample.fields` (None where it did not run)."""
        return []

    @abstractmethod
    def __call__(self, sample: Sample) -> None: ...

    def scheduler(self, samples: Sequence[Sample]) -> HostScheduler | None:
        """A stage that decides when samples may start (the fetch stage's per-host politeness) returns
        a scheduler for this shard's samples; the worker uses the first one it gets."""
        return None

    def close(self) -> None:  # noqa: B027 - optional: most stages hold nothing
        """The shard is over: release connections, pools, models."""


def columns_of(stages: Iterable[Stage]) -> list[pa.Field]:
    """The metadata columns that these stages add, in stage order."""
    return [column for stage in stages for column in stage.columns()]


def run_stages(stages: Iterable[Stage], sample: Sample) -> Sample:
    """Take one sample through the stages; a StageError fails it with the stage's status."""
    for stage in stages:
        if not sample.ok:
            break
        try:
            stage(sample)
        except StageError as error:
            sample.fail(error.status or stage.failure, error.message)
    return sample


class _Waiting:
    """A sample of a BatchStage, waiting for its batch to be processed."""

    __slots__ = ("sample", "prepared", "error", "done", "taken", "since")

    def __init__(self, sample: Sample, prepared: Any):
        self.sample, self.prepared = sample, prepared
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.taken = False
        self.since = time.monotonic()


class BatchStage(Stage):
    """A stage that processes samples in batches of up to `batch_size`.

    `prepare(sample)` runs on the sample's own thread (decode, resize, normalise) and may fail
    just that sample. The thread that fills a batch processes it with `process_batch`. A partial
    batch is processed by its oldest sample's thread once no sample has joined it for `linger`
    seconds, or once that oldest sample has waited `max_linger`: the end of a shard (or a shard with
    fewer threads than `batch_size`) never waits long for samples that will not come, and samples that
    keep coming fill the batch. A StageError from `process_batch` fails every sample of the batch.
    """

    batch_size: int = 32
    linger: float = 0.05
    max_linger: float = 1.0

    def __init__(self, config: Any = None) -> None:
        """`config`: the run's Config, which a stage factory is given (unused here)."""
        self._lock = threading.Lock()
        self._pending: list[_Waiting] = []

    def prepare(self, sample: Sample) -> Any:
        """Per-sample work before the batch; its result is handed to `process_batch`."""
        return None

    @abstractmethod
    def process_batch(self, samples: Sequence[Sample], prepared: Sequence[Any]) -> None: ...

    def __call__(self, sample: Sample) -> None:
        waiting = _Waiting(sample, self.prepare(sample))
        with self._lock:
            self._pending.append(waiting)
            oldest = len(self._pending) == 1  # its thread watches the batch; the others only wait for it
            batch = self._take() if len(self._pending) >= self.batch_size else None
        while batch is None and oldest and not waiting.done.wait(self._patience(waiting)):
            with self._lock:
                if waiting.taken:
                    break
                if self._patience(waiting) <= 0:
                    batch = self._take()
        if batch is not None:
            self._process(batch)
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error

    def _patience(self, oldest: _Waiting) -> float:
        """Seconds the batch of `oldest` may still wait: until `linger` after its newest sample, at most
        `max_linger` after `oldest` (no lock: a stale read only wakes the watcher early or late once)."""
        pending = self._pending
        newest = pending[-1].since if pending and not oldest.taken else oldest.since
        return min(newest + self.linger, oldest.since + self.max_linger) - time.monotonic()

    def _take(self) -> list[_Waiting]:
        batch, self._pending = self._pending, []
        for waiting in batch:
            waiting.taken = True
        return batch

    def _process(self, batch: list[_Waiting]) -> None:
        try:
            self.process_batch([w.sample for w in batch], [w.prepared for w in batch])
        except BaseException as error:  # noqa: BLE001 - each sample's thread re-raises it
            for waiting in batch:
                waiting.error = error
        finally:
            for waiting in batch:
                waiting.done.set()


# name -> a factory taking the Config and returning a Stage (a Stage class with such an __init__ is one)
STAGES: Registry[Any] = Registry("stages", "img2dataset_ng.stages", builtins={})


def register_stage(name: str, factory: Any) -> None:
    """Make `stages=[name]` add `factory(config)` to every shard's stages; third-party packages may
    instead declare an entry point in the `img2dataset_ng.stages` group."""
    STAGES.register(name, factory)
