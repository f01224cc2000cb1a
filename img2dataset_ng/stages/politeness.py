"""Per-host politeness: which sample starts next, so that no host gets more than its share.

A shard's samples wait in one queue per host. A thread that is free takes the lowest-indexed sample
whose host may start a request now: it has a free slot (fewer requests running than its limit) and
its next start time has come (the minimum interval, or a backoff after 429/503). Threads never wait
for a host while holding its slot: a host that is busy or backing off is skipped and the thread goes
on with the others; a thread waits only when no host at all may start.

Each host's limit adapts (additive increase, multiplicative decrease): it starts at
`max_host_concurrency`, halves on 429, 5xx and timeouts (once per round of requests), and grows back
by one per `limit` successes up to the cap. A host that answers 429/503 also gets a pace, a time
between request starts learnt the same way: it doubles at each 429/503 (from `FIRST_PACE`) and
shrinks by 0.5% at each success, so that requests settle just under the rate the host admits
instead of running into its limit (and its Retry-After) again and again.

A host that fails at the connection level (refused, name resolution, TLS) `GIVE_UP_AFTER` times in
a row without a success is given up for the rest of the shard: its remaining samples fail at once
with the same reason instead of each waiting for its timeout. A `Retry-After` longer than
`MAX_BACKOFF` gives the host up the same way.

The scheduler lives for one shard (each built-in distributor runs one shard at a time per worker
process, so its caps are per worker process); the fetch stage owns it, takes the sample's slot back
with `release` when its request ends, and the worker (`worker.in_order`) asks it for samples. What
it learnt about hosts that pushed back (limit, pace, backoff) goes to the next shard of the same
process through `HostMemory`; given-up hosts are not remembered (a new shard tries them again).
"""

from __future__ import annotations

import heapq
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

MAX_BACKOFF = 60.0  # seconds: the longest a host is waited for; a longer Retry-After gives it up
FIRST_BACKOFF = 1.0  # seconds after a first 429/503 without Retry-After; doubled at each one in a row
GIVE_UP_AFTER = 3  # connection-level failures in a row, without a success, before a host is given up
TOP_HOSTS = 100  # hosts kept in a shard's stats: the most throttled, then the most requested
MEMORY_HOSTS = 10_000  # hosts whose learnt limits a worker process remembers from shard to shard
FIRST_PACE = 0.05  # seconds between request starts after a host's first 429/503
MAX_PACE = 10.0
PACE_RELEASE = 0.995  # the pace's factor at each success: about 140 successes undo a doubling


class Outcome(Enum):
    """What a sample's request told about its host."""

    SUCCESS = "success"  # an answer that is not a failure of the host (404 included)
    THROTTLED = "throttled"  # 429 or 503: back off
    OVERLOADED = "overloaded"  # another 5xx, or a timeout: fewer requests at once
    UNREACHABLE = "unreachable"  # refused, name resolution, TLS: counts toward giving the host up
    REFUSED = "refused"  # an opt-out (robots.txt, TDM-Rep, X-Robots-Tag): the host is fine
    NEUTRAL = "neutral"  # nothing learnt about the host (a bad url, a body too large)


@dataclass
class HostStats:
    """What one host saw in a shard: the per-host counts of the shard's stats file."""

    requests: int = 0  # http requests sent (robots.txt and redirects included)
    throttled: int = 0  # 429 and 503 answers
    backoff_seconds: float = 0.0  # time the host was held back after them
    refusals: int = 0  # samples refused by an opt-out
    given_up: str | None = None  # why the rest of its samples failed at once

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "requests": self.requests,
            "throttled": self.throttled,
            "backoff_seconds": round(self.backoff_seconds, 3),
            "refusals": self.refusals,
        }
        if self.given_up:
            out["given_up"] = self.given_up
        return out


@dataclass
class _Host:
    name: str | None
    limit: float  # requests at once, adapted between 1 and the cap
    queue: list[int] = field(default_factory=list)  # heap of the indices waiting for this host
    active: int = 0
    next_start: float = 0.0
    throttles: int = 0  # 429/503 in a row
    failures: int = 0  # connection-level failures in a row
    reacted: float = -math.inf  # when it was last slowed down: requests started before do not slow it again
    pace: float = 0.0  # learnt seconds between request starts (429/503 answers raise it)
    scheduled: bool = False  # in the ready heap or the timer heap
    stats: HostStats = field(default_factory=HostStats)


