"""Existing shards as input: a dataset written by img2dataset-ng or img2dataset 1.47, read back shard by shard.

`input_format` names the layout of the shards in `url_list`:

- `webdataset`: `NNNNN.tar` files; each sample's image member (`KEY.jpg`, `.png`, `.webp`, ...), its
  `KEY.json` and `KEY.txt`. When the tar has its metadata parquet beside it (`NNNNN.parquet`, as both tools
  write), the rows are that parquet's, failed rows included, in its order; otherwise one row per sample of the
  tar, from its `.json`, in tar order.
- `parquet_shards`: `NNNNN.parquet` files holding the image bytes in a `jpg`/`png`/`webp` column (the
  `parquet` output format); every other column is metadata.
- `files_shards`: `NNNNN/` folders of `KEY.jpg` files with their `NNNNN.parquet` (the `files` output format).

`url_list` is a folder holding the shards, one shard, a brace pattern (`s3://bucket/ds/{00000..00099}.tar`), or
a list of those. Input shard N (the number its name holds; else its position in sorted order) becomes output
shard N. Every input column is carried to the output row, with the input's key, status and reason: a row that
had failed stays failed, with no stage run on it. The columns the stages fill are computed again from the input
image, except the ones that describe the download (`CARRIED`), which keep the input's value. The images of one
input shard are read in one go (one request on an object store) and held while it runs.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import arrow
from ..config import ReadConfig
from ..errors import InputError
from ..options import HashType, InputFormat
from ..sample import CAPTION, SIDECAR, URL
from ..stages.load import MEMBER  # where the row's image is in its shard: a key, or a row number
from ..storage import filesystem

SHARD_FORMATS = (InputFormat.WEBDATASET, InputFormat.PARQUET_SHARDS, InputFormat.FILES_SHARDS, InputFormat.IMAGE_FOLDER)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
INPUT_KEY, INPUT_STATUS, INPUT_REASON = "__key", "__status", "__reason"  # the input row's own, carried over
INPUT_PREFIX = "__input_"  # an input column that a stage fills again, kept aside under this prefix
# what describes the download (its size, EXIF, hashes of its bytes): the input's value stays
CARRIED = ("original_width", "original_height", "exif", *(h.value for h in HashType))
SIDECARS = ("txt", "cls", "json")  # image_folder: files sharing an image's name
FOLDER_SCHEMA = pa.schema(
    [(URL, pa.string()), (CAPTION, pa.string()), ("cls", pa.string()), ("sidecar_json", pa.string())]
    + [(SIDECAR + "cls", pa.binary()), (MEMBER, pa.string())]
)
_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> a/000.tar, a/001.tar, a/002.tar (zero padding kept); `{x,y}` lists too."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    inner = match.group(1)
    numbers = _RANGE.match(inner)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        choices = inner.split(",")
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def shard_number(path: str) -> int | None:
    """The number a shard's name holds (`00042.tar`, `00042/`), or None."""
    stem = path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    return int(stem) if stem.isdigit() else None


