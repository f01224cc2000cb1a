"""`enable_wandb`: progress, success rate and an error table logged to Weights & Biases.

Imported only when asked for; a missing wandb package is a clear error at the start. Works with
`WANDB_MODE=offline` (the run lands in `$WANDB_DIR/wandb/offline-run-*`).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .config import ConfigError

SECRET_OPTIONS = ("storage_options",)  # may hold credentials: never logged


class WandbLogger:
    def __init__(self, project: str, options: dict[str, Any]):
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("enable_wandb needs the wandb package: pip install 'img2dataset-ng[wandb]'")
        import wandb

        self.wandb = wandb
        config = {k: _loggable(v) for k, v in options.items() if k not in SECRET_OPTIONS}
        self.run = wandb.init(project=project, config=config, job_type="download")

    def log(self, summary: Any, elapsed: float) -> None:
        """Called as shards finish, with the run's `Summary` so far and the seconds since the first shard."""
        elapsed = max(elapsed, 1e-9)
        self.run.log(
            {
                "shards_done": summary.shards_done,
                "samples": summary.count,
                "successes": summary.successes,
                "failed_to_download": summary.failed_to_download,
                "failed_to_resize": summary.failed_to_resize,
                "success_rate": summary.success_rate,
                "samples_per_sec": summary.count / elapsed,
            }
        )

    def finish(self, summary: Any) -> None:
        errors = sorted(
            ((reason, n) for reason, n in summary.status_dict.items() if reason != "success"), key=lambda item: -item[1]
        )
        self.run.log({"errors": self.wandb.Table(columns=["reason", "count"], data=[list(e) for e in errors])})
        self.run.summary.update({"failed_shards": len(summary.failed_shards), "duration": summary.duration})
        self.run.finish()


def _loggable(value: Any) -> Any:
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    return value