class HostMemory:
    """What a worker process learnt about the hosts that pushed back (limit, pace, backoff), handed from one
    shard's scheduler to the next so that each shard does not run into the same 429s again. Bounded: the
    hosts least recently remembered go first."""

    def __init__(self, size: int = MEMORY_HOSTS):
        self.size = size
        self.lock = threading.Lock()
        self.hosts: OrderedDict[str, tuple[float, float, float]] = OrderedDict()  # (limit, pace, next start)

    def recall(self, name: str) -> tuple[float, float, float] | None:
        with self.lock:
            return self.hosts.get(name)

    def keep(self, learnt: dict[str, tuple[float, float, float]]) -> None:
        with self.lock:
            for name, state in learnt.items():
                self.hosts.pop(name, None)
                self.hosts[name] = state
            while len(self.hosts) > self.size:
                self.hosts.popitem(last=False)


MEMORY = HostMemory()  # the process's


class HostScheduler:
    """Decides which sample starts next. Every method but `release` and `given_up` is called with `lock`
    held (`worker.in_order` holds it); `release` and `given_up` take it themselves.

    `cap=None` schedules without limits (in index order, deferred samples when they are due).
    """

    def __init__(
        self,
        hosts: Iterable[str | None],
        cap: int | None = None,
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        memory: HostMemory | None = None,
    ):
        self.lock = threading.Condition()
        self.memory = memory
        self.cap, self.interval, self.clock = cap, interval, clock
        self._hosts: dict[str | None, _Host] = {}
        self._host_of: list[_Host] = []  # by sample index
        self._ready: list[tuple[int, int, _Host]] = []  # (first index, tie-break, host): may start now
        self._timers: list[tuple[float, int, _Host | int]] = []  # (when, tie-break, host to wake or index due)
        self._holding: dict[int, float] = {}  # index -> when its request started, while it holds a slot
        self._ticket = 0
        self.unfinished = 0  # samples queued, running or deferred
        for index, name in enumerate(hosts):
            host = self._hosts.get(name)
            if host is None:
                # samples without a host (bad urls: they fail at once) are never held back
                host = self._hosts[name] = _Host(name, float(cap) if cap and name is not None else math.inf)
                learnt = memory.recall(name) if memory is not None and cap and name is not None else None
                if learnt is not None:  # an earlier shard of this process found it pushing back
                    limit, host.pace, host.next_start = learnt
                    host.limit = min(host.limit, limit)
            self._host_of.append(host)
            host.queue.append(index)  # indices come in order: already a heap
            self.unfinished += 1
        now = clock()
        for host in self._hosts.values():
            self._schedule(host, now)

    # --- the worker's side (lock held) -------------------------------------------------------

    def take(self, at_most: float = math.inf) -> int | None:
        """The index (not above `at_most`) of a sample that may start now, its host's slot taken; None if
        none may."""
        now = self.clock()
        self._wake(now)
        while self._ready and self._ready[0][0] <= at_most:
            _, _, host = heapq.heappop(self._ready)
            host.scheduled = False
            if not host.queue:
                continue
            if not self._may_start(host, now):
                self._schedule(host, now)
                continue
            index = heapq.heappop(host.queue)
            if host.stats.given_up is None:  # a given-up host's samples fail at once, without a request
                host.active += 1
                host.next_start = max(host.next_start, now) + max(self.interval, host.pace)
                self._holding[index] = now
            self._schedule(host, now)
            return index
        return None

    def wait_time(self) -> float | None:
        """Seconds until a waiting host or deferred sample is due; None when only a release can help."""
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.clock())

    def defer(self, index: int, at: float) -> None:
        """Start sample `index` again from its first stage, not before `at` (a monotonic time)."""
        self._release(index, Outcome.NEUTRAL, None, self.clock())
        self._push_timer(at, index)

    def finished(self, index: int) -> None:
        """Sample `index` went through every stage: its slot is free if the fetch did not free it."""
        self._release(index, Outcome.NEUTRAL, None, self.clock())
        self.unfinished -= 1

    def remember(self) -> None:
        """Hand what was learnt about the hosts that pushed back to the next shard's scheduler (`memory`)."""
        if self.memory is None or self.cap is None:
            return
        with self.lock:
            learnt = {
                h.name: (h.limit, h.pace, h.next_start)
                for h in self._hosts.values()
                if h.name is not None and (h.pace > 0 or h.limit < self.cap)
            }
        self.memory.keep(learnt)

    def host_stats(self, limit: int = TOP_HOSTS) -> dict[str, dict[str, object]]:
        """The per-host counts of the hosts that were asked something: the most throttled first, then the
        most requested; `limit` of them."""
        hosts = [h for h in self._hosts.values() if h.name is not None and h.stats != HostStats()]
        hosts.sort(key=lambda h: (-h.stats.throttled, -h.stats.requests, h.name))
        return {h.name: h.stats.as_dict() for h in hosts[:limit]}  # type: ignore[misc]

    # --- the fetch stage's side (takes the lock) -----------------------------------------------

    def given_up(self, index: int) -> str | None:
        """Why the host of sample `index` was given up, or None."""
        with self.lock:
            return self._host_of[index].stats.given_up

    def release(
        self, index: int, outcome: Outcome, retry_after: float | None = None, requests: int = 0, reason: str = ""
    ) -> float:
        """Sample `index`'s request ended with `outcome`: free its slot and learn from it. Returns the earliest
        time its host may be asked again (`math.inf`: the host is given up)."""
        with self.lock:
            host = self._host_of[index]
            host.stats.requests += requests
            self._release(index, outcome, retry_after, self.clock(), reason)
            self.lock.notify_all()
            return math.inf if host.stats.given_up else host.next_start

    # --- inside ------------------------------------------------------------------------------

    def _may_start(self, host: _Host, now: float) -> bool:
        if host.stats.given_up is not None:
            return True
        return self._has_slot(host) and host.next_start <= now

    @staticmethod
    def _has_slot(host: _Host) -> bool:
        return host.active < host.limit if math.isinf(host.limit) else host.active < max(1, int(host.limit))

    def _schedule(self, host: _Host, now: float) -> None:
        """Put `host` where a thread will find it: ready, or timed for its next start; a host whose slots
        are all taken is found again when one is released."""
        if host.scheduled or not host.queue:
            return
        if self._may_start(host, now):
            self._ticket += 1
            heapq.heappush(self._ready, (host.queue[0], self._ticket, host))
            host.scheduled = True
        elif self._has_slot(host):
            self._push_timer(host.next_start, host)
            host.scheduled = True

    def _push_timer(self, at: float, what: _Host | int) -> None:
        self._ticket += 1
        heapq.heappush(self._timers, (at, self._ticket, what))

    def _wake(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, what = heapq.heappop(self._timers)
            if isinstance(what, int):  # a deferred sample is due: back in its host's queue
                host = self._host_of[what]
                heapq.heappush(host.queue, what)
                if host.queue[0] == what:  # now first: the host's place in the heaps must say so
                    host.scheduled = False  # (an entry left behind is checked when popped)
            else:
                host = what
                host.scheduled = False
            self._schedule(host, now)

    def _release(self, index: int, outcome: Outcome, retry_after: float | None, now: float, reason: str = "") -> None:
        started = self._holding.pop(index, None)
        host = self._host_of[index]
        if started is not None:
            host.active -= 1
        if self.cap is not None and host.name is not None:
            self._learn(host, outcome, retry_after, now, started, reason)
        self._schedule(host, now)

    def _learn(
        self, host: _Host, outcome: Outcome, retry_after: float | None, now: float, started: float | None, reason: str
    ) -> None:
        stats = host.stats
        if outcome is Outcome.SUCCESS:
            host.throttles = host.failures = 0
            host.limit = min(float(self.cap or math.inf), host.limit + 1.0 / max(host.limit, 1.0))
            host.pace *= PACE_RELEASE
            return
        if outcome is Outcome.REFUSED:
            stats.refusals += 1
            return
        if outcome is Outcome.UNREACHABLE:
            host.failures += 1
            if host.failures >= GIVE_UP_AFTER and stats.given_up is None:
                stats.given_up = reason
            return
        # the answers to requests that were all in flight together are one signal, not several: only a
        # request started after the last reaction makes the host slower again
        new_round = started is not None and started >= host.reacted
        if new_round and outcome in (Outcome.THROTTLED, Outcome.OVERLOADED):
            host.limit = max(1.0, host.limit / 2)
            host.reacted = now
        if outcome is Outcome.THROTTLED:
            stats.throttled += 1
            if new_round:
                host.throttles += 1
                host.pace = min(MAX_PACE, max(FIRST_PACE, 2 * host.pace))
            if retry_after is not None and retry_after > MAX_BACKOFF:
                stats.given_up = f"{reason} (Retry-After {retry_after:.0f}s)" if reason else "throttled"
                return
            if retry_after is not None:
                delay = retry_after * random.uniform(1.0, 1.1)  # noqa: S311 - jitter, not a secret
            else:
                doubling = FIRST_BACKOFF * 2 ** max(0, host.throttles - 1)
                delay = min(MAX_BACKOFF, doubling) * random.uniform(0.5, 1.0)  # noqa: S311
            until = now + delay
            if until > host.next_start:
                stats.backoff_seconds += until - max(host.next_start, now)
                host.next_start = until