class DatasetReader:
    """The input shards of `url_list` for the shard input formats: (shard id, path), in shard order."""

    def __init__(self, config: ReadConfig):
        self.config = config
        sources = config.url_list if isinstance(config.url_list, (list, tuple)) else [config.url_list]
        self.fs, _ = filesystem(sources[0], dict(config.storage_options))
        paths: list[str] = []
        for source in sources:
            for url in expand_braces(source):
                paths += self._shards_at(url)
        if not paths:
            what = "image" if config.input_format is InputFormat.IMAGE_FOLDER else f"{config.input_format.value} shard"
            raise InputError(f"url_list {config.url_list!r} holds no {what}")
        self.sidecars: frozenset[str] = frozenset()
        self.shards: list[tuple[int, str | tuple[str, ...]]]
        if config.input_format is InputFormat.IMAGE_FOLDER:  # cut into shards as url lists are
            size = config.number_sample_per_shard
            images = sorted(p for p in paths if p.rpartition(".")[2].lower() in IMAGE_EXTENSIONS)
            if not images:
                raise InputError(f"url_list {config.url_list!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            self.sidecars = frozenset(p for p in paths if p.rpartition(".")[2] in SIDECARS)
            starts = range(0, len(images), size)
            self.shards = [(n, tuple(images[start : start + size])) for n, start in enumerate(starts)]
            self.files = images
            return
        numbers = [shard_number(p) for p in paths]
        if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
            self.shards = sorted(zip(numbers, paths))  # type: ignore[arg-type]
        else:
            self.shards = list(enumerate(sorted(paths)))
        # what the run record fingerprints: the files holding each shard's rows
        folders = config.input_format is InputFormat.FILES_SHARDS  # a folder's parquet stands for it
        self.files = [self.rows_file(path) if folders else path for _, path in self.shards]  # type: ignore[arg-type]

    def _shards_at(self, url: str) -> list[str]:
        fs, path = filesystem(url, dict(self.config.storage_options))
        if not fs.exists(path):
            raise InputError(f"url_list {url!r} does not exist")
        fmt = self.config.input_format
        if fmt is InputFormat.IMAGE_FOLDER:  # every file under it: images, and their sidecars
            return sorted(fs.find(path)) if fs.isdir(path) else [path]
        if fmt is InputFormat.FILES_SHARDS:
            if shard_number(path) is not None and fs.isdir(path):
                return [path]
            return sorted(p for p in fs.ls(path, detail=False) if shard_number(p) is not None and fs.isdir(p))
        suffix = ".tar" if fmt is InputFormat.WEBDATASET else ".parquet"
        if not fs.isdir(path):
            return [path]
        return sorted(p for p in fs.ls(path, detail=False) if p.endswith(suffix) and not fs.isdir(p))

    def rows_file(self, path: str) -> str | None:
        """The parquet that holds a shard's rows: beside a tar, the shard itself, beside a files folder."""
        fmt = self.config.input_format
        if fmt is InputFormat.FILES_SHARDS:
            return path.rstrip("/") + ".parquet"
        if fmt is InputFormat.WEBDATASET:
            return path[: -len(".tar")] + ".parquet" if path.endswith(".tar") else None
        return path

    def check_columns(self) -> None:
        """The first shard's rows can be read (a wrong input_format fails here, before any work)."""
        if self.shards and self.config.input_format is not InputFormat.IMAGE_FOLDER:
            _rows_and_images(self.config, self.shards[0][1], rows_only=True)  # type: ignore[arg-type]


@dataclass(frozen=True)
class InputShard:
    """One input shard: picklable, read in the worker."""

    shard_id: int
    config: ReadConfig
    path: str | tuple[str, ...]  # image_folder: the shard's images
    row_count: int = 0
    retry: bool = False
    sidecars: frozenset[str] = frozenset()  # image_folder: the sidecar files of its images

    def load(self) -> tuple[pa.Table, Callable[[Any], bytes | None]]:
        """Its rows (input columns, then `__key`, `__status`, `__reason`, `__member`), and `get(member)`:
        the image bytes of a row (by its `__member`), or None; the shard's files are read once."""
        if isinstance(self.path, tuple):
            return _folder_rows(self.config, self.path, self.sidecars), input_fs(self.config, self.path[0]).cat_file
        return _rows_and_images(self.config, self.path, rows_only=False)


class DatasetSharder:
    """Hands out the input shards not done yet, as the url-list `Sharder` hands out its shards."""

    def __init__(self, reader: DatasetReader, skip: frozenset[int] = frozenset(), retry: frozenset[int] = frozenset()):
        self.reader, self.skip, self.retry = reader, skip, retry
        self.skipped = sum(1 for shard_id, _ in reader.shards if shard_id in skip)
        self.on_total: Callable[[int, int | None], None] | None = None

    def __iter__(self) -> Iterator[InputShard]:
        todo = [(shard_id, path) for shard_id, path in self.reader.shards if shard_id not in self.skip]
        counts = [self._row_count(path) for _, path in todo] if self.on_total is not None else []
        if self.on_total is not None:  # rows unknown (a tar without its parquet): the bar counts shards
            self.on_total(len(todo), None if None in counts else sum(c for c in counts if c is not None))
        for shard_id, path in todo:
            folder = isinstance(path, tuple)  # image_folder: its images, and only their sidecars
            rows = len(path) if folder else 0
            sidecars = _sidecars_of(path, self.reader.sidecars) if folder else frozenset()  # type: ignore[arg-type]
            yield InputShard(shard_id, self.reader.config, path, rows, shard_id in self.retry, sidecars)

    def _row_count(self, path: str | tuple[str, ...]) -> int | None:
        """The rows of an input shard from its parquet's footer (no row read), or None."""
        if isinstance(path, tuple):
            return len(path)
        rows_file = self.reader.rows_file(path)
        if rows_file is None:
            return None
        try:
            with self.reader.fs.open(rows_file, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        except (OSError, pa.ArrowInvalid, ValueError):
            return None


def input_rows(rows: pa.Table, stage_columns: frozenset[str]) -> pa.Table:
    """The input's metadata columns as a shard's rows: the core columns become the private `__key`,
    `__status` and `__reason`, and a column a stage fills again is kept aside as `__input_<name>`."""
    renamed = {"key": INPUT_KEY, "status": INPUT_STATUS, "error_message": INPUT_REASON}
    names = [
        renamed.get(name) or (INPUT_PREFIX + name if name in stage_columns else name) for name in rows.column_names
    ]
    return rows.rename_columns(names)


def input_fs(config: ReadConfig, path: str) -> Any:
    """The filesystem of an input path. A listing drops the protocol (`bucket/ds/00000.tar`): such a path
    is on url_list's filesystem (its first source's)."""
    sources = config.url_list if isinstance(config.url_list, (list, tuple)) else [config.url_list]
    return filesystem(path if "://" in path else sources[0], dict(config.storage_options))[0]


def _rows_and_images(config: ReadConfig, path: str, rows_only: bool) -> tuple[pa.Table, Callable[[Any], bytes | None]]:
    fs = input_fs(config, path)
    fmt = config.input_format
    try:
        if fmt is InputFormat.PARQUET_SHARDS:
            return _parquet_shard(fs, path, rows_only)
        if fmt is InputFormat.FILES_SHARDS:
            return _files_shard(fs, path)
        return _tar_shard(fs, path, rows_only)
    except (pa.ArrowInvalid, tarfile.TarError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as error:
        raise InputError(f"{path} cannot be read as a {fmt.value} shard: {error}") from None


def _parquet_shard(fs: Any, path: str, rows_only: bool) -> tuple[pa.Table, Callable[[Any], bytes | None]]:
    with fs.open(path, "rb") as f:
        schema = pq.read_schema(f)
    image_column = next((c for c in IMAGE_EXTENSIONS if c in schema.names), None)
    if image_column is None:
        raise InputError(f"{path} has no image column ({', '.join(IMAGE_EXTENSIONS)}): not a parquet_shards shard")
    columns = None if not rows_only else [n for n in schema.names if n != image_column]
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f).read(columns=columns)  # pq.read_table imports pyarrow.dataset, and pandas
    images = table.column(image_column) if not rows_only else None
    rows = table.drop_columns([image_column]) if not rows_only else table
    rows = rows.append_column(MEMBER, arrow.array(list(range(rows.num_rows)), pa.int64()))

    def get(row: Any) -> bytes | None:
        return None if images is None else images[int(row)].as_py()

    return _with_defaults(rows), get


def _files_shard(fs: Any, path: str) -> tuple[pa.Table, Callable[[Any], bytes | None]]:
    folder = path.rstrip("/")
    with fs.open(folder + ".parquet", "rb") as f:
        rows = pq.ParquetFile(f).read()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)}
    by_key = {}
    for name in sorted(names):
        key, _, extension = name.partition(".")
        if extension.lower() in IMAGE_EXTENSIONS:
            by_key.setdefault(key, name)
    keys = rows.column("key").to_pylist() if "key" in rows.column_names else []
    rows = rows.append_column(MEMBER, arrow.array([by_key.get(k) for k in keys], pa.string()))

    def get(name: Any) -> bytes | None:
        return None if name is None else fs.cat_file(f"{folder}/{name}")

    return _with_defaults(rows), get


