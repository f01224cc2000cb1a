"""What shows a run while it goes and what it says at the end, all fed by the status counts.

- `Progress`: on a terminal (or with progress=True) a tqdm bar with a total, a percentage and an ETA;
  elsewhere (progress=None and stderr not a terminal: nohup, a scheduler, a notebook log), where a
  carriage-return bar is one endless line that shows nothing until the end, INFO log lines instead.
- `log_failures`: after the summary line, the most frequent failure reasons, where each row's is, and the
  most throttled hosts.
- `WandbLogger`: Weights & Biases, imported only when asked for; a missing wandb package is a clear
  error at the start. It works with `WANDB_MODE=offline` (the run lands in `$WANDB_DIR/wandb/offline-run-*`).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from typing import Any

from tqdm import tqdm

from .config import plain
from .errors import ConfigError
from .stats import ShardStats, Summary

logger = logging.getLogger(__name__)

LOG_EVERY = 30.0  # seconds without a progress log line after which a running run logs one (tests set it smaller)
TOP_FAILURES = 5  # failure reasons named at the end of a run
REASON_CHARS = 300  # a longer reason (a traceback, a long url) is cut in the end-of-run lines


def stderr_is_terminal() -> bool:
    """Whether a carriage-return bar on stderr would be seen as one line redrawn (tqdm's own test)."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class Progress:
    """What shows a run while it goes: samples done of the total, shards done, success rate, samples/s, ETA.

    Fed by running shards (`samples_done`, when the distributor reports them) and by finished ones
    (`shard_done`, which also adds the shard's stats to the summary, the single source of the counts);
    `set_total` gives the shards and rows to do as soon as the sharder knows them. `enabled`: True
    the bar, False nothing, None the bar on a terminal and otherwise log lines: one per finished shard
    and, while shards run, one whenever `LOG_EVERY` seconds pass without any (so a long shard, or a
    backend whose running shards cannot report, still shows the run is alive).
    """

    def __init__(self, summary: Summary, enabled: bool | None = None, live: bool = True):
        self.summary = summary
        self.live = live  # whether running shards report; otherwise finished shards are counted whole
        self.samples = self.successes = 0
        self.total_shards: int | None = None
        self.total_rows: int | None = None
        self.start = self.last_line = time.monotonic()
        show_bar = stderr_is_terminal() if enabled is None else enabled
        self.log_lines = enabled is None and not show_bar
        self.lock = threading.Lock()  # the counts are read by the ticker thread while the driver updates them
        self.bar = tqdm(
            desc="downloading",
            unit=" samples",
            disable=not show_bar,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.stopped = threading.Event()
        self.ticker: threading.Thread | None = None
        if self.log_lines:
            self.ticker = threading.Thread(target=self._tick, name="img2dataset-ng-progress", daemon=True)
            self.ticker.start()

    def set_total(self, shards: int, rows: int | None) -> None:
        """The shards and rows this run has to do (shards done by an earlier run left out)."""
        with self.lock:
            self.total_shards, self.total_rows = shards, rows
        self.bar.total = rows
        self._postfix()
        self.bar.refresh()

    def samples_done(self, samples: int, successes: int) -> None:
        with self.lock:
            self._count(samples, successes)
        self._postfix()
        self.bar.update(samples)

    def shard_done(self, stats: ShardStats) -> None:
        with self.lock:
            self.summary.add(stats)
            if not self.live:
                self._count(stats.counts.count, stats.counts.successes)
            if self.log_lines:
                self._log(f"shard {stats.shard_id} done in {stats.duration:.1f}s")
        if not self.live:
            self.bar.update(stats.counts.count)
        self._postfix()
        self.bar.refresh()

    def status(self) -> str:
        """`shards done 1/3, samples 40/120 (33.3%), success 75.0%, 12.0 samples/s, elapsed 00:03, ETA 00:06`:
        totals, percentage and ETA once the total is known."""
        elapsed = time.monotonic() - self.start
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        success = self.successes / self.samples if self.samples else 0.0
        shards, samples, eta = f"{self.summary.shards_done}", f"{self.samples}", ""
        if self.total_shards is not None:
            shards += f"/{self.total_shards}"
        if self.total_rows is not None:
            left = max(self.total_rows - self.samples, 0)
            share = 1.0 - left / self.total_rows if self.total_rows else 1.0
            samples += f"/{self.total_rows} ({share:.1%})"
            if not left or rate > 0:
                eta = f", ETA {tqdm.format_interval(left / rate if left else 0)}"
            else:
                eta = ", ETA unknown"  # no sample finished yet
        return (
            f"shards done {shards}, samples {samples}, success {success:.1%}, {rate:.1f} samples/s, "
            f"elapsed {tqdm.format_interval(elapsed)}{eta}"
        )

    def close(self) -> None:
        self.stopped.set()
        if self.ticker is not None:
            self.ticker.join()
        self.bar.close()

    def _count(self, samples: int, successes: int) -> None:
        self.samples += samples
        self.successes += successes

    def _postfix(self) -> None:
        rate = self.successes / self.samples if self.samples else 0.0
        shards = f"{self.summary.shards_done}" + ("" if self.total_shards is None else f"/{self.total_shards}")
        self.bar.set_postfix_str(f"shards={shards} success={rate:.1%}", refresh=False)

    def _log(self, event: str) -> None:
        """One progress line (the lock held)."""
        self.last_line = time.monotonic()
        logger.info("%s; progress: %s", event, self.status())

    def _tick(self) -> None:
        """The periodic lines: one when `LOG_EVERY` seconds passed without any (a finished shard logs one)."""
        while not self.stopped.wait(max(self.last_line + LOG_EVERY - time.monotonic(), 0.01)):
            with self.lock:
                if time.monotonic() - self.last_line >= LOG_EVERY:
                    self._log("running")


def log_failures(summary: Summary, rows_kept: bool, limit: int = TOP_FAILURES) -> None:
    """Logged after the summary line: the `limit` most frequent failure reasons with their counts, then
    where each row's reason is (`rows_kept`: the output format writes the NNNNN.parquet files), then the
    most throttled hosts, so that a run that failed or crawled more than expected says why without
    opening any file."""
    failures = summary.top_failures()
    if failures:
        failed = sum(n for _, n in failures)
        logger.info(
            "top %d of %d failure reason(s), over %d failed sample(s):",
            min(limit, len(failures)),
            len(failures),
            failed,
        )
        width = len(str(failures[0][1]))
        for reason, n in failures[:limit]:
            text = " ".join(reason.split())
            text = text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."
            logger.info("  %*d  %s", width, n, text)
        if rows_kept:
            logger.info(
                "each row's reason: the status and error_message columns of the NNNNN.parquet files in %s",
                summary.output_folder,
            )
        else:
            logger.info("each row's reason is not kept: this output format writes no NNNNN.parquet files")
    throttled = summary.most_throttled(limit)
    if throttled:
        logger.info("most throttled host(s): 429/503 answers, seconds held back (the shards' stats files have more):")
        for host, answers, seconds in throttled:
            logger.info("  %6d  %8.1fs  %s", answers, seconds, host)


SECRET_FIELDS = ("storage_options",)  # may hold credentials: never logged


class WandbLogger:
    def __init__(self, project: str, config: Any):
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("enable_wandb needs the wandb package: pip install 'img2dataset-ng[wandb]'")
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, config=plain(config, leave_out=SECRET_FIELDS), job_type="download")

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
        errors = summary.top_failures()
        self.run.log({"errors": self.wandb.Table(columns=["reason", "count"], data=[list(e) for e in errors])})
        self.run.summary.update({"failed_shards": len(summary.failed_shards), "duration": summary.duration})
        self.run.finish()
