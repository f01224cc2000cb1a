"""The per-host scheduler on its own, on a clock the test moves: caps, backoff, adaptive limits, give-ups.

Real downloads through it, against a server playing several hosts, are in test_hosts.py.
"""

from __future__ import annotations

import math
import threading
import time

import pytest

from img2dataset_ng import worker
from img2dataset_ng.sample import Sample
from img2dataset_ng.stages.base import Stage
from img2dataset_ng.stages.politeness import (
    FIRST_PACE,
    GIVE_UP_AFTER,
    MAX_BACKOFF,
    MAX_PACE,
    PACE_RELEASE,
    PACE_STEP,
    HostScheduler,
    HostTable,
    Outcome,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(scheduler: HostScheduler) -> list[int]:
    """Every sample that may start now."""
    taken = []
    while (index := scheduler.take()) is not None:
        taken.append(index)
    return taken


def samples(count: int) -> list[Sample]:
    return [Sample(i, f"k{i}", {}) for i in range(count)]


def test_a_host_never_gets_more_than_the_cap_and_busy_hosts_are_skipped():
    clock = Clock()
    hosts = ["a"] * 6 + ["b"] * 2 + ["a"] * 2 + [None]
    scheduler = HostScheduler(hosts, cap=3, clock=clock)
    assert drain(scheduler) == [0, 1, 2, 6, 7, 10]  # a's three slots, then b's samples and the hostless one
    scheduler.release(1, Outcome.SUCCESS)
    assert drain(scheduler) == [3]  # one slot freed: a's next sample, in index order
    for index in (0, 2, 3):
        scheduler.release(index, Outcome.SUCCESS)
    assert drain(scheduler) == [4, 5, 8]


def test_without_a_cap_samples_start_in_index_order():
    scheduler = HostScheduler([None] * 5)
    assert drain(scheduler) == [0, 1, 2, 3, 4]


def test_a_throttled_host_backs_off_for_its_retry_after_while_others_go_on():
    clock = Clock()
    scheduler = HostScheduler(["slow"] * 4 + ["fast"] * 4, cap=1, clock=clock)
    assert drain(scheduler) == [0, 4]
    again = scheduler.release(0, Outcome.THROTTLED, 5.0, requests=1, reason="HTTP Error 429: Too Many Requests")
    assert 1005.0 <= again <= 1005.5  # Retry-After honoured (with a little jitter, never less)
    scheduler.release(4, Outcome.SUCCESS, requests=1)
    assert drain(scheduler) == [5]  # the throttled host waits; the other one goes on
    assert scheduler.wait_time() == pytest.approx(again - clock.now)
    clock.now = again
    assert drain(scheduler) == [1]
    stats = scheduler.host_stats()
    assert list(stats) == ["slow", "fast"]  # the most throttled first
    assert stats["slow"]["throttled"] == 1
    assert stats["slow"]["backoff_seconds"] == pytest.approx(again - 1000.0, abs=1e-3)


def test_backoff_without_retry_after_doubles_up_to_the_cap():
    clock = Clock()
    scheduler = HostScheduler(["a"] * 20, cap=1, clock=clock)
    delays = []
    for _ in range(10):
        index = scheduler.take()
        assert index is not None
        again = scheduler.release(index, Outcome.THROTTLED)
        delays.append(again - clock.now)
        clock.now = again
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and 2.0 <= delays[2] <= 4.0
    assert max(delays) <= MAX_BACKOFF and delays[-1] >= MAX_BACKOFF / 2
    index = scheduler.take()
    scheduler.release(index, Outcome.SUCCESS)  # a success ends the series: the next backoff is short again
    clock.now += MAX_PACE  # the pace learnt from ten 429s in a row still spaces the starts
    index = scheduler.take()
    before = scheduler.host_stats()["a"]["backoff_seconds"]
    clock.now += MAX_PACE  # past the pace: what this 429 adds is its own backoff, the first of a series
    scheduler.release(index, Outcome.THROTTLED)
    assert 0.5 <= scheduler.host_stats()["a"]["backoff_seconds"] - before <= 1.0


def test_a_throttled_host_gets_a_pace_that_successes_wear_down():
    clock = Clock()
    scheduler = HostScheduler(["a"] * 300, cap=8, clock=clock)
    index = scheduler.take()
    clock.now = scheduler.release(index, Outcome.THROTTLED, retry_after=0.0)
    started = []
    for _ in range(100):  # one request at a time, each a success: the starts are spaced by the pace
        index = scheduler.take()
        assert index is not None and scheduler.take() is None  # the next one is not due yet
        started.append(clock.now)
        scheduler.release(index, Outcome.SUCCESS)
        clock.now += scheduler.wait_time()
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert gaps[0] == pytest.approx(FIRST_PACE) and gaps[-1] == pytest.approx(FIRST_PACE * PACE_RELEASE**98)
    assert all(b < a for a, b in zip(gaps, gaps[1:]))


def test_a_long_pace_comes_back_in_seconds_not_in_hundreds_of_successes():
    clock = Clock()
    scheduler = HostScheduler(["a"] * 100, cap=8, clock=clock)
    slot = scheduler._hosts["a"].slot
    slot.pace = 6.4  # after seven 429s in a row
    elapsed = 0.0
    while slot.pace > 3.2:
        index = scheduler.take()
        scheduler.release(index, Outcome.SUCCESS)
        clock.now += scheduler.wait_time()
        elapsed += slot.pace
    assert 10 < elapsed < 20  # halved in about 14 s of successes (5% per second), not 140 successes
    slot.pace = PACE_STEP / 2  # a fast host's pace shrinks per success
    scheduler.release(scheduler.take(), Outcome.SUCCESS)
    assert slot.pace == pytest.approx(PACE_STEP / 2 * PACE_RELEASE)


def test_the_limit_halves_once_per_round_and_grows_back_on_successes():
    clock = Clock()
    scheduler = HostScheduler(["a"] * 400, cap=8, clock=clock)
    first = drain(scheduler)
    assert len(first) == 8
    clock.now += 0.1
    for index in first:  # eight timeouts of requests that all started before the first halving: one halving
        scheduler.release(index, Outcome.OVERLOADED)
    assert len(drain(scheduler)) == 4
    running = list(range(8, 12))
    served = 0
    while len(running) < 8 and served < 200:  # successes, one at a time, grow the limit back to the cap
        clock.now += 0.1
        scheduler.release(running.pop(0), Outcome.SUCCESS)
        served += 1
        running += drain(scheduler)
    assert len(running) == 8 and served < 100
    clock.now += 0.1
    for index in running:
        scheduler.release(index, Outcome.SUCCESS)
    assert len(drain(scheduler)) == 8  # never above the cap


def test_answers_to_requests_in_flight_together_count_once():
    clock = Clock()
    scheduler = HostScheduler(["a"] * 40, cap=8, clock=clock)
    burst = drain(scheduler)
    assert len(burst) == 8
    clock.now += 0.1
    for index in burst:  # eight 429s to eight requests in flight together: one signal
        scheduler.release(index, Outcome.THROTTLED)
    slot = scheduler._hosts["a"].slot
    assert (slot.limit, slot.throttles, slot.pace) == (4.0, 1, FIRST_PACE)
    assert scheduler.host_stats()["a"]["throttled"] == 8
    assert scheduler.wait_time() <= 1.0  # the first backoff of a series, not the eighth


def test_the_next_shard_starts_from_what_the_last_one_learnt():
    clock, table = Clock(), HostTable(size=2)
    first = HostScheduler(["slow"] * 8 + ["fine"] * 2, cap=8, clock=clock, table=table)
    burst = drain(first)
    clock.now += 0.1
    for index in burst:
        first.release(index, Outcome.THROTTLED if index < 8 else Outcome.SUCCESS, retry_after=2.0)
        first.finished(index)
    first.close()
    assert list(table.slots) == ["slow"]  # only hosts that pushed back stay when no shard uses them
    second = HostScheduler(["slow"] * 8 + ["fine"] * 8, cap=8, clock=clock, table=table)
    assert drain(second) == list(range(8, 16))  # slow is still backing off; fine is not held back
    clock.now += 2.5
    assert len(drain(second)) == 1  # then its pace spaces the starts, at a limit of 4
    assert (second._hosts["slow"].slot.limit, second._hosts["slow"].slot.pace) == (4.0, FIRST_PACE)
    second.close()
    for name in ("a", "b"):
        throttled = HostScheduler([name], cap=8, clock=clock, table=table)
        throttled.release(throttled.take(), Outcome.THROTTLED)
        throttled.close()
    assert list(table.slots) == ["a", "b"]  # bounded: the least recently used went


def test_shards_running_at_once_in_a_process_share_each_hosts_cap():
    clock, table = Clock(), HostTable()
    first = HostScheduler(["a"] * 4 + ["b"], cap=3, clock=clock, table=table)
    second = HostScheduler(["a"] * 4 + ["c"], cap=3, clock=clock, table=table)
    assert drain(first) == [0, 1, 2, 4]
    assert drain(second) == [4]  # a's three slots are the first shard's: the second goes on with c
    first.release(0, Outcome.SUCCESS)
    assert drain(second) == [0]  # a release in one shard wakes the other's waiting host
    assert drain(first) == []
    second.release(0, Outcome.THROTTLED, retry_after=5.0)
    first.release(1, Outcome.SUCCESS)
    assert drain(first) == [] and drain(second) == []  # one shard's 429 holds the host back for both
    assert first.wait_time() == pytest.approx(second.wait_time()) and first.wait_time() >= 5.0
    assert second.waiting_on_throttled() and not HostScheduler(["d"], cap=3, table=table).waiting_on_throttled()
    clock.now += 6
    assert len(drain(first)) + len(drain(second)) == 1  # limit halved to 1 after the 429, for both
    first.close()
    second.close()
    assert table.slots["a"].shards == 0 and "b" not in table.slots and "c" not in table.slots


def test_a_host_that_cannot_be_reached_is_given_up_and_its_other_samples_fail_at_once():
    clock = Clock()
    scheduler = HostScheduler(["dead"] * 10 + ["ok"], cap=1, clock=clock)
    for attempt in range(GIVE_UP_AFTER):
        index = scheduler.take()
        assert index == attempt
        again = scheduler.release(index, Outcome.UNREACHABLE, reason="connection refused")
        scheduler.finished(index)
    assert math.isinf(again)
    rest = drain(scheduler)
    assert rest == [3, 4, 5, 6, 7, 8, 9, 10]  # no slot needed: they fail without a request
    assert all(scheduler.given_up(i) == "connection refused" for i in range(3, 10))
    assert scheduler.given_up(10) is None
    assert scheduler.host_stats()["dead"]["given_up"] == "connection refused"


def test_a_success_in_between_keeps_a_host():
    scheduler = HostScheduler(["flaky"] * 10, cap=1, clock=Clock())
    for outcome in [Outcome.UNREACHABLE] * (GIVE_UP_AFTER - 1) + [Outcome.SUCCESS] + [Outcome.UNREACHABLE]:
        index = scheduler.take()
        scheduler.release(index, outcome, reason="connection refused")
    assert scheduler.given_up(0) is None


def test_a_retry_after_beyond_the_longest_backoff_gives_the_host_up():
    scheduler = HostScheduler(["a"] * 3, cap=1, clock=Clock())
    index = scheduler.take()
    again = scheduler.release(index, Outcome.THROTTLED, retry_after=3600, reason="HTTP Error 429: Too Many Requests")
    assert math.isinf(again)
    assert scheduler.given_up(1) == "HTTP Error 429: Too Many Requests (Retry-After 3600s)"


def test_a_deferred_sample_starts_again_when_due_and_before_later_ones():
    clock = Clock()
    scheduler = HostScheduler(["a", "b", "b", "b"], cap=8, clock=clock)
    assert scheduler.take() == 0
    scheduler.defer(0, clock.now + 2)
    assert scheduler.take(at_most=0) is None  # past the reorder budget only the head may start: not yet due
    assert scheduler.wait_time() == pytest.approx(2.0)
    clock.now += 2
    assert scheduler.take(at_most=0) == 0
    assert drain(scheduler) == [1, 2, 3]


def test_minimum_interval_between_starts_per_host():
    clock = Clock()
    scheduler = HostScheduler(["a"] * 3 + ["b"] * 3, cap=8, interval=1.5, clock=clock)
    assert drain(scheduler) == [0, 3]
    assert scheduler.wait_time() == pytest.approx(1.5)
    clock.now += 1.5
    assert drain(scheduler) == [1, 4]


class Record(Stage):
    """Stores 100 kB per sample and notes which thread ran it, when; sample 0 of a shard may be slow."""

    def __init__(self, slow_first: float = 0.0, each: float = 0.0) -> None:
        self.slow_first, self.each = slow_first, each
        self.runs: list[tuple[int, str, float]] = []
        self.lock = threading.Lock()
        self.running = self.peak = 0

    def __call__(self, sample: Sample) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.runs.append((sample.index, threading.current_thread().name, time.monotonic()))
        time.sleep(self.slow_first if sample.index == 0 else self.each)
        sample.data = b"x" * 100_000
        with self.lock:
            self.running -= 1


def test_an_idle_shard_says_so_once_and_keeps_few_threads():
    scheduler = HostScheduler(["slow"] * 14, cap=2, table=HostTable())
    with scheduler.lock:  # the host already answered 429: one request at a time, paced
        scheduler.release(scheduler.take(), Outcome.THROTTLED, retry_after=0.1)
        scheduler.defer(0, 0.0)
    idle: list[float] = []
    stage = Record(each=0.08)
    out = [s.index for s in worker.in_order(samples(14), [stage], 16, scheduler, lambda: idle.append(time.monotonic()))]
    assert out == list(range(14)) and len(idle) == 1
    after = {name for _, name, started in stage.runs if started > idle[0] + 0.1}
    assert len(stage.runs) - len([r for r in stage.runs if r[2] <= idle[0] + 0.1]) >= 4  # work went on after
    assert 1 <= len(after) <= worker.IDLE_THREADS


def test_shards_side_by_side_share_the_reorder_budget(monkeypatch):
    monkeypatch.setattr(worker, "REORDER_BUDGET", 250_000)
    table = HostTable()
    first_stage, second_stage = Record(slow_first=1.5), Record(each=0.05)
    first = worker.in_order(samples(20), [first_stage], 8, HostScheduler([None] * 20, table=table))
    handed_on = []
    consumer = threading.Thread(target=lambda: handed_on.extend(s.index for s in first))
    consumer.start()
    time.sleep(0.5)  # the first shard's head is slow: the samples after it hold more than the budget
    second = [s.index for s in worker.in_order(samples(6), [second_stage], 8, HostScheduler([None] * 6, table=table))]
    consumer.join()
    assert second == list(range(6)) and handed_on == list(range(20))
    assert second_stage.peak == 1  # past the process's budget, the second shard only starts its head
    assert worker.REORDERING.bytes == 0
