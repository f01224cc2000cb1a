"""Per-process memory budgets: the bytes that downloaded bodies and decoded pixels may hold at once.

Without a budget a worker process could hold `thread_count x max_download_bytes` of bodies (12.5 GiB
at the defaults) and as many large decodes as it has threads. With one, a thread that would go over
waits (until its request's deadline, for bodies) for others to release what they hold. Bodies and
decodes each get half of `memory_budget`, so that samples holding a body while they wait for a
decode can never starve the downloads that would free memory, nor the other way round.

Budgets are shared by every shard that runs in the process (one per name and size).
"""

from __future__ import annotations

import os
import threading
import time

MAX_DEFAULT_BUDGET = 4 << 30  # bytes per process when `memory_budget` is None


def memory_budget(configured: int | None, processes_per_machine: int) -> int:
    """`memory_budget` as given, or min(4 GiB, half the machine's memory / its worker processes)."""
    if configured is not None:
        return configured
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MAX_DEFAULT_BUDGET
    return min(MAX_DEFAULT_BUDGET, memory // 2 // max(1, processes_per_machine))


class Budget:
    """`capacity` bytes that threads take (`acquire`) and give back (`release`)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.changed = threading.Condition()

    def acquire(self, size: int, deadline: float | None = None) -> bool:
        """Take `size` bytes, waiting while they are not free; False when `size` can never fit or
        `deadline` (a `time.monotonic()` value) passes first."""
        if size > self.capacity:
            return False
        with self.changed:
            while self.used + size > self.capacity:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return False
                self.changed.wait(timeout)
            self.used += size
            return True

    def release(self, size: int) -> None:
        if size:
            with self.changed:
                self.used -= size
                self.changed.notify_all()


_budgets: dict[tuple[str, int], Budget] = {}
_lock = threading.Lock()


def shared(name: str, capacity: int) -> Budget:
    """The process's budget called `name` ("bodies", "decodes") of `capacity` bytes."""
    with _lock:
        return _budgets.setdefault((name, capacity), Budget(capacity))


def bodies(configured: int | None, processes_per_machine: int) -> Budget:
    return shared("bodies", memory_budget(configured, processes_per_machine) // 2)


def decodes(configured: int | None, processes_per_machine: int) -> Budget:
    return shared("decodes", memory_budget(configured, processes_per_machine) // 2)
