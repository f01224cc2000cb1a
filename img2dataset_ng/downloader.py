"""The unit of work: download, resize and write one shard.

`ShardDownloader` is a picklable callable that holds configuration only; the connection pool,
threads and codecs are created inside the worker for each shard. Each row of the shard becomes
one `SampleResult` value and one metadata row, success or failure alike; the shard's stats file
is its last write and marks it as done.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import exifread

from .config import Config, EncodeFormat, HashType
from .fetcher import Fetcher, FetchError
from .layout import STATS_SUFFIX
from .reader import BBOX, INTERNAL_COLUMNS, VERIFY_HASH, Shard
from .resizer import ResizeError, Resizer, sniff_format
from .writer import metadata_schema, writer_for

logger = logging.getLogger(__name__)
REPORT_EVERY = 0.5  # seconds between progress reports of a running shard


class Status(str, Enum):
    SUCCESS = "success"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_RESIZE = "failed_to_resize"


@dataclass(frozen=True)
class SampleResult:
    status: Status
    error_message: str | None = None
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    exif: str | None = None
    hash: str | None = None


@dataclass
class ShardStats:
    """What one shard did; also the content of its `NNNNN_stats.json`."""

    shard_id: int
    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    duration: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    status_dict: dict[str, int] = field(default_factory=dict)

    def add(self, result: SampleResult) -> None:
        self.count += 1
        if result.status is Status.SUCCESS:
            self.successes += 1
        elif result.status is Status.FAILED_TO_DOWNLOAD:
            self.failed_to_download += 1
        else:
            self.failed_to_resize += 1
        reason = "success" if result.status is Status.SUCCESS else str(result.error_message)
        self.status_dict[reason] = self.status_dict.get(reason, 0) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=4)


def digest(hash_type: HashType, data: bytes) -> str:
    return hashlib.new(hash_type.value, data).hexdigest()


EXIF_MARKERS = {EncodeFormat.JPG: b"Exif\0\0", EncodeFormat.PNG: b"eXIf", EncodeFormat.WEBP: b"EXIF"}


def read_exif(data: bytes) -> str:
    """EXIF tags as a JSON string (`{}` when there are none or they cannot be read)."""
    image_format = sniff_format(data)
    # a JPEG's EXIF block comes before its first scan: no need to look through the whole image
    end = data.find(b"\xff\xda") if image_format is EncodeFormat.JPG else -1
    if image_format is None or data.find(EXIF_MARKERS[image_format], 0, end if end > 0 else len(data)) < 0:
        return "{}"
    try:
        tags = exifread.process_file(io.BytesIO(data), details=False)
        return json.dumps({k: str(v).strip() for k, v in tags.items() if v is not None})
    except Exception:  # noqa: BLE001 - unreadable EXIF is not an error of the sample
        return "{}"


class SampleProcessor:
    """Fetches and resizes one row; used concurrently by the download threads of one shard."""

    def __init__(self, config: Config):
        self.config = config
        self.fetcher = Fetcher(config.fetch)
        # decoding many large images at once costs memory, not speed: bound it by the cores
        concurrent_decodes = max(2, os.cpu_count() or 2)
        self.decode_slots = threading.BoundedSemaphore(concurrent_decodes)
        # every worker process of a machine decodes at once: the memory cap is shared by all of them
        self.resizer = Resizer(config.resize, concurrent_decodes * config.run.processes_count)

    def __call__(self, url: str | None, boxes: Any = None, expected_hash: str | None = None) -> SampleResult:
        write = self.config.write
        try:
            data = self.fetcher.fetch(url)
        except FetchError as error:
            return SampleResult(Status.FAILED_TO_DOWNLOAD, error.message)
        if not data:
            return SampleResult(Status.FAILED_TO_DOWNLOAD, "empty body")
        if write.verify_hash_type is not None and digest(write.verify_hash_type, data) != expected_hash:
            return SampleResult(Status.FAILED_TO_DOWNLOAD, "hash mismatch")
        sample_hash = digest(write.compute_hash, data) if write.compute_hash is not None else None
        try:
            with self.decode_slots:
                resized = self.resizer(data, boxes)
        except ResizeError as error:
            return SampleResult(Status.FAILED_TO_RESIZE, error.message, hash=sample_hash)
        except Exception as error:  # noqa: BLE001 - a bad image never crashes a shard
            logger.debug("resize of %s failed", url, exc_info=True)
            return SampleResult(
                Status.FAILED_TO_RESIZE, f"Image decoding error ({type(error).__name__})", hash=sample_hash
            )
        exif = read_exif(data) if write.extract_exif else None
        return SampleResult(
            Status.SUCCESS,
            None,
            resized.data,
            resized.width,
            resized.height,
            resized.original_width,
            resized.original_height,
            exif,
            sample_hash,
        )


@dataclass(frozen=True)
class ShardDownloader:
    """Picklable: configuration only. Call it with a `Shard`; it returns the shard's stats.

    `report(samples, successes)`, when given, is called about twice a second with the samples
    finished since its last call (for a progress bar).
    """

    config: Config

    def __call__(self, shard: Shard, report: Callable[[int, int], None] | None = None) -> ShardStats:
        write = self.config.write
        stats = ShardStats(shard.shard_id, start_time=time.time())
        shard_name = write.key_format.shard_name(shard.shard_id)
        folder = write.output_folder
        folder.remove_shard_outputs(shard_name)

        table = shard.read()
        input_columns = [name for name in table.column_names if name not in INTERNAL_COLUMNS]
        rows = table.select(input_columns).to_pylist()
        boxes = table.column(BBOX).to_pylist() if BBOX in table.column_names else None
        hashes = table.column(VERIFY_HASH).to_pylist() if VERIFY_HASH in table.column_names else None
        schema = metadata_schema(table.select(input_columns).schema, write)

        reported = ShardStats(shard.shard_id)  # what `report` has been told so far
        next_report = time.monotonic() + REPORT_EVERY
        with writer_for(write, shard_name, schema) as writer:
            for index, result in self._results(rows, boxes, hashes):
                record = {
                    **rows[index],
                    "key": write.key_format.key(shard.shard_id, index),
                    "status": result.status.value,
                    "error_message": result.error_message,
                    "width": result.width,
                    "height": result.height,
                    "original_width": result.original_width,
                    "original_height": result.original_height,
                }
                if write.extract_exif:
                    record["exif"] = result.exif
                if write.compute_hash is not None:
                    record[write.compute_hash.value] = result.hash
                writer.write(record, result.image)
                stats.add(result)
                if report is not None and (time.monotonic() >= next_report or stats.count == len(rows)):
                    report(stats.count - reported.count, stats.successes - reported.successes)
                    reported.count, reported.successes = stats.count, stats.successes
                    next_report = time.monotonic() + REPORT_EVERY

        stats.end_time = time.time()
        stats.duration = stats.end_time - stats.start_time
        folder.fs.pipe_file(folder.path(shard_name + STATS_SUFFIX), stats.to_json().encode("utf-8"))
        return stats

    def _results(
        self, rows: list[dict[str, Any]], boxes: list[Any] | None, hashes: list[Any] | None
    ) -> Iterator[tuple[int, SampleResult]]:
        """(row index, result) in completion order, from `thread_count` concurrent threads."""
        process = SampleProcessor(self.config)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(rows)):
            todo.put(index)
        thread_count = min(self.config.fetch.thread_count, len(rows))
        done: queue.Queue[tuple[int, SampleResult | BaseException]] = queue.Queue(maxsize=2 * thread_count)

        def work() -> None:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    result: SampleResult | BaseException = process(
                        rows[index]["url"],
                        boxes[index] if boxes is not None else None,
                        hashes[index] if hashes is not None else None,
                    )
                except BaseException as error:  # noqa: BLE001 - re-raised in the shard's thread
                    result = error
                done.put((index, result))

        threads = [threading.Thread(target=work, daemon=True, name=f"download-{i}") for i in range(thread_count)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(len(rows)):
                index, result = done.get()
                if isinstance(result, BaseException):
                    raise result
                yield index, result
        finally:
            while not todo.empty():  # on failure, let the threads run dry
                try:
                    todo.get_nowait()
                except queue.Empty:
                    break
            while any(thread.is_alive() for thread in threads):
                try:
                    done.get(timeout=0.1)
                except queue.Empty:
                    pass
            process.fetcher.close()
