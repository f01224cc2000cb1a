"""distributor="multiprocessing": spawned worker processes on this machine, one shard each at a time."""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from typing import Any, TypeVar

from ..config import RunConfig
from .base import Report, ShardFn, fill

S = TypeVar("S")
R = TypeVar("R")


class WorkerDied(RuntimeError):
    """The process running a shard exited before returning its result (killed, out of memory)."""


def died_message(exitcode: int | None) -> str:
    message = f"worker process died with exit code {exitcode}"
    if exitcode == 1:  # Python's own exit on an error before the worker loop: usually the script itself
        message += (
            " (its error is printed above; a script that calls download() with the multiprocessing "
            'distributor must do so under `if __name__ == "__main__":`)'
        )
    elif exitcode is not None and exitcode < 0:
        message += f" (killed by signal {-exitcode}; out of memory?)"
    return message


class ShardError(RuntimeError):
    """A shard raised in a worker process; the message carries the worker's traceback."""


PROGRESS, DONE = "progress", "done"


def _worker_loop(conn: Connection) -> None:
    """Runs in each worker process: receive (fn, shard); send progress messages, then the outcome.

    Ctrl-C reaches every process of the terminal's group: the parent alone handles it (and ends
    the workers), so the workers ignore it rather than each printing a traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
        self.processes_count = self.workers = processes_count
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
                        yield shard, WorkerDied(died_message(worker.process.exitcode))
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
