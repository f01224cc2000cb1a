"""Typed configuration: one frozen dataclass per concern, validated once.

`download(**options)` and the CLI only map their options onto `Config.from_options`; every bad
value fails here, before any work starts, with a message that names the option and what it allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from .layout import KeyFormat, OutputFolder

logger = logging.getLogger(__name__)


class ResizeMode(str, Enum):
    NO = "no"
    BORDER = "border"
    KEEP_RATIO = "keep_ratio"
    KEEP_RATIO_LARGEST = "keep_ratio_largest"
    CENTER_CROP = "center_crop"


class Interpolation(str, Enum):
    NEAREST = "nearest"
    LINEAR = "linear"
    CUBIC = "cubic"
    AREA = "area"
    LANCZOS = "lanczos"


INTERPOLATION_ALIASES = {"bilinear": "linear", "bicubic": "cubic", "lanczos4": "lanczos"}


class EncodeFormat(str, Enum):
    JPG = "jpg"
    PNG = "png"
    WEBP = "webp"


class OutputFormat(str, Enum):
    FILES = "files"
    WEBDATASET = "webdataset"
    PARQUET = "parquet"
    TFRECORD = "tfrecord"
    DUMMY = "dummy"


class InputFormat(str, Enum):
    TXT = "txt"
    TXT_GZ = "txt.gz"
    CSV = "csv"
    CSV_GZ = "csv.gz"
    TSV = "tsv"
    TSV_GZ = "tsv.gz"
    JSON = "json"
    JSON_GZ = "json.gz"
    JSONL = "jsonl"
    JSONL_GZ = "jsonl.gz"
    PARQUET = "parquet"


class HashType(str, Enum):
    MD5 = "md5"
    SHA256 = "sha256"
    SHA512 = "sha512"


class IncrementalMode(str, Enum):
    INCREMENTAL = "incremental"
    OVERWRITE = "overwrite"
    EXTEND = "extend"


RESERVED_COLUMNS = frozenset(
    {"key", "caption", "url", "width", "height", "original_width", "original_height", "status", "error_message", "exif"}
    | {hash_type.value for hash_type in HashType}
)
DEFAULT_DISALLOWED_HEADER_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
DEFAULT_MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

E = TypeVar("E", bound=Enum)


class ConfigError(ValueError):
    """A bad option value; the message names the option and what it allows."""


def choice(option: str, value: Any, enum: type[E], aliases: dict[str, str] | None = None) -> E:
    """Parse `value` as a member of `enum`, or fail naming `option` and the allowed values."""
    text = value.value if isinstance(value, Enum) else str(value)
    text = (aliases or {}).get(text, text)
    try:
        return enum(text)
    except ValueError:
        allowed = [member.value for member in enum] + sorted(aliases or {})
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}; got {value!r}") from None


def _at_least(option: str, value: Any, minimum: float, kind: type = int) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option} must be a number; got {value!r}") from None
    if not number >= minimum:  # also refuses NaN
        raise ConfigError(f"{option} must be >= {minimum}; got {value!r}")
    return number


def _names(option: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{option} must be a list of strings; got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class ReadConfig:
    """Where the url list is and which of its columns matter."""

    url_list: str
    input_format: InputFormat
    url_col: str
    caption_col: str | None
    bbox_col: str | None
    verify_hash_col: str | None
    save_additional_columns: tuple[str, ...]
    number_sample_per_shard: int
    storage_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class FetchConfig:
    """How one url is downloaded."""

    timeout: float
    retries: int
    thread_count: int
    user_agent_token: str | None
    disallowed_header_directives: tuple[str, ...]
    ignore_ssl_certificate: bool
    max_download_bytes: int


@dataclass(frozen=True)
class ResizeConfig:
    """How downloaded bytes become the stored image."""

    image_size: int
    resize_mode: ResizeMode
    resize_only_if_bigger: bool
    upscale_interpolation: Interpolation
    downscale_interpolation: Interpolation
    encode_quality: int
    encode_format: EncodeFormat
    skip_reencode: bool
    disable_all_reencoding: bool
    min_image_size: int
    max_image_area: float
    max_aspect_ratio: float
    blur_boxes: bool
    max_image_pixels: int


@dataclass(frozen=True)
class WriteConfig:
    """What a shard's output looks like and where it goes."""

    output_format: OutputFormat
    output_folder: OutputFolder
    key_format: KeyFormat
    encode_format: EncodeFormat
    save_caption: bool
    extract_exif: bool
    compute_hash: HashType | None
    verify_hash_type: HashType | None


@dataclass(frozen=True)
class RunConfig:
    """How shards are scheduled and what is done with earlier output."""

    distributor: str
    processes_count: int
    subjob_size: int
    max_shard_retry: int
    incremental_mode: IncrementalMode
    enable_wandb: bool
    wandb_project: str


