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
shrinks by 0.5% at each success (by 5% per second when successes are more than 0.1 s apart, so
that a long pace also comes back within seconds), so that requests settle just under the rate the host
admits instead of running into its limit (and its Retry-After) again and again.

A host that fails at the connection level (refused, name resolution, TLS) `GIVE_UP_AFTER` times in
a row without a success is given up for the rest of the shard: its remaining samples fail at once
with the same reason instead of each waiting for its timeout. A `Retry-After` longer than
`MAX_BACKOFF` gives the host up the same way.

A scheduler lives for one shard; what it knows of a host's requests (running, limit, pace, next start)
is the worker process's (`HostTable`), shared with the other shards the process runs at once (a shard
waiting only for hosts that back off lets its process start the next one: `worker.in_order`), so the
cap holds per worker process, and what a shard learnt about a host that pushed back is where the next
shard starts. The fetch stage owns the scheduler, takes the sample's slot back with `release` when its
request ends, and the worker asks it for samples. Given-up hosts are the shard's own (a new shard tries
them again).
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
from itertools import islice

MAX_BACKOFF = 60.0  # seconds: the longest a host is waited for; a longer Retry-After gives it up
FIRST_BACKOFF = 1.0  # seconds after a first 429/503 without Retry-After; doubled at each one in a row
GIVE_UP_AFTER = 3  # connection-level failures in a row, without a success, before a host is given up
TOP_HOSTS = 100  # hosts kept in a shard's stats: the most throttled, then the most requested
MEMORY_HOSTS = 10_000  # hosts whose learnt limits a worker process remembers from shard to shard
FIRST_PACE = 0.05  # seconds between request starts after a host's first 429/503
MAX_PACE = 10.0
PACE_RELEASE = 0.995  # the pace's factor at each success: about 140 successes undo a doubling...
PACE_STEP = 0.1  # ...and once per this many seconds of pace, so that a slow pace comes back in time too


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


@dataclass(eq=False)
class HostSlot:
    """One host as its worker process sees it, shared by the shards running there at once."""

    limit: float  # requests at once, adapted between 1 and the cap
    active: int = 0  # requests running
    next_start: float = 0.0
    throttles: int = 0  # 429/503 in a row
    reacted: float = -math.inf  # when it was last slowed down: requests started before do not slow it again
    pace: float = 0.0  # learnt seconds between request starts (429/503 answers raise it)
    shards: int = 0  # schedulers with samples for it
    waiting: list[_Host] = field(default_factory=list)  # shards' hosts that found every slot taken

    def learnt(self, cap: float) -> bool:
        """Whether the host pushed back: worth remembering when no shard uses it."""
        return self.pace > 0 or self.limit < cap or self.throttles > 0


@dataclass(eq=False)
class _Host:
    """One host as a shard sees it: its samples waiting, its counts, whether it was given up."""

    name: str | None
    slot: HostSlot
    scheduler: HostScheduler
    queue: list[int] = field(default_factory=list)  # heap of the indices waiting for this host
    failures: int = 0  # connection-level failures in a row
    scheduled: bool = False  # in the ready heap, the timer heap, or its slot's waiting list
    stats: HostStats = field(default_factory=HostStats)


class HostTable:
    """A worker process's hosts (`HostSlot`), shared by the schedulers of the shards it runs at once and
    handed from one shard to the next, with the one lock they all hold (each scheduler waits on a condition
    of its own over it: a release wakes the threads of the shards it concerns, not all of them). Bounded: of
    the hosts no shard uses, only those that pushed back are kept, `size` of them, the least recently used
    going first."""

    def __init__(self, size: int = MEMORY_HOSTS):
        self.size = size
        self.lock = threading.RLock()  # each shard's scheduler waits on a condition of its own over it
        self.slots: OrderedDict[str, HostSlot] = OrderedDict()

    def join(self, name: str, cap: float) -> HostSlot:
        """The slot of host `name`, for a shard that has samples for it (lock held)."""
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = HostSlot(cap)
        else:
            self.slots.move_to_end(name)
        slot.shards += 1
        return slot

    def leave(self, hosts: Iterable[_Host], cap: float) -> None:
        """A shard is done with `hosts` (lock held)."""
        for host in hosts:
            slot = host.slot
            slot.shards -= 1
            slot.waiting = [h for h in slot.waiting if h is not host]
            if slot.shards == 0 and not slot.learnt(cap) and self.slots.get(host.name) is slot:  # type: ignore[arg-type]
                del self.slots[host.name]  # type: ignore[arg-type]
        unused = (name for name, slot in self.slots.items() if slot.shards == 0)
        for name in list(islice(unused, max(0, len(self.slots) - self.size))):
            del self.slots[name]


TABLE = HostTable()  # the process's


