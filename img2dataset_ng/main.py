"""`download()`: validate the options, take the output folder's lock, read and shard the url list, run
the shards, summarise. Nothing in the output folder changes before its lock is held (lock.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import replace
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from . import index, provenance, retry
from .config import Config
from .distributors.base import DISTRIBUTORS, run_shards
from .errors import ConfigError, Interrupted
from .lock import FolderLock
from .naming import (
    STATS_SUFFIX,
    TMP_FOLDER_NAME,
    highest_shard_id,
    is_lock,
    is_ours,
    is_partial,
    stats_files,
    tmp_folder_name,
)
from .observers import Progress, WandbLogger, log_failures
from .options import OPTIONS, SIGNATURE, IncrementalMode, bind
from .reader import Sharder, UrlListReader
from .reader.datasets import SHARD_FORMATS, DatasetReader, DatasetSharder
from .stages import model
from .stages.pipeline import check_columns, download_stages
from .stats import ShardStats, Summary, parse_stats_file
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
    """Run a validated configuration: every check first, then the shards, holding the folder's lock."""
    start_distributor = DISTRIBUTORS.get(config.run.distributor)  # a bad name or missing engine fails now
    config = model.resolve(config)  # the model (model=...) is loaded and run once here: its output size
    stages = download_stages(config)  # built here once so that their columns are checked before any work
    check_columns(config, stages)
    for stage in stages:
        stage.close()
    retry.check(config)
    reader = DatasetReader(config.read) if config.read.input_format in SHARD_FORMATS else UrlListReader(config.read)
    reader.check_columns()
    if isinstance(reader, DatasetReader) and config.run.incremental_mode is IncrementalMode.EXTEND:
        raise ConfigError(
            "incremental_mode='extend' numbers new shards after the folder's last, but with shards as input "
            "output shard N is input shard N: use 'incremental' (the default) or 'overwrite'"
        )

    folder = config.write.output_folder
    check_output_folder(folder)
    with accessing(folder.url, "use output_folder"):
        created = not folder.exists()
        folder.makedirs()
    lock = take_lock(folder, config.run.wait_for_lock, created)
    started = False
    try:
        parts = start(config, reader, start_distributor)
        started = True
        return execute(config, *parts)
    except BaseException:
        if created and not started:  # a failed start leaves no folder behind: all but the lock now, then the rest
            with contextlib.suppress(Exception):  # the error being raised says more than this one would
                folder.remove([name for name in folder.names() if not is_lock(name)])
        raise
    finally:
        lock.release()
        if created and not started:
            folder.remove_if_empty()


def check_output_folder(folder: Folder) -> None:
    """Refuse an empty output_folder, or the root of a filesystem: `"/"` normalises to an empty path,
    which fsspec reads as the working directory, and overwrite would empty that."""
    with accessing(folder.url, "use output_folder"):
        root = folder.root
    local = isinstance(folder.fs, LocalFileSystem)
    real = os.path.realpath(root or os.sep) if local else root
    if not folder.url.strip() or not root.strip("/") or (local and os.path.dirname(real) == real):
        raise ConfigError(
            f"output_folder {folder.url!r} is the root of its filesystem (or empty): choose a folder inside it, "
            "such as /data/my-dataset or s3://bucket/my-dataset"
        )


def take_lock(folder: Folder, wait: bool, created: bool) -> FolderLock:
    """The folder's lock, before anything in it changes (a folder this run just made goes if it is not taken)."""
    lock = FolderLock(folder, wait)
    try:
        with accessing(folder.url, "use output_folder"):
            lock.acquire()
    except BaseException as error:
        if created:
            folder.remove_if_empty()
        if isinstance(error, KeyboardInterrupt) and not isinstance(error, Interrupted):  # Ctrl-C while waiting
            raise Interrupted(Summary(output_folder=folder.url)) from None
        raise
    return lock


def start(config: Config, reader: UrlListReader | DatasetReader, start_distributor: Any) -> tuple[Any, ...]:
    """Prepare the folder (under its lock) and everything the shards need."""
    folder = config.write.output_folder
    tmp = config.run.tmp_folder
    tmp = folder.child(TMP_FOLDER_NAME) if tmp is None else tmp.child(tmp_folder_name(folder.url))
    with accessing(folder.url, "use output_folder"):
        first_shard_id, skip, redo = prepare_output(config, reader)
    if isinstance(reader, DatasetReader):  # input shard N is output shard N
        sharder: Sharder | DatasetSharder = DatasetSharder(reader, skip, redo)
    else:
        sharder = Sharder(reader, config.key_format, tmp, first_shard_id, skip, redo)
    summary = Summary(output_folder=folder.url)
    wandb = WandbLogger(config.run.wandb_project, config) if config.run.enable_wandb else None
    distributor = start_distributor(config.run)
    return tmp, sharder, summary, wandb, distributor


