"""distributor="multiprocessing": worker processes on this machine, one shard each at a time (and the
next beside it while the first only waits for throttled hosts), forked from a fork server that has
imported the worker's modules once."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as connection_wait
from typing import Any, TypeVar

from ..config import RunConfig
from .base import Report, ShardFn

S = TypeVar("S")
R = TypeVar("R")
_END = object()


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


PROGRESS, IDLE, DONE = "progress", "idle", "done"
SHARDS_PER_PROCESS = 8  # at once in a process: one at work, the others waiting only for hosts that back off


class _Report:
    """What a shard running in a worker process tells the parent: progress, and when it is idle."""

    def __init__(self, send: Callable[[tuple[Any, ...]], None], token: int):
        self.send, self.token = send, token

    def __call__(self, samples: int, successes: int) -> None:
        self.send((PROGRESS, samples, successes))

    def idle(self) -> None:
        """The shard waits only for hosts that back off: the process may start another one beside it."""
        self.send((IDLE, self.token))


def _run_shard(send: Callable[[tuple[Any, ...]], None], token: int, fn: ShardFn, shard: Any) -> None:
    try:
        outcome: tuple[Any, ...] = (DONE, token, True, fn(shard, _Report(send, token)))
    except Exception:  # noqa: BLE001 - reported to the parent as the shard's failure
        outcome = (DONE, token, False, ShardError(traceback.format_exc()))
    try:
        send(outcome)
    except Exception:  # noqa: BLE001 - a result that cannot be sent (not picklable) fails the shard
        try:
            send((DONE, token, False, ShardError(traceback.format_exc())))
        except Exception:  # noqa: BLE001 - the pipe itself is broken: the parent sees the process die
            os._exit(1)


def _worker_loop(conn: Connection, environ: dict[str, str]) -> None:
    """Runs in each worker process: receive (token, fn, shard) tasks, run each on a thread of its own
    (a second one comes only when the first is idle), send progress messages and each one's outcome.

    The fork server was started with the environment of the parent's first run: the worker takes the
    parent's environment of now (credentials, proxies set since), as a spawned process would.
    Ctrl-C reaches every process of the terminal's group: the parent alone handles it (and ends
    the workers), so the workers ignore it rather than each printing a traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    sending = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with sending:
            conn.send(message)

    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        threading.Thread(target=_run_shard, args=(send, *task), daemon=True, name=f"shard-{task[0]}").start()


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext):
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_loop, args=(child, dict(os.environ)), daemon=True, name="img2dataset-ng-worker"
        )
        self.process.start()
        child.close()
        self.shards: dict[int, Any] = {}  # token -> shard, running here
        self.idle: set[int] = set()  # tokens of the shards that only wait for hosts

    def has_room(self) -> bool:
        """No shard at all, or fewer than SHARDS_PER_PROCESS and all of them idle."""
        return len(self.shards) < SHARDS_PER_PROCESS and len(self.idle) == len(self.shards)

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


# What the fork server imports once, so that a worker process starts in milliseconds instead of
# importing numpy, pyarrow, OpenCV and the stages again (about 1 CPU-s per process on this machine).
PRELOAD = ["img2dataset_ng.worker"]


def _context() -> multiprocessing.context.BaseContext:
    """The fork server's context: like "spawn", a worker is never a fork of the parent (whose threads
    and locks it would inherit, in a notebook or a Spark driver), but a fork of a clean server process
    started once per parent process (and kept for its later runs), which has imported `PRELOAD`."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # not a POSIX system
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()  # does not wait: the server imports while this process reads the first shard
    return context


def stop_fork_server() -> None:
    """Stop this process's fork server and wait for it (the command line does, before it exits): its CPU
    time and its workers' then count in this process's children's (`time img2dataset-ng ...`), which an
    orphaned server, reaped by init, would take with it. Python has no public call for it (3.9-3.13)."""
    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    if stop is not None:
        stop()


class MultiprocessingDistributor:
    """`processes_count` worker processes, each running one shard at a time, and the next one beside it
    when the first only waits for hosts that back off (a throttled host's urls at its end).

    Each process is watched: one that dies (killed, out of memory) fails exactly the shards it
    held, with `WorkerDied`, and is replaced; nothing waits forever on a dead process.
    """

    reports_progress = True

    def __init__(self, processes_count: int):
        self.processes_count = self.workers = processes_count
        self.context = _context()
        self.pool: list[_Worker] = []

    @classmethod
    def from_config(cls, config: RunConfig) -> MultiprocessingDistributor:
        return cls(config.processes_count)

    def map(
        self, fn: ShardFn, shards: Iterable[S], on_progress: Report | None = None
    ) -> Iterator[tuple[S, R | BaseException]]:
        source = iter(shards)
        tokens = itertools.count()
        pending = next(source, _END)  # read before the first process starts, which waits for the fork server
        try:
            while True:
                while pending is not _END and (worker := self._with_room()) is not None:
                    token = next(tokens)
                    worker.shards[token] = pending
                    worker.conn.send((token, fn, pending))
                    pending = next(source, _END)
                busy = [w for w in self.pool if w.shards]
                if not busy:
                    break
                ready = set(connection_wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
                for worker in [w for w in busy if w.conn in ready or w.process.sentinel in ready]:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        self.pool.remove(worker)
                        worker.process.join()
                        worker.conn.close()
                        for shard in worker.shards.values():
                            yield shard, WorkerDied(died_message(worker.process.exitcode))
                        continue
                    if message[0] == PROGRESS:
                        if on_progress is not None:
                            on_progress(message[1], message[2])
                    elif message[0] == IDLE:
                        worker.idle.add(message[1])
                    else:
                        _, token, _, result = message
                        worker.idle.discard(token)
                        yield worker.shards.pop(token), result
        finally:
            for worker in [w for w in self.pool if w.shards]:  # interrupted: do not leave processes behind
                self.pool.remove(worker)
                worker.process.terminate()
                worker.stop()

    def _with_room(self) -> _Worker | None:
        """Where the next shard goes: a process with nothing to do, a new one, or one whose shards are idle."""
        empty = [w for w in self.pool if not w.shards]
        if empty:
            return empty[0]
        if len(self.pool) < self.processes_count:
            self.pool.append(_Worker(self.context))
            return self.pool[-1]
        return next((w for w in self.pool if w.has_room()), None)

    def close(self) -> None:
        while self.pool:
            self.pool.pop().stop()