@dataclass(frozen=True)
class Config:
    read: ReadConfig
    fetch: FetchConfig
    resize: ResizeConfig
    write: WriteConfig
    run: RunConfig

    @classmethod
    def from_options(cls, **options: Any) -> Config:
        """Validate the options of `download()` (already defaulted) into a Config."""
        o = options
        input_format = choice("input_format", o["input_format"], InputFormat)
        encode_format = choice("encode_format", o["encode_format"], EncodeFormat)
        compute_hash = None if o["compute_hash"] is None else choice("compute_hash", o["compute_hash"], HashType)

        verify_hash = o["verify_hash"]
        verify_hash_col, verify_hash_type = None, None
        if verify_hash is not None:
            if isinstance(verify_hash, str) or len(verify_hash) != 2:
                raise ConfigError(f"verify_hash must be [column, hash_type]; got {verify_hash!r}")
            verify_hash_col = str(verify_hash[0])
            verify_hash_type = choice("verify_hash hash_type", verify_hash[1], HashType)

        additional = _names("save_additional_columns", o["save_additional_columns"])
        reserved = sorted(set(additional) & RESERVED_COLUMNS)
        if reserved:
            raise ConfigError(
                f"save_additional_columns may not use the reserved names {', '.join(reserved)} "
                f"(reserved: {', '.join(sorted(RESERVED_COLUMNS))})"
            )
        if len(set(additional)) != len(additional):
            raise ConfigError(f"save_additional_columns has duplicate names: {list(additional)}")

        url_list = o["url_list"]
        if not isinstance(url_list, str) or not url_list:
            raise ConfigError(f"url_list must be a path or url of a file or folder; got {url_list!r}")
        storage_options = tuple(sorted((o.get("storage_options") or {}).items()))

        read = ReadConfig(
            url_list=url_list,
            input_format=input_format,
            url_col=str(o["url_col"]),
            caption_col=o["caption_col"],
            bbox_col=o["bbox_col"],
            verify_hash_col=verify_hash_col,
            save_additional_columns=additional,
            number_sample_per_shard=_at_least("number_sample_per_shard", o["number_sample_per_shard"], 1),
            storage_options=storage_options,
        )
        fetch = FetchConfig(
            timeout=_at_least("timeout", o["timeout"], 0.001, float),
            retries=_at_least("retries", o["retries"], 0),
            thread_count=_at_least("thread_count", o["thread_count"], 1),
            user_agent_token=o["user_agent_token"],
            disallowed_header_directives=tuple(
                d.strip().lower()
                for d in _names(
                    "disallowed_header_directives",
                    DEFAULT_DISALLOWED_HEADER_DIRECTIVES
                    if o["disallowed_header_directives"] is None
                    else o["disallowed_header_directives"],
                )
            ),
            ignore_ssl_certificate=bool(o["ignore_ssl_certificate"]),
            max_download_bytes=_at_least("max_download_bytes", o["max_download_bytes"], 1),
        )
        resize = ResizeConfig(
            image_size=_at_least("image_size", o["image_size"], 1),
            resize_mode=choice("resize_mode", o["resize_mode"], ResizeMode),
            resize_only_if_bigger=bool(o["resize_only_if_bigger"]),
            upscale_interpolation=choice(
                "upscale_interpolation", o["upscale_interpolation"], Interpolation, INTERPOLATION_ALIASES
            ),
            downscale_interpolation=choice(
                "downscale_interpolation", o["downscale_interpolation"], Interpolation, INTERPOLATION_ALIASES
            ),
            encode_quality=_encode_quality(o["encode_quality"], encode_format),
            encode_format=encode_format,
            skip_reencode=bool(o["skip_reencode"]),
            disable_all_reencoding=bool(o["disable_all_reencoding"]),
            min_image_size=_at_least("min_image_size", o["min_image_size"], 0),
            max_image_area=_at_least("max_image_area", o["max_image_area"], 0, float),
            max_aspect_ratio=_at_least("max_aspect_ratio", o["max_aspect_ratio"], 1, float),
            blur_boxes=o["bbox_col"] is not None,
            max_image_pixels=_at_least("max_image_pixels", o["max_image_pixels"], 1),
        )
        number_sample_per_shard = read.number_sample_per_shard
        write = WriteConfig(
            output_format=choice("output_format", o["output_format"], OutputFormat),
            output_folder=OutputFolder.of(str(o["output_folder"]), dict(storage_options)),
            key_format=KeyFormat(number_sample_per_shard, _at_least("oom_shard_count", o["oom_shard_count"], 1)),
            encode_format=encode_format,
            save_caption=o["caption_col"] is not None,
            extract_exif=bool(o["extract_exif"]),
            compute_hash=compute_hash,
            verify_hash_type=verify_hash_type,
        )
        run = RunConfig(
            distributor=str(o["distributor"]),
            processes_count=_at_least("processes_count", o["processes_count"], 1),
            subjob_size=_at_least("subjob_size", o["subjob_size"], 1),
            max_shard_retry=_at_least("max_shard_retry", o["max_shard_retry"], 0),
            incremental_mode=choice("incremental_mode", o["incremental_mode"], IncrementalMode),
            enable_wandb=bool(o["enable_wandb"]),
            wandb_project=str(o["wandb_project"]),
        )
        return cls(read, fetch, resize, write, run)


def _encode_quality(value: Any, encode_format: EncodeFormat) -> int:
    quality = _at_least("encode_quality", value, 0)
    if encode_format is EncodeFormat.PNG and quality > 9:
        # png "quality" is a compression level 0-9; OpenCV (and so img2dataset) takes 95 as 9
        logger.info("encode_quality %s is a png compression level above 9: using 9", quality)
        return 9
    if quality > 100:
        raise ConfigError(f"encode_quality must be 0-100 for {encode_format.value} (0-9 for png); got {value!r}")
    return quality