def _tar_shard(fs: Any, path: str, rows_only: bool) -> tuple[pa.Table, Callable[[Any], bytes | None]]:
    beside = path[: -len(".tar")] + ".parquet" if path.endswith(".tar") else None
    has_rows = beside is not None and fs.exists(beside)
    data = b"" if rows_only and has_rows else fs.cat_file(path)
    images: dict[str, tuple[int, int]] = {}  # key -> (offset, size) in `data`
    records: dict[str, dict[str, Any]] = {}  # key -> its .json, and its caption
    if data:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.rpartition("/")[2].partition(".")
                extension = extension.lower()
                content = data[member.offset_data : member.offset_data + member.size] if not has_rows else b""
                if extension in IMAGE_EXTENSIONS and key not in images:
                    images[key] = (member.offset_data, member.size)
                elif extension == "json" and content:
                    record = json.loads(content)
                    records.setdefault(key, {}).update(record if isinstance(record, dict) else {})
                elif extension == "txt" and content:
                    records.setdefault(key, {}).setdefault(CAPTION, content.decode("utf-8"))
    if has_rows:
        with fs.open(beside, "rb") as f:
            rows = pq.ParquetFile(f).read()
    else:  # a tar without its parquet: one row per sample of the tar, from its .json
        keys = list(dict.fromkeys([*images, *records]))
        found = [{**records.get(k, {}), "key": k} for k in keys]
        names = dict.fromkeys(["key", *(name for record in found for name in record)])  # every row's columns
        rows = pa.table(
            {name: pa.array([r.get(name) for r in found], pa.string() if name == "key" else None) for name in names}
        )
    keys = rows.column("key").to_pylist()
    rows = rows.append_column(MEMBER, arrow.array(keys, pa.string()))
    view = memoryview(data)

    def get(key: Any) -> bytes | None:
        where = images.get(key)
        return None if where is None else bytes(view[where[0] : where[0] + where[1]])

    return _with_defaults(rows), get


