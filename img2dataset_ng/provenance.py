"""What made an output folder: the options that shape its shards and a fingerprint of the url list.

Written to `_img2dataset_ng_run.json` when a run starts. A later run into the same folder must
match it, or it would skip shards made differently as "already done" (incremental) or append
shards of another shape (extend); it is refused with a message that says what differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

from .config import Config, plain
from .errors import ConfigError
from .naming import RUN_RECORD
from .options import IncrementalMode, default
from .reader import UrlListReader
from .storage import Folder
from .version import __version__

logger = logging.getLogger(__name__)
# the options that decide what a shard holds and how it is named; network and scheduling options
# (timeout, retries, thread_count, distributor, ...) may change between runs
OUTPUT_OPTIONS = (
    "image_size",
    "resize_mode",
    "resize_only_if_bigger",
    "upscale_interpolation",
    "downscale_interpolation",
    "encode_quality",
    "encode_format",
    "skip_reencode",
    "disable_all_reencoding",
    "min_image_size",
    "max_image_area",
    "max_aspect_ratio",
    "output_format",
    "input_format",
    "url_col",
    "caption_col",
    "bbox_col",
    "save_additional_columns",
    "number_sample_per_shard",
    "oom_shard_count",
    "extract_exif",
    "compute_hash",
    "verify_hash",
    "stages",
    "compute_phash",
    "apply_exif_orientation",
    "model",
    "model_sha256",
    "model_input_size",
    "model_mean",
    "model_std",
    "model_layout",
    "model_output",
    "model_column",
    "model_save_npy",
)
# output-shaping options added after records were first written: a record without one was made with its default
ADDED_LATER = {
    "compute_phash": False,
    "apply_exif_orientation": False,
    **{name: plain(default(name)) for name in OUTPUT_OPTIONS if name.startswith("model") and name != "model_sha256"},
    "model_sha256": None,
}
HEAD_BYTES = 65536  # of the first input file, hashed: a cheap check that it is the same list


def output_options(config: Config) -> dict[str, Any]:
    fields = {
        f.name: getattr(section, f.name)
        for section in (config.read, config.resize, config.metadata, config.write, config.model)
        for f in dataclasses.fields(section)
    }
    fields["verify_hash"] = (
        None if fields["verify_hash_col"] is None else [fields["verify_hash_col"], fields["verify_hash_type"]]
    )
    fields["stages"] = config.stages
    # the model by its file name (or module:Class) and content: the same file under another path is the same model
    info = config.model.info
    fields["model"], fields["model_sha256"] = (None, None) if info is None else (info.name, info.sha256)
    return {name: plain(fields[name]) for name in OUTPUT_OPTIONS}


def url_list_fingerprint(config: Config, reader: UrlListReader) -> dict[str, Any]:
    """The input files (names relative to url_list, sizes) and a hash of the first one's head."""
    source = config.read.url_list if isinstance(config.read.url_list, str) else config.read.url_list[0]
    root = Folder(source.split("{", 1)[0], config.read.storage_options).root  # a brace pattern: up to it
    files = [[path[len(root) :].lstrip("/") or path.rsplit("/", 1)[-1], reader.fs.size(path)] for path in reader.files]
    head = b""
    if reader.files:
        with reader.fs.open(reader.files[0], "rb") as f:
            head = f.read(HEAD_BYTES)
    return {"files": files, "head_sha256": hashlib.sha256(head).hexdigest()}


def make_record(config: Config, reader: UrlListReader) -> dict[str, Any]:
    return {
        "made_by": f"img2dataset-ng {__version__}",
        "options": output_options(config),
        "url_list": url_list_fingerprint(config, reader),
    }


def read(folder: Folder, names: list[str]) -> dict[str, Any] | None:
    """The folder's record, when `names` (its listing) holds one."""
    if RUN_RECORD not in names:
        return None
    with folder.open(RUN_RECORD) as f:
        return json.load(f)


def check(
    folder: Folder, earlier: dict[str, Any] | None, record: dict[str, Any], mode: IncrementalMode, has_shards: bool
) -> None:
    """Refuse a run whose record differs from `earlier`, that of the shards in the folder (overwrite
    replaces them, and a folder without shards has nothing to protect: neither is checked)."""
    if mode is IncrementalMode.OVERWRITE or not has_shards:
        return
    if earlier is None:
        logger.warning("%s holds shards but no %s: assuming they were made like this run", folder.url, RUN_RECORD)
        return
    before = {**ADDED_LATER, **earlier.get("options", {})}
    differences = [
        f"{name} was {before.get(name)!r}, now {value!r}"
        for name, value in record["options"].items()
        if before.get(name) != value
    ]
    if differences:
        raise ConfigError(
            f"output_folder {folder.url} holds shards made with other options: {'; '.join(differences)}. "
            "Use incremental_mode='overwrite' to replace them, or another output_folder"
        )
    if mode is IncrementalMode.INCREMENTAL and earlier.get("url_list") != record["url_list"]:
        raise ConfigError(
            f"output_folder {folder.url} holds shards made from another url list (its files, sizes or "
            "content differ). Use incremental_mode='extend' to add this list's shards after them, "
            "incremental_mode='overwrite' to replace them, or another output_folder"
        )


def write(folder: Folder, record: dict[str, Any], earlier: dict[str, Any] | None) -> None:
    """Record what made the folder, unless `earlier` (what it holds now) says the same: a run that
    changes nothing leaves the file (and the folder) untouched."""
    if record != earlier:
        folder.write(RUN_RECORD, json.dumps(record, indent=2).encode("utf-8"))
