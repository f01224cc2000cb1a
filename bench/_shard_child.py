"""One sharding run, in its own process, for bench/reader_rss.py.

    python bench/_shard_child.py {ours|theirs} URL_LIST.parquet TMP_DIR ROWS_PER_SHARD RESULT.json

Runs under either venv (ours: .venv, theirs: bench/.venv-img2dataset), so it imports nothing but the
standard library at module level. It imports the tool (the resident set read then is the baseline),
shards the url list into TMP_DIR the way each tool's `download()` does, and writes to RESULT.json:
the shards as [shard_id, path] pairs, its timings, and its memory readings from /proc/self/status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator

ShardIter = Callable[[str, str, int], Iterator[tuple[int, str]]]


def proc_status_mib(field: str) -> float:
    """A kB field of /proc/self/status (VmRSS: current resident set, VmHWM: its peak) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def ours() -> ShardIter:
    """Imports our package, returns its sharding as main.download() does it."""
    import img2dataset_ng.main  # noqa: F401 - what download() imports, so that RSS compares like with like
    from img2dataset_ng.config import Config
    from img2dataset_ng.reader import Sharder, UrlListReader
    from img2dataset_ng.storage import Folder

    def shard(url_list: str, tmp_dir: str, per_shard: int) -> Iterator[tuple[int, str]]:
        config = Config.from_options(
            url_list=url_list,
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            number_sample_per_shard=per_shard,
            output_folder=tmp_dir,
        )
        reader = UrlListReader(config.read)
        reader.check_columns()
        for s in Sharder(reader, config.key_format, Folder(tmp_dir)):
            yield s.shard_id, s.folder.path(s.file_name)

    return shard


def theirs() -> ShardIter:
    """Imports img2dataset 1.47, returns its sharding as its main.download() does it."""
    from img2dataset.reader import Reader

    def shard(url_list: str, tmp_dir: str, per_shard: int) -> Iterator[tuple[int, str]]:
        yield from Reader(
            url_list,
            input_format="parquet",
            url_col="url",
            caption_col="caption",
            verify_hash_col=None,
            verify_hash_type=None,
            save_additional_columns=None,
            number_sample_per_shard=per_shard,
            done_shards=set(),
            tmp_path=tmp_dir,
        )

    return shard


TOOLS: dict[str, Callable[[], ShardIter]] = {"ours": ours, "theirs": theirs}


def main() -> None:
    tool, url_list, tmp_dir, per_shard, result_path = sys.argv[1:]
    os.makedirs(tmp_dir, exist_ok=True)
    shard = TOOLS[tool]()
    rss_imported = proc_status_mib("VmRSS")
    started = time.monotonic()
    shards = shard(url_list, tmp_dir, int(per_shard))
    first = next(shards, None)
    first_at = time.monotonic()
    done: list[tuple[int, str]] = [] if first is None else [first]
    done.extend(shards)
    finished = time.monotonic()
    result = {
        "tool": tool,
        "shards": done,
        "first_shard_s": first_at - started,
        "sharding_s": finished - started,
        "rss_imported_mib": rss_imported,
        "rss_end_mib": proc_status_mib("VmRSS"),
        "hwm_mib": proc_status_mib("VmHWM"),
    }
    with open(result_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
