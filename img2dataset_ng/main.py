"""`download()`: validate the options, read and shard the url list, run the shards, summarise."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from . import provenance
from .config import Config
from .distributors.base import DISTRIBUTORS, run_shards
from .errors import ConfigError, Interrupted
from .naming import STATS_SUFFIX, TMP_FOLDER_NAME, finished_shards, highest_shard_id, is_ours, tmp_folder_name
from .observers import Progress, WandbLogger, log_failures
from .options import OPTIONS, SIGNATURE, IncrementalMode, bind
from .reader import Sharder, UrlListReader
from .stages.pipeline import check_columns, download_stages
from .stats import ShardStats, Summary
from .storage import Folder, accessing
from .worker import ShardWorker

logger = logging.getLogger(__name__)


def download(*args: Any, **kwargs: Any) -> Summary:
    return run(Config.from_options(**bind(args, kwargs)))


download.__signature__ = SIGNATURE  # type: ignore[attr-defined]
download.__doc__ = """Download the images of `url_list` into `output_folder`; returns a `Summary` of the run.

The options are img2dataset's, plus a few of ours (`img2dataset-ng --help` shows them all):

""" + "\n".join(f"- `{o.name}` (default {o.default!r}): {o.help}" for o in OPTIONS[1:])


def run(config: Config) -> Summary:
    """Run a validated configuration: every check first, then the shards."""
    start_distributor = DISTRIBUTORS.get(config.run.distributor)  # a bad name or missing engine fails now
    stages = download_stages(config)  # built here once so that their columns are checked before any work
    check_columns(config, stages)
    for stage in stages:
        stage.close()
    reader = UrlListReader(config.read)
    reader.check_columns()

    folder = config.write.output_folder
    with accessing(folder.url, "use output_folder"):
        created = not folder.exists()
    tmp = config.run.tmp_folder
    tmp = folder.child(TMP_FOLDER_NAME) if tmp is None else tmp.child(tmp_folder_name(folder.url))
    try:
        with accessing(folder.url, "use output_folder"):
            first_shard_id, skip = prepare_output(config, reader)
        sharder = Sharder(reader, config.key_format, tmp, first_shard_id, skip)
        summary = Summary(output_folder=folder.url)
        wandb = WandbLogger(config.run.wandb_project, config) if config.run.enable_wandb else None
        distributor = start_distributor(config.run)
    except BaseException:
        if created:  # a failed start leaves no folder behind
            with contextlib.suppress(Exception):  # the error being raised says more than this one would
                folder.remove_all()
        raise
    bar = Progress(summary, config.run.progress, live=distributor.reports_progress)
    sharder.on_total = bar.set_total

    def shard_done(stats: ShardStats) -> None:
        bar.shard_done(stats)
        if wandb is not None:
            wandb.log(summary, time.monotonic() - start)

    start = time.monotonic()
    try:
        failed = run_shards(
            distributor, ShardWorker(config), sharder, config.run.max_shard_retry, shard_done, bar.samples_done
        )
    except KeyboardInterrupt:  # finished shards are kept: the same command finishes the job
        summary.duration = time.monotonic() - start
        summary.shards_skipped = sharder.skipped
        raise Interrupted(summary) from None
    finally:
        bar.close()
        distributor.close()
        tmp.remove_all()
    summary.duration = time.monotonic() - start
    summary.shards_skipped = sharder.skipped
    summary.failed_shards = sorted(shard.shard_id for shard in failed)
    if summary.shards_done == 0 and not summary.failed_shards and not summary.shards_skipped:
        logger.warning("no url found in %s: 0 shards, nothing to download", config.read.url_list)
    logger.info(summary.line())
    log_failures(summary, rows_kept=".parquet" in config.write.writer.suffixes)
    if wandb is not None:
        wandb.finish(summary)
    return summary


def prepare_output(config: Config, reader: UrlListReader) -> tuple[int, frozenset[int]]:
    """Check the output folder against this run and make it ready; write the run record when it
    changed (a new folder is written to before any work, so a folder that cannot be written to fails
    here). Returns the first shard id and the shards to skip."""
    folder, mode = config.write.output_folder, config.run.incremental_mode
    if mode is IncrementalMode.OVERWRITE:
        inputs = (
            ("url_list", Folder(config.read.url_list, config.read.storage_options)),
            ("tmp_folder", config.run.tmp_folder),
        )
        for option, inner in inputs:
            if inner is not None and folder.contains(inner):
                raise ConfigError(
                    f"{option} {inner.url} lies inside output_folder {folder.url}, which "
                    "incremental_mode='overwrite' empties: move it out, or choose another output_folder"
                )
    names = folder.names()
    record, earlier = provenance.make_record(config, reader), provenance.read(folder, names)
    provenance.check(folder, earlier, record, mode, has_shards=highest_shard_id(names) is not None)
    first_shard_id, skip = 0, frozenset()
    if mode is IncrementalMode.OVERWRITE:  # only what is ours: anything else in the folder stays
        folder.remove(sorted((name for name in names if is_ours(name)), key=lambda n: not n.endswith(STATS_SUFFIX)))
        earlier = None  # the record went with the rest
    elif mode is IncrementalMode.EXTEND:
        highest = highest_shard_id(names)
        first_shard_id = 0 if highest is None else highest + 1
    else:
        skip = frozenset(finished_shards(names))
    folder.makedirs()
    provenance.write(folder, record, earlier)
    return first_shard_id, skip
