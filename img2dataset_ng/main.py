"""`download()`: validate the options, read and shard the url list, run the shards, summarise."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from .config import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    Config,
    IncrementalMode,
)
from .distributor import distributor_factory, run_shards
from .downloader import ShardDownloader, ShardStats
from .layout import TMP_FOLDER_NAME, OutputFolder, stable_id
from .reader import Sharder, UrlListReader
from .wandb_logger import WandbLogger

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did, summed over the shards it ran (shards done by an earlier run are not counted)."""

    output_folder: str
    shards_done: int = 0
    shards_skipped: int = 0
    failed_shards: list[int] = field(default_factory=list)
    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    duration: float = 0.0
    status_dict: dict[str, int] = field(default_factory=dict)

    def add(self, stats: ShardStats) -> None:
        self.shards_done += 1
        self.count += stats.count
        self.successes += stats.successes
        self.failed_to_download += stats.failed_to_download
        self.failed_to_resize += stats.failed_to_resize
        for reason, n in stats.status_dict.items():
            self.status_dict[reason] = self.status_dict.get(reason, 0) + n

    @property
    def success_rate(self) -> float:
        return self.successes / self.count if self.count else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.count / self.duration if self.duration else 0.0

    def line(self) -> str:
        failed = f", {len(self.failed_shards)} shard(s) FAILED: {self.failed_shards}" if self.failed_shards else ""
        skipped = f" ({self.shards_skipped} already done, skipped)" if self.shards_skipped else ""
        return (
            f"{self.shards_done} shard(s) done{skipped}{failed}: {self.count} samples, "
            f"{self.successes} successes ({self.success_rate:.1%}), {self.failed_to_download} failed to download, "
            f"{self.failed_to_resize} failed to resize, "
            f"in {self.duration:.1f}s ({self.samples_per_second:.1f} samples/s); "
            f"output in {self.output_folder}"
        )


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
            self.samples_done(stats.count, stats.successes)
        self._postfix()
        self.bar.refresh()

    def _postfix(self) -> None:
        rate = self.successes / self.samples if self.samples else 0.0
        self.bar.set_postfix_str(f"shards={self.summary.shards_done} success={rate:.1%}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def download(
    url_list: str,
    image_size: int = 256,
    output_folder: str = "images",
    processes_count: int = 1,
    resize_mode: str = "border",
    resize_only_if_bigger: bool = False,
    upscale_interpolation: str = "lanczos",
    downscale_interpolation: str = "area",
    encode_quality: int = 95,
    encode_format: str = "jpg",
    skip_reencode: bool = False,
    output_format: str = "files",
    input_format: str = "txt",
    url_col: str = "url",
    caption_col: str | None = None,
    bbox_col: str | None = None,
    thread_count: int = 256,
    number_sample_per_shard: int = 10000,
    extract_exif: bool = True,
    save_additional_columns: list[str] | None = None,
    timeout: float = 10,
    enable_wandb: bool = False,
    wandb_project: str = "img2dataset",
    oom_shard_count: int = 5,
    compute_hash: str | None = "sha256",
    verify_hash: list[str] | None = None,
    distributor: str = "multiprocessing",
    subjob_size: int = 1000,
    retries: int = 0,
    disable_all_reencoding: bool = False,
    min_image_size: int = 0,
    max_image_area: float = float("inf"),
    max_aspect_ratio: float = float("inf"),
    incremental_mode: str = "incremental",
    max_shard_retry: int = 1,
    user_agent_token: str | None = None,
    disallowed_header_directives: list[str] | None = None,
    ignore_ssl_certificate: bool = False,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    storage_options: dict[str, Any] | None = None,
    tmp_folder: str | None = None,
    progress: bool | None = None,
) -> Summary:
    """Download the images of `url_list` into `output_folder`; returns a `Summary` of the run.

    The options are img2dataset's (see `img2dataset-ng --help` and the README), plus:
    `max_download_bytes`, `max_image_pixels`; `storage_options` (fsspec options for the input and
    output filesystems, or such options keyed by protocol); `tmp_folder`, where the shards' input
    rows wait for a worker (default: `_tmp/` in the output folder; every worker must read it);
    `progress` (None: the progress bar shows only on a terminal).
    `disallowed_header_directives=None` means the default list (noai, noimageai, noindex,
    noimageindex); `[]` turns the X-Robots-Tag check off.
    """
    options = {name: value for name, value in locals().items() if name not in ("progress", "tmp_folder")}
    config = Config.from_options(**options)
    start_distributor = distributor_factory(config.run.distributor)  # a bad name or missing engine fails now

    reader = UrlListReader(config.read)
    reader.check_columns()
    folder = config.write.output_folder
    mode = config.run.incremental_mode
    first_shard_id, skip = 0, frozenset()
    if mode is IncrementalMode.OVERWRITE:
        folder.empty()
    elif mode is IncrementalMode.EXTEND:
        highest = folder.highest_shard_id()
        first_shard_id = 0 if highest is None else highest + 1
    else:
        skip = frozenset(folder.finished_shards())
    folder.fs.makedirs(folder.root, exist_ok=True)

    tmp = (
        folder.child(TMP_FOLDER_NAME)
        if tmp_folder is None
        else OutputFolder.of(tmp_folder, storage_options).child(f"img2dataset_ng_{stable_id(folder.url)}")
    )
    sharder = Sharder(reader, config.write.key_format, tmp, first_shard_id, skip)
    summary = Summary(output_folder=folder.url)
    wandb = WandbLogger(config.run.wandb_project, options) if config.run.enable_wandb else None
    distributor_ = start_distributor(config.run)
    bar = Progress(summary, progress, live=distributor_.reports_progress)

    def shard_done(stats: ShardStats) -> None:
        bar.shard_done(stats)
        if wandb is not None:
            wandb.log(summary, time.monotonic() - start)

    start = time.monotonic()
    try:
        failed = run_shards(
            distributor_, ShardDownloader(config), sharder, config.run.max_shard_retry, shard_done, bar.samples_done
        )
    finally:
        bar.close()
        distributor_.close()
        if tmp.fs.exists(tmp.root):
            tmp.fs.rm(tmp.root, recursive=True)
    summary.duration = time.monotonic() - start
    summary.shards_skipped = sharder.skipped
    summary.failed_shards = sorted(shard.shard_id for shard in failed)
    if summary.shards_done == 0 and not summary.failed_shards and not summary.shards_skipped:
        logger.info("no url found in %s: 0 shards, nothing to download", config.read.url_list)
    logger.info(summary.line())
    if wandb is not None:
        wandb.finish(summary)
    return summary
