"""The shard index of webdataset output: `wids-index.json`, the descriptor that webdataset's `wids` package
reads for random access to the samples (`wids.ShardListDataset("dataset/wids-index.json")[i]`).

What wids needs, read from its source (wids 0.1.11: `wids_specs.resolve_dsdesc`, `wids.ShardListDataset`,
`wids_index.main_create`, `wids_mmtar.MMIndexedTar`):

- a JSON object with `"wids_version": 1` (anything else is refused) and a non-empty `"shardlist"` of
  `{"url": ..., "nsamples": ...}`; `"__kind__": "wids-shard-index-v1"` and each shard's `"filesize"` are what
  its own `widsindex create` writes (`widsindex info` sums the filesizes), so they are written too (its
  `md5sum` is not: wids never checks it, and it would mean reading every tar);
- `nsamples` is trusted, never checked: a sample index is mapped to a shard by the running sum of the counts,
  so a count that is too high makes reads past the tar's last sample fail, and one too low hides samples. It
  is the number of samples in the tar: the shard's successes (a failed row has only its metadata row);
- a relative `url` is resolved against the folder of the url the descriptor was loaded from (the `base`
  argument of `ShardListDataset` overrides it; a `"base"` key is honoured for sub-datasets only), so the
  urls are the tars' names: the folder may move, or be copied to or read from an object store;
- no index of the tar itself: wids builds one when it opens a shard, from the ustar headers (regular files,
  the name field, the size in octal), grouping consecutive members by key (the name before its first dot);
- no `"name"`: wids 0.1.11 uses it only to label the dataset.

The file name: wids prescribes none (`widsindex create` writes `shardindex.json` in the working directory;
its examples are named after the dataset). `wids-index.json` says what reads it, matches no shard or stats
glob (`*.tar`, `*.parquet`, `*_stats.json`) and no shard name (it starts with a letter), and has no `_`
prefix, since it is meant to be opened.

The index lists every shard of the folder that is done (a valid stats file, its tar and parquet there), of
this run and of earlier ones (img2dataset 1.47's included), in shard order. It is rewritten as each run ends,
after a retry's rewrites are finished, so that incremental and extend runs (new shards) and retry_failed
runs (new counts) keep it true; in one write that appears whole (a rename on local disk, one upload on
object stores), and not at all when nothing changed. Only webdataset runs create it; a run of another format
only keeps an existing one true (after incremental_mode="overwrite" removed its shards, it goes).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .naming import INDEX_FILE, STATS_SUFFIX, shard_file, stats_files
from .stats import parse_stats_file
from .storage import Folder
from .writers.base import ShardWriter
from .writers.webdataset import WebDatasetWriter

logger = logging.getLogger(__name__)

KIND = "wids-shard-index-v1"  # what `widsindex create` writes as "__kind__"
WIDS_VERSION = 1  # the only version `wids_specs.resolve_dsdesc` accepts
TAR = ".tar"


def refresh(folder: Folder, writer: type[ShardWriter]) -> None:
    """Write the index of `folder` as it now is, at the end of a run (a webdataset one creates it); a
    failure is logged, never raised: the shards are complete either way, and the next run writes it."""
    create = issubclass(writer, WebDatasetWriter)
    try:
        if create or folder.has(INDEX_FILE):
            write_index(folder, create)
    except Exception as error:  # noqa: BLE001 - must not replace the run's outcome; see the docstring
        logger.error(
            "could not write the wids index %s: %s: %s (the shards are complete; running the same command "
            "again writes it)",
            folder.path(INDEX_FILE),
            type(error).__name__,
            error,
        )


def write_index(folder: Folder, create: bool = True) -> dict[str, Any] | None:
    """Write (or, without any done shard, remove) the index of `folder`; returns what it now holds.
    `create=False`: only an index that exists is rewritten."""
    sizes = folder.sizes()
    shards = shard_list(folder, sizes)
    if not shards:  # wids refuses an empty shard list: no index rather than one that cannot be read
        if INDEX_FILE in sizes:
            folder.remove([INDEX_FILE])
        return None
    if not create and INDEX_FILE not in sizes:
        return None
    index = descriptor(shards)
    data = (json.dumps(index, indent=1) + "\n").encode("utf-8")
    if sizes.get(INDEX_FILE) == len(data) and folder.read_many([INDEX_FILE])[INDEX_FILE] == data:
        return index  # unchanged: not written again
    folder.write(INDEX_FILE, data)
    logger.info(
        "wids index %s: %d shard(s), %d sample(s)",
        folder.path(INDEX_FILE),
        len(shards),
        sum(shard["nsamples"] for shard in shards),
    )
    return index


def descriptor(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The wids dataset description of `shards` (see the module's docstring)."""
    return {"__kind__": KIND, "wids_version": WIDS_VERSION, "shardlist": shards}


def shard_list(folder: Folder, sizes: dict[str, int]) -> list[dict[str, Any]]:
    """`{"url": "00042.tar", "nsamples": successes, "filesize": bytes}` for each done shard of the folder (a
    non-empty stats file that parses and names its shard or none, its tar and parquet there), in shard order.
    `sizes`: the folder's listing."""
    stats = stats_files(sizes)
    tars: dict[int, str] = {}
    for shard_id, name in stats.items():
        shard_name = name[: -len(STATS_SUFFIX)]
        if sizes[name] > 0 and all(shard_file(shard_name, suffix) in sizes for suffix in WebDatasetWriter.suffixes):
            tars[shard_id] = shard_file(shard_name, TAR)
    contents = folder.read_many(stats[shard_id] for shard_id in tars)
    shards = []
    for shard_id in sorted(tars):
        nsamples = successes(contents[stats[shard_id]], shard_id)
        if nsamples is None:
            logger.warning("%s cannot be read: shard %s is left out of the wids index", stats[shard_id], shard_id)
            continue
        shards.append({"url": tars[shard_id], "nsamples": nsamples, "filesize": sizes[tars[shard_id]]})
    return shards


def successes(data: bytes | None, shard_id: int) -> int | None:
    """The samples in the tar of shard `shard_id`, from its stats file: `successes`, which ours and img2dataset
    1.47's both count (1.47's name no shard); None when the file is not a complete stats file of that shard."""
    stats = parse_stats_file(data, shard_id)
    n = None if stats is None else stats.get("successes")
    valid = isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= stats["count"]  # type: ignore[index]
    return n if valid else None