def execute(
    config: Config, tmp: Folder, sharder: Sharder, summary: Summary, wandb: WandbLogger | None, distributor: Any
) -> Summary:
    """Run the shards and summarise; the temporary folder and any `_partial_` leftover go at the end."""
    folder = config.write.output_folder
    bar = Progress(summary, config.run.progress, live=distributor.reports_progress)
    sharder.on_total = bar.set_total

    def shard_done(stats: ShardStats) -> None:
        bar.shard_done(stats)
        if wandb is not None:
            wandb.log(summary, time.monotonic() - start)

    start = time.monotonic()
    try:
        if config.model.model is not None and hasattr(distributor, "model_pool"):  # Ray's actors run the batches
            config = replace(config, model=replace(config.model, pool=distributor.model_pool(config.model)))
        worker = ShardWorker(config.with_workers(getattr(distributor, "workers", config.run.processes_count)))
        failed = run_shards(distributor, worker, sharder, config.run.max_shard_retry, shard_done, bar.samples_done)
    except KeyboardInterrupt:  # finished shards are kept: the same command finishes the job
        summary.duration = time.monotonic() - start
        summary.shards_skipped = sharder.skipped
        raise Interrupted(summary) from None
    finally:
        bar.close()
        distributor.close()
        tmp.remove_all()
        if folder.writes_in_place:  # what a killed worker was writing (object stores have no such leftovers)
            with contextlib.suppress(Exception):
                remove_partials(folder, folder.names())
        if config.run.incremental_mode is IncrementalMode.RETRY_FAILED:  # what a failed shard staged or committed
            with contextlib.suppress(Exception):
                retry.recover(folder, folder.names())
        index.refresh(folder, config.write.writer)  # the wids index of the shards as they now are (never raises)
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


def prepare_output(config: Config, reader: UrlListReader | DatasetReader) -> tuple[int, frozenset[int], frozenset[int]]:
    """Check the output folder against this run and make it ready; write the run record when it
    changed (a new folder is written to before any work, so a folder that cannot be written to fails
    here). Returns the first shard id, the shards to skip and the finished shards to retry (retry_failed).
    Runs under the folder's lock, so every `_partial_` entry is the leftover of a killed run: they go
    first; before anything else, the shard rewrites that a killed retry_failed run committed are finished
    (and the ones it did not commit dropped)."""
    folder, mode = config.write.output_folder, config.run.incremental_mode
    if mode is IncrementalMode.OVERWRITE:
        sources = config.read.url_list if isinstance(config.read.url_list, tuple) else (config.read.url_list,)
        inputs = (
            *(("url_list", Folder(source, config.read.storage_options)) for source in sources),
            ("tmp_folder", config.run.tmp_folder),
        )
        for option, inner in inputs:
            if inner is not None and folder.contains(inner):
                raise ConfigError(
                    f"{option} {inner.url} lies inside output_folder {folder.url}, which "
                    "incremental_mode='overwrite' empties: move it out, or choose another output_folder"
                )
    sizes = folder.sizes()
    if retry.recover(folder, sizes):
        sizes = folder.sizes()
    names = sorted(sizes)
    record, earlier = provenance.make_record(config, reader), provenance.read(folder, names)
    checked_as = IncrementalMode.INCREMENTAL if mode is IncrementalMode.RETRY_FAILED else mode  # the same shards
    provenance.check(folder, earlier, record, checked_as, has_shards=highest_shard_id(names) is not None)
    remove_partials(folder, names)
    first_shard_id, skip, redo = 0, frozenset(), frozenset()
    if mode is IncrementalMode.OVERWRITE:  # only what is ours (not the lock we hold): anything else stays
        ours = (name for name in names if is_ours(name) and not is_lock(name) and not is_partial(name))
        folder.remove(sorted(ours, key=lambda n: not n.endswith(STATS_SUFFIX)))
        earlier = None  # the record went with the rest
    elif mode is IncrementalMode.EXTEND:
        highest = highest_shard_id(names)
        first_shard_id = 0 if highest is None else highest + 1
    else:
        done = done_shards(folder, sizes, (*config.write.writer.suffixes, *model.extra_suffixes(config)))
        if mode is IncrementalMode.RETRY_FAILED:
            redo = retry.shards_to_retry(done, config.run.retry_failed_reasons)
        skip = frozenset(done) - redo
    folder.makedirs()
    provenance.write(folder, record, earlier)
    return first_shard_id, skip, redo


def remove_partials(folder: Folder, names: list[str]) -> None:
    """Remove `_partial_` entries: files and folders whose writer was killed (only called under the lock)."""
    folder.remove([name for name in names if is_partial(name)])


def done_shards(folder: Folder, sizes: dict[str, int], suffixes: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """The shards done, with their stats: those whose stats file is valid and whose output files are all there.

    A stats file is valid when it is not empty (the listing gives sizes: no read), parses as JSON and
    names its own shard (img2dataset 1.47's name none); it is read only then, `READ_THREADS` at a time, so
    that 100k shards on an object store take seconds. Any other shard runs again (its leftovers are
    replaced), with a warning. A shard being rewritten by retry_failed has no stats file until its
    commit is finished (`retry.recover` runs first).
    """
    stats = stats_files(sizes)
    candidates = {
        shard_id: name
        for shard_id, name in stats.items()
        if sizes[name] > 0 and all(name[: -len(STATS_SUFFIX)] + s in sizes for s in suffixes if s)
    }
    contents = folder.read_many(candidates.values())
    parsed = {shard_id: parse_stats_file(contents[name], shard_id) for shard_id, name in candidates.items()}
    done = {shard_id: content for shard_id, content in parsed.items() if content is not None}
    redo = sorted(set(stats) - set(done))
    if redo:
        shown = ", ".join(stats[shard_id] for shard_id in redo[:5]) + (", ..." if len(redo) > 5 else "")
        logger.warning(
            "%d stats file(s) are empty, unreadable, of another shard, or without their shard's files (%s): "
            "those shards run again",
            len(redo),
            shown,
        )
    return done