def _sidecars_of(images: tuple[str, ...], sidecars: frozenset[str]) -> frozenset[str]:
    """The sidecar files (of the folder's `sidecars`) of these images: what a shard pickles is its own."""
    return frozenset(p for p in _sidecar_names(images) if p in sidecars)


def _sidecar_names(images: tuple[str, ...]) -> list[str]:
    return [stem + "." + ext for stem in (p.rpartition(".")[0] for p in images) for ext in SIDECARS]


def _folder_rows(config: ReadConfig, images: tuple[str, ...], sidecars: frozenset[str]) -> pa.Table:
    """image_folder: a row per image: its url, the caption of `NAME.txt`, the label of `NAME.cls` (a `cls`
    column, and a `KEY.cls` member), the text of `NAME.json` (a `sidecar_json` column)."""
    fs = input_fs(config, images[0])
    present = [p for p in _sidecar_names(images) if p in sidecars]
    contents = fs.cat(present) if present else {}
    texts = {p: contents.get(p, b"").decode("utf-8", "replace") for p in present}
    rows = []
    for image in images:
        stem = image.rpartition(".")[0]
        row: dict[str, Any] = {URL: fs.unstrip_protocol(image)}  # file:///..., s3://...
        row[CAPTION] = texts.get(stem + ".txt")
        label = texts.get(stem + ".cls")
        row["cls"] = None if label is None else label.strip()
        row[SIDECAR + "cls"] = None if label is None else label.strip().encode("utf-8")
        row["sidecar_json"] = texts.get(stem + ".json")  # as text: every shard has the same columns
        row[MEMBER] = image
        rows.append(row)
    return arrow.table(rows, FOLDER_SCHEMA)


def carry_download_columns(row: dict[str, Any], fields: dict[str, Any]) -> None:
    """The columns that describe the download keep the input's value (`CARRIED`), where it had one."""
    for name in CARRIED:
        value = row.get(INPUT_PREFIX + name)
        if value is not None:
            fields[name] = value


def _with_defaults(rows: pa.Table) -> pa.Table:
    """The url and caption columns exist (null when the input had none), as text."""
    for name in (URL, CAPTION):
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.string()))
    return rows
