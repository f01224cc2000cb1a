"""What shows a run while it goes: the progress bar and Weights & Biases, both fed by the status counts.

wandb is imported only when asked for; a missing wandb package is a clear error at the start. It
works with `WANDB_MODE=offline` (the run lands in `$WANDB_DIR/wandb/offline-run-*`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from enum import Enum
from typing import Any

from tqdm import tqdm

from .errors import ConfigError
from .stats import ShardStats, Summary
from .storage import Folder


class Progress:
    """The terminal progress bar: samples done and samples/s, shards done, success rate.

    Fed by running shards (`samples_done`) and by finished ones (`shard_done`, which also adds
    the shard's stats to the summary).
    """

    def __init__(self, summary: Summary, enabled: bool | None = None, live: bool = True):
        self.summary = summary
        self.live = live  # whether running shards report; otherwise finished shards are counted whole
        self.samples = self.successes = 0
        self.bar = tqdm(
            desc="downloading",
            unit=" samples",
            disable=None if enabled is None else not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def samples_done(self, samples: int, successes: int) -> None:
        self.samples += samples
        self.successes += successes
        self._postfix()
        self.bar.update(samples)

    def shard_done(self, stats: ShardStats) -> None:
        self.summary.add(stats)
        if not self.live:
            self.samples_done(stats.counts.count, stats.counts.successes)
        self._postfix()
        self.bar.refresh()

    def _postfix(self) -> None:
        rate = self.successes / self.samples if self.samples else 0.0
        self.bar.set_postfix_str(f"shards={self.summary.shards_done} success={rate:.1%}", refresh=False)

    def close(self) -> None:
        self.bar.close()


SECRET_FIELDS = ("storage_options",)  # may hold credentials: never logged


class WandbLogger:
    def __init__(self, project: str, config: Any):
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("enable_wandb needs the wandb package: pip install 'img2dataset-ng[wandb]'")
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, config=loggable(config), job_type="download")

    def log(self, summary: Summary, elapsed: float) -> None:
        """Called as shards finish, with the run's `Summary` so far and the seconds since the first shard."""
        counts = summary.counts
        self.run.log(
            {
                "shards_done": summary.shards_done,
                "samples": counts.count,
                **{status.value: counts.of(status) for status in counts.by_status},
                "successes": counts.successes,
                "success_rate": counts.success_rate,
                "samples_per_sec": counts.count / max(elapsed, 1e-9),
            }
        )

    def finish(self, summary: Summary) -> None:
        errors = sorted(
            ((reason, n) for reason, n in summary.status_dict.items() if reason != "success"), key=lambda e: -e[1]
        )
        self.run.log({"errors": self.wandb.Table(columns=["reason", "count"], data=[list(e) for e in errors])})
        self.run.summary.update({"failed_shards": len(summary.failed_shards), "duration": summary.duration})
        self.run.finish()


def loggable(value: Any) -> Any:
    """A configuration as plain values: sections as dicts (secrets left out), enums as their values,
    folders as urls, classes and functions as their names."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: loggable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in SECRET_FIELDS
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Folder):
        return value.url
    if isinstance(value, (list, tuple)):
        return [loggable(item) for item in value]
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    return value