class HostScheduler:
    """Decides which sample starts next. Every method but `release`, `given_up` and `close` is called with
    `lock` held (`worker.in_order` holds it); those three take it themselves.

    `cap=None` schedules without limits (in index order, deferred samples when they are due). `table`:
    the hosts shared with other shards (`TABLE` in a worker); a table of its own when None.
    """

    def __init__(
        self,
        hosts: Iterable[str | None],
        cap: int | None = None,
        interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        table: HostTable | None = None,
    ):
        self.table = table or HostTable()
        self.lock = threading.Condition(self.table.lock)  # notified: this shard's threads only
        self.cap, self.interval, self.clock = cap, interval, clock
        self._hosts: dict[str | None, _Host] = {}
        self._host_of: list[_Host] = []  # by sample index
        self._ready: list[tuple[int, int, _Host]] = []  # (first index, tie-break, host): may start now
        self._timers: list[tuple[float, int, _Host | int]] = []  # (when, tie-break, host to wake or index due)
        self._holding: dict[int, float] = {}  # index -> when its request started, while it holds a slot
        self._ticket = 0
        self.unfinished = 0  # samples queued, running or deferred
        self.closed = False
        with self.lock:
            for index, name in enumerate(hosts):
                host = self._hosts.get(name)
                if host is None:
                    host = self._hosts[name] = _Host(name, self._slot(name), self)
                self._host_of.append(host)
                host.queue.append(index)  # indices come in order: already a heap
                self.unfinished += 1
            now = clock()
            for host in self._hosts.values():
                self._schedule(host, now)

    def _slot(self, name: str | None) -> HostSlot:
        if self.cap and name is not None:
            return self.table.join(name, float(self.cap))
        return HostSlot(math.inf)  # samples without a host (bad urls: they fail at once) are never held back

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
                slot = host.slot
                slot.active += 1
                slot.next_start = max(slot.next_start, now) + max(self.interval, slot.pace)
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

    def close(self) -> None:
        """The shard is done: its hosts' slots stay in the table only if they learnt something."""
        with self.lock:
            if self.cap and not self.closed:
                self.table.leave((h for h in self._hosts.values() if h.name is not None), float(self.cap))
            self.closed = True

    def waiting_on_throttled(self) -> bool:
        """Whether every sample still queued waits for a host that pushed back (429/503: it has a pace) or
        was given up: what a process's other shards may go on with."""
        return all(h.slot.pace > 0 or h.stats.given_up for h in self._hosts.values() if h.queue)

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
            return math.inf if host.stats.given_up else host.slot.next_start

    # --- inside ------------------------------------------------------------------------------

    def _may_start(self, host: _Host, now: float) -> bool:
        if host.stats.given_up is not None:
            return True
        return self._has_slot(host) and host.slot.next_start <= now

    @staticmethod
    def _has_slot(host: _Host) -> bool:
        slot = host.slot
        return slot.active < slot.limit if math.isinf(slot.limit) else slot.active < max(1, int(slot.limit))

    def _schedule(self, host: _Host, now: float) -> None:
        """Put `host` where a thread will find it: ready, timed for its next start, or, when its slots are all
        taken (by this shard or another of the process), on the slot's list of hosts woken by a release."""
        if host.scheduled or not host.queue:
            return
        host.scheduled = True
        if self._may_start(host, now):
            self._ticket += 1
            heapq.heappush(self._ready, (host.queue[0], self._ticket, host))
        elif self._has_slot(host):
            self._push_timer(host.slot.next_start, host)
        else:
            host.slot.waiting.append(host)

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
        if self.cap is not None and host.name is not None:
            self._learn(host, outcome, retry_after, now, started, reason)
        if started is not None:
            slot = host.slot
            slot.active -= 1
            waiting, slot.waiting = slot.waiting, []
            for other in waiting:  # hosts of this shard or another one, waiting for a slot
                other.scheduled = False
                other.scheduler._schedule(other, now)
                if other.scheduler is not self:
                    other.scheduler.lock.notify_all()
        self._schedule(host, now)

    def _learn(
        self, host: _Host, outcome: Outcome, retry_after: float | None, now: float, started: float | None, reason: str
    ) -> None:
        stats, slot = host.stats, host.slot
        if outcome is Outcome.SUCCESS:
            slot.throttles = host.failures = 0
            slot.limit = min(float(self.cap or math.inf), slot.limit + 1.0 / max(slot.limit, 1.0))
            slot.pace *= PACE_RELEASE ** max(1.0, slot.pace / PACE_STEP)  # 5% per second of slow successes
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
        new_round = started is not None and started >= slot.reacted
        if new_round and outcome in (Outcome.THROTTLED, Outcome.OVERLOADED):
            slot.limit = max(1.0, slot.limit / 2)
            slot.reacted = now
        if outcome is Outcome.THROTTLED:
            stats.throttled += 1
            if new_round:
                slot.throttles += 1
                slot.pace = min(MAX_PACE, max(FIRST_PACE, 2 * slot.pace))
            if retry_after is not None and retry_after > MAX_BACKOFF:
                stats.given_up = f"{reason} (Retry-After {retry_after:.0f}s)" if reason else "throttled"
                return
            if retry_after is not None:
                delay = retry_after * random.uniform(1.0, 1.1)  # noqa: S311 - jitter, not a secret
            else:
                doubling = FIRST_BACKOFF * 2 ** max(0, slot.throttles - 1)
                delay = min(MAX_BACKOFF, doubling) * random.uniform(0.5, 1.0)  # noqa: S311
            until = now + delay
            if until > slot.next_start:
                stats.backoff_seconds += until - max(slot.next_start, now)
                slot.next_start = until
