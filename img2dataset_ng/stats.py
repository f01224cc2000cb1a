"""One status counter: counts by status and by reason, for a shard and for a whole run.

The shard stats file, the run's `Summary`, the progress bar and wandb all read these counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .sample import Sample, Status

SUCCESS_REASON = "success"  # the reason counted for a success in `by_reason` (img2dataset's status_dict)


@dataclass
class StatusCounts:
    by_status: dict[Status, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)  # an error message, or "success"

    def add(self, sample: Sample) -> None:
        self.by_status[sample.status] = self.by_status.get(sample.status, 0) + 1
        reason = SUCCESS_REASON if sample.ok else str(sample.error_message)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def merge(self, other: StatusCounts) -> None:
        for status, n in other.by_status.items():
            self.by_status[status] = self.by_status.get(status, 0) + n
        for reason, n in other.by_reason.items():
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n

    def of(self, status: Status) -> int:
        return self.by_status.get(status, 0)

    @property
    def count(self) -> int:
        return sum(self.by_status.values())

    @property
    def successes(self) -> int:
        return self.of(Status.SUCCESS)

    @property
    def success_rate(self) -> float:
        return self.successes / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, int | dict[str, int]]:
        """`count`, `successes`, a count per failure status, and `status_dict` (counts by reason)."""
        out: dict[str, int | dict[str, int]] = {"count": self.count, "successes": self.successes}
        out.update({status.value: self.of(status) for status in Status if status is not Status.SUCCESS})
        out["status_dict"] = dict(self.by_reason)
        return out

    def failures_text(self) -> str:
        """`3 failed to download, 0 failed to resize`: every failure status, named in words."""
        return ", ".join(
            f"{self.of(status)} {status.value.replace('_', ' ')}" for status in Status if status is not Status.SUCCESS
        )


@dataclass
class ShardStats:
    """What one shard did; also the content of its stats file."""

    shard_id: int
    counts: StatusCounts = field(default_factory=StatusCounts)
    start_time: float = 0.0
    end_time: float = 0.0
    # per host: requests, throttled (429/503), backoff_seconds, refusals (opt-outs), given_up (a reason);
    # the most throttled, then most requested hosts (`politeness.TOP_HOSTS`)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # model=...: its name, content hash, column and output size

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time

    def to_json(self) -> str:
        counts = self.counts.as_dict()
        status_dict = counts.pop("status_dict")
        return json.dumps(
            {
                "shard_id": self.shard_id,
                **counts,
                "duration": self.duration,
                "start_time": self.start_time,
                "end_time": self.end_time,
                "status_dict": status_dict,
                "hosts": self.hosts,
                **({"model": self.model} if self.model is not None else {}),
            },
            indent=4,
        )


@dataclass
class Summary:
    """What a run did, summed over the shards it ran (shards done by an earlier run are not counted)."""

    output_folder: str
    shards_done: int = 0
    shards_skipped: int = 0
    failed_shards: list[int] = field(default_factory=list)
    counts: StatusCounts = field(default_factory=StatusCounts)
    duration: float = 0.0
    throttled: dict[str, tuple[int, float]] = field(default_factory=dict)  # host: (429/503 answers, backoff s)

    def add(self, stats: ShardStats) -> None:
        self.shards_done += 1
        self.counts.merge(stats.counts)
        for host, counts in stats.hosts.items():
            if counts.get("throttled"):
                answers, seconds = self.throttled.get(host, (0, 0.0))
                self.throttled[host] = (answers + counts["throttled"], seconds + counts.get("backoff_seconds", 0.0))

    def most_throttled(self, limit: int | None = None) -> list[tuple[str, int, float]]:
        """(host, 429/503 answers, seconds it was held back), the most throttled first."""
        hosts = sorted(self.throttled.items(), key=lambda item: (-item[1][0], item[0]))
        return [(host, answers, seconds) for host, (answers, seconds) in hosts[:limit]]

    @property
    def count(self) -> int:
        return self.counts.count

    @property
    def successes(self) -> int:
        return self.counts.successes

    @property
    def failed_to_download(self) -> int:
        return self.counts.of(Status.FAILED_TO_DOWNLOAD)

    @property
    def failed_to_resize(self) -> int:
        return self.counts.of(Status.FAILED_TO_RESIZE)

    @property
    def status_dict(self) -> dict[str, int]:
        return self.counts.by_reason

    @property
    def success_rate(self) -> float:
        return self.counts.success_rate

    def top_failures(self, limit: int | None = None) -> list[tuple[str, int]]:
        """The failure reasons of `status_dict` with their counts, the most frequent first (ties by reason),
        `limit` of them: what a user looks at first when a run fails more than expected."""
        failures = [(reason, n) for reason, n in self.status_dict.items() if reason != SUCCESS_REASON]
        return sorted(failures, key=lambda failure: (-failure[1], failure[0]))[:limit]

    @property
    def samples_per_second(self) -> float:
        return self.count / self.duration if self.duration else 0.0

    def line(self) -> str:
        failed = f", {len(self.failed_shards)} shard(s) FAILED: {self.failed_shards}" if self.failed_shards else ""
        skipped = f" ({self.shards_skipped} already done, skipped)" if self.shards_skipped else ""
        return (
            f"{self.shards_done} shard(s) done{skipped}{failed}: {self.count} samples, "
            f"{self.successes} successes ({self.success_rate:.1%}), {self.counts.failures_text()}, "
            f"in {self.duration:.1f}s ({self.samples_per_second:.1f} samples/s); "
            f"output in {self.output_folder}"
        )


def parse_stats_file(data: bytes | None, shard_id: int) -> dict[str, Any] | None:
    """`data` as a complete stats file of shard `shard_id`, else None. img2dataset 1.47's stats files,
    which do not name their shard, count too: they are written last as ours are."""
    try:
        stats = json.loads(data or b"")
    except ValueError:
        return None
    if not isinstance(stats, dict) or stats.get("shard_id", shard_id) != shard_id:
        return None
    return stats if isinstance(stats.get("count"), int) else None
