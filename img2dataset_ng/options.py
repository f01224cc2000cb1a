"""The table of options: every option of `download()` with its type, default, help and validation.

`download()`'s signature, the CLI flags and `--help` are all made from `OPTIONS`; `parse_options`
validates a call's options into canonical values (enums, tuples) that `Config.from_options` sorts
into its dataclasses. Every bad value fails here, before any work starts, with a message that
names the option and what it allows.
"""

from __future__ import annotations

import inspect
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, TypeVar

from .errors import ConfigError


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
    # existing shards as input (reader/datasets.py)
    WEBDATASET = "webdataset"
    PARQUET_SHARDS = "parquet_shards"
    FILES_SHARDS = "files_shards"
    IMAGE_FOLDER = "image_folder"  # a folder of images with optional KEY.txt / KEY.cls / KEY.json beside them


class HashType(str, Enum):
    MD5 = "md5"
    SHA256 = "sha256"
    SHA512 = "sha512"


class ModelLayout(str, Enum):
    NCHW = "NCHW"  # (batch, channels, height, width): ONNX exports of torch models
    NHWC = "NHWC"  # (batch, height, width, channels): TensorFlow's


class IncrementalMode(str, Enum):
    INCREMENTAL = "incremental"
    OVERWRITE = "overwrite"
    EXTEND = "extend"
    RETRY_FAILED = "retry_failed"


DEFAULT_DISALLOWED_HEADER_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
MODULE_CLASS = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
TRUE, FALSE = {"true", "1", "yes", "y"}, {"false", "0", "no", "n"}
E = TypeVar("E", bound=Enum)
Parse = Callable[[str, Any], Any]  # (option name, value) -> canonical value, or ConfigError


# --- validators: each takes the option's name (for the message) and a value ------------------


def choice(option: str, value: Any, enum: type[E], aliases: Mapping[str, str] | None = None) -> E:
    """Parse `value` as a member of `enum`, or fail naming `option` and the allowed values."""
    text = value.value if isinstance(value, Enum) else str(value)
    text = (aliases or {}).get(text, text)
    try:
        return enum(text)
    except ValueError:
        allowed = [member.value for member in enum] + sorted(aliases or {})
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}; got {value!r}") from None


def one_of(enum: type[Enum], aliases: Mapping[str, str] | None = None) -> Parse:
    return lambda option, value: choice(option, value, enum, aliases)


def at_least(minimum: float, kind: type = int) -> Parse:
    def parse(option: str, value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{option} must be a number; got {value!r}") from None
        if not number >= minimum:  # also refuses NaN
            raise ConfigError(f"{option} must be >= {minimum}; got {value!r}")
        return number

    return parse


def boolean(option: str, value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in TRUE | FALSE:
            return lowered in TRUE
        raise ConfigError(f"{option} must be True or False; got {value!r}")
    return bool(value)


def text(option: str, value: Any) -> str:
    return str(value)


def names(option: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"{option} must be a list of strings; got {value!r}")
    return tuple(value)


def reasons(option: str, value: Any) -> tuple[str, ...] | None:
    """Statuses or beginnings of error messages (incremental_mode="retry_failed"); None: the defaults."""
    if value is None:
        return None
    chosen = names(option, value) if isinstance(value, (list, tuple)) else ()
    if not chosen or not all(reason.strip() for reason in chosen) or "success" in chosen:
        raise ConfigError(
            f"{option} must be a non-empty list of failure statuses (failed_to_download, failed_to_resize) or "
            f"beginnings of error messages (e.g. 'HTTP Error 5'), or None for the retryable download failures; "
            f"got {value!r}"
        )
    return chosen


def url_list(option: str, value: Any) -> str | tuple[str, ...]:
    """A path or url; for shards as input also a list of them (a tuple here)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{option} must be a path or url of a file or folder (or, of shards, a list); got {value!r}")
    return value


def verify_hash(option: str, value: Any) -> tuple[str, HashType] | None:
    if value is None:
        return None
    if isinstance(value, str) or len(value) != 2:
        raise ConfigError(f"{option} must be [column, hash_type]; got {value!r}")
    return str(value[0]), choice(f"{option} hash_type", value[1], HashType)


def directives(option: str, value: Any) -> tuple[str, ...]:
    chosen = DEFAULT_DISALLOWED_HEADER_DIRECTIVES if value is None else names(option, value)
    return tuple(d.strip().lower() for d in chosen)


def mapping(option: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{option} must be a dict; got {value!r}")
    return dict(value)


def resolve_entries(option: str, value: Any) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """curl's `--resolve` entries, `HOST:PORT:ADDRESS[,ADDRESS...]` (IPv6 in brackets), as
    `(host, port, addresses)` with the host lowercased."""
    entries = []
    for entry in names(option, value):
        host, _, rest = entry.partition(":")
        port, _, addresses = rest.partition(":")
        ips = [a.strip().strip("[]") for a in addresses.split(",")] if addresses else []
        try:
            valid = bool(host) and 0 < int(port) < 65536 and bool(ips)
            for ip in ips:
                ipaddress.ip_address(ip)
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(
                f"{option} entries must be HOST:PORT:ADDRESS[,ADDRESS...] with an IP address, "
                f"e.g. 'images.example:443:127.0.0.1'; got {entry!r}"
            )
        entries.append((host.lower(), int(port), tuple(ips)))
    return tuple(entries)


def model_source(option: str, value: Any) -> str:
    """An `.onnx` file's path or url, or `module:Class`."""
    text = str(value).strip()
    if not text or not (text.endswith(".onnx") or "/" in text or MODULE_CLASS.fullmatch(text)):
        raise ConfigError(
            f"{option} must be the path or url of an .onnx file, or module:Class of a Python model; got {value!r}"
        )
    return text


def channels(option: str, value: Any) -> tuple[float, float, float]:
    """Three numbers, one per RGB channel."""
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        raise ConfigError(f"{option} must be three numbers, one per channel (R, G, B); got {value!r}")
    return numbers  # type: ignore[return-value]


def optional(parse: Parse) -> Parse:
    return lambda option, value: None if value is None else parse(option, value)


# --- the table ------------------------------------------------------------------------------

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Option:
    name: str
    kind: type  # bool, int, float, str, list or dict: what the CLI parses a flag's text as
    default: Any
    help: str
    parse: Parse
    nullable: bool = False  # None is a meaningful value (the CLI takes `None` for it)

    @property
    def annotation(self) -> Any:
        kind = {list: list[str], dict: dict[str, Any]}.get(self.kind, self.kind)
        return Optional[kind] if self.nullable else kind  # noqa: UP007 - an object, not an annotation


def _enum_help(enum: type[Enum]) -> str:
    return ", ".join(member.value for member in enum)


OPTIONS: tuple[Option, ...] = (
    Option("url_list", str, REQUIRED, "file or folder of url lists (any fsspec url)", url_list),
    Option("image_size", int, 256, "target size in pixels", at_least(1)),
    Option("output_folder", str, "images", "where shards go (any fsspec url)", text),
    Option(
        "processes_count",
        int,
        1,
        "worker processes (multiprocessing); size of a local Spark session or Ray instance "
        "(a running cluster brings its own)",
        at_least(1),
    ),
    Option("resize_mode", str, "border", _enum_help(ResizeMode), one_of(ResizeMode)),
    Option("resize_only_if_bigger", bool, False, "never upscale; leave images that are not bigger untouched", boolean),
    Option(
        "upscale_interpolation",
        str,
        "lanczos",
        _enum_help(Interpolation),
        one_of(Interpolation, INTERPOLATION_ALIASES),
    ),
    Option(
        "downscale_interpolation",
        str,
        "area",
        _enum_help(Interpolation),
        one_of(Interpolation, INTERPOLATION_ALIASES),
    ),
    Option("encode_quality", int, 95, "jpg/webp quality 0-100; png compression 0-9", at_least(0)),
    Option("encode_format", str, "jpg", _enum_help(EncodeFormat), one_of(EncodeFormat)),
    Option(
        "skip_reencode", bool, False, "keep the original bytes when no resize happened and the format matches", boolean
    ),
    Option(
        "output_format",
        str,
        "files",
        "files, webdataset, parquet, tfrecord, metadata (NNNNN.parquet only), dummy, or a registered writer",
        text,
    ),
    Option("input_format", str, "txt", _enum_help(InputFormat), one_of(InputFormat)),
    Option("url_col", str, "url", "url column", text),
    Option("caption_col", str, None, "caption column; when set, captions are saved", optional(text), True),
    Option("bbox_col", str, None, "column of [[x0,y0,x1,y1], ...] relative boxes to blur", optional(text), True),
    Option("thread_count", int, 256, "concurrent downloads per process", at_least(1)),
    Option("number_sample_per_shard", int, 10000, "rows per shard", at_least(1)),
    Option("extract_exif", bool, True, "add an exif column", boolean),
    Option(
        "save_additional_columns",
        list,
        None,
        'input columns copied into the metadata, e.g. \'["a","b"]\'',
        names,
        True,
    ),
    Option("timeout", float, 10, "deadline in seconds for each whole request", at_least(0.001, float)),
    Option("enable_wandb", bool, False, "log progress to Weights & Biases", boolean),
    Option("wandb_project", str, "img2dataset", "Weights & Biases project", text),
    Option("oom_shard_count", int, 5, "digits of the shard part of names and keys", at_least(1)),
    Option("compute_hash", str, "sha256", "None, " + _enum_help(HashType), optional(one_of(HashType)), True),
    Option("verify_hash", list, None, "[column, hash_type]: fail samples whose hash differs", verify_hash, True),
    Option("distributor", str, "multiprocessing", "multiprocessing, pyspark, ray, or a registered one", text),
    Option(
        "subjob_size",
        int,
        1000,
        "pyspark: the most shards in flight at once, each its own Spark job (at most 2 x the cores)",
        at_least(1),
    ),
    Option("retries", int, 0, "extra download attempts per url (timeouts, connection errors, 429, 5xx)", at_least(0)),
    Option("disable_all_reencoding", bool, False, "store the downloaded bytes as they are", boolean),
    Option("min_image_size", int, 0, "refuse images whose smaller side is below this", at_least(0)),
    Option("max_image_area", float, float("inf"), "refuse images with more pixels", at_least(0, float)),
    Option(
        "max_aspect_ratio", float, float("inf"), "refuse images with a larger max/min side ratio", at_least(1, float)
    ),
    Option("incremental_mode", str, "incremental", _enum_help(IncrementalMode), one_of(IncrementalMode)),
    Option(
        "retry_failed_reasons",
        list,
        None,
        "incremental_mode=retry_failed: the rows to retry, by status or by the beginning of their error_message, "
        'e.g. \'["HTTP Error 5", "timed out"]\'; None means the retryable download failures',
        reasons,
        True,
    ),
    Option("max_shard_retry", int, 1, "rounds of re-running shards that failed as a whole", at_least(0)),
    Option(
        "user_agent_token",
        str,
        None,
        "appended to the User-Agent; selects UA-scoped X-Robots-Tag rules",
        optional(text),
        True,
    ),
    Option(
        "disallowed_header_directives",
        list,
        None,
        "X-Robots-Tag directives that refuse an image; None means noai, noimageai, noindex, noimageindex; "
        "'[]' turns the check off",
        directives,
        True,
    ),
    Option(
        "respect_robots_txt",
        bool,
        True,
        "honour robots.txt (RFC 9309, the group of user_agent_token, img2dataset-ng or img2dataset, else *) and "
        "the TDM-Rep tdm-reservation header; False behaves as img2dataset 1.47",
        boolean,
    ),
    Option(
        "max_host_concurrency",
        int,
        8,
        "requests one host gets at once from each worker process (lowered while it answers 429/5xx or times out)",
        at_least(1),
    ),
    Option(
        "min_host_interval",
        float,
        0,
        "seconds between request starts to one host, per worker process",
        at_least(0, float),
    ),
    Option(
        "max_host_rate",
        float,
        None,
        "requests per second one host may get from the whole job, shared by the distributor's workers "
        "(each keeps 1/workers of it); None means no job-wide limit",
        optional(at_least(0.0001, float)),
        True,
    ),
    Option("ignore_ssl_certificate", bool, False, "skip TLS verification", boolean),
    Option(
        "max_download_bytes",
        int,
        50 * 1024 * 1024,
        "refuse bodies larger than this many bytes ('too large'), without reading them",
        at_least(1),
    ),
    Option(
        "max_image_pixels",
        int,
        100_000_000,
        "refuse, before decoding, images whose header declares more pixels "
        "(decompression bombs; also capped by the machine's memory)",
        at_least(1),
    ),
    Option(
        "memory_budget",
        int,
        None,
        "bytes of downloaded bodies and decoded pixels one worker process may hold at once (half each); "
        "threads wait rather than go over; None means min(4 GiB, half the machine's memory / processes_count)",
        optional(at_least(1 << 20)),
        True,
    ),
    Option(
        "public_addresses_only",
        bool,
        False,
        "fetch only from public internet addresses: also refuse loopback, private and shared ranges "
        "(recommended for url lists that come from the web); link-local and cloud metadata addresses "
        "are always refused",
        boolean,
    ),
    Option("allow_https_downgrade", bool, False, "follow redirects from https to plain http", boolean),
    Option(
        "resolve",
        list,
        None,
        "HOST:PORT:ADDRESS entries used instead of DNS, as curl's --resolve, e.g. '[\"images.example:443:10.0.0.5\"]'; "
        "the addresses still go through the network policy",
        resolve_entries,
        True,
    ),
    Option(
        "wait_for_lock",
        bool,
        False,
        "when another run holds output_folder, wait for it to end instead of refusing at once",
        boolean,
    ),
    Option(
        "storage_options",
        dict,
        None,
        'fsspec storage options as JSON, e.g. \'{"endpoint_url": "http://..."}\', or such options keyed by protocol',
        mapping,
        True,
    ),
    Option(
        "tmp_folder",
        str,
        None,
        "where shard inputs wait for workers; all workers must read it; None means OUTPUT_FOLDER/_tmp",
        optional(text),
        True,
    ),
    Option("progress", bool, None, "show the progress bar; None shows it only on a terminal", optional(boolean), True),
    Option(
        "stages",
        list,
        None,
        "more per-sample stages, run after the built-in ones: registered names or module:Class paths",
        names,
        True,
    ),
    Option(
        "compute_phash",
        bool,
        False,
        "add a phash column: the 64-bit DCT perceptual hash of the stored image as 16 hex digits "
        "(imagehash.phash's algorithm)",
        boolean,
    ),
    Option(
        "apply_exif_orientation",
        bool,
        False,
        "turn images upright by their EXIF orientation before resizing (sizes and boxes are then the upright "
        "image's); False keeps the pixels as stored, as img2dataset 1.47",
        boolean,
    ),
    Option(
        "model",
        str,
        None,
        "run a model on every stored image: the path or url of an .onnx file (onnxruntime), or module:Class of a "
        "Python class called with a batch array; its outputs go to the metadata column model_column",
        optional(model_source),
        True,
    ),
    Option(
        "model_input_size",
        int,
        224,
        "the model's input: images are resized (shorter side) and center cropped to this many pixels square",
        at_least(1),
    ),
    Option(
        "model_mean",
        list,
        [0.485, 0.456, 0.406],
        "per-channel mean subtracted from RGB values in [0, 1] (default ImageNet's)",
        channels,
    ),
    Option(
        "model_std",
        list,
        [0.229, 0.224, 0.225],
        "per-channel standard deviation the values are divided by (default ImageNet's)",
        channels,
    ),
    Option("model_layout", str, "NCHW", f"the model's input layout: {_enum_help(ModelLayout)}", one_of(ModelLayout)),
    Option("model_batch_size", int, 32, "images the model is run on at once", at_least(1)),
    Option(
        "model_output",
        str,
        None,
        "the model output to keep (an ONNX output name); None keeps the first",
        optional(text),
        True,
    ),
    Option("model_column", str, "embedding", "the metadata column of the model's output (float32, fixed size)", text),
    Option(
        "model_save_npy",
        bool,
        False,
        "also write each shard's outputs as NNNNN.npy, row for row with "
        "NNNNN.parquet (NaN rows where the model gave none)",
        boolean,
    ),
    Option(
        "model_pool_size",
        int,
        None,
        "with distributor=ray: actors that hold the model; None means one per "
        "model_num_gpus of the cluster's GPUs, or a quarter of its CPUs without GPUs",
        optional(at_least(1)),
        True,
    ),
    Option(
        "model_num_gpus",
        float,
        None,
        "with distributor=ray: GPUs per model actor; None means 1 when the cluster has GPUs, else 0 (CPU actors)",
        optional(at_least(0, float)),
        True,
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}

SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=o.default, annotation=o.annotation)
        for o in OPTIONS
    ],
    return_annotation="Summary",
)


def bind(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A call's arguments as {option: value}, as Python binds them to `SIGNATURE` (defaults not filled)."""
    return dict(SIGNATURE.bind(*args, **kwargs).arguments)


def parse_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option, defaulted where not given and validated into its canonical value."""
    unknown = sorted(set(options) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    missing = [o.name for o in OPTIONS if o.default is REQUIRED and o.name not in options]
    if missing:
        raise ConfigError(f"{', '.join(missing)} is required")
    return {o.name: o.parse(o.name, options.get(o.name, o.default)) for o in OPTIONS}


def default(name: str) -> Any:
    """The canonical default of option `name` (what the config dataclasses start from)."""
    option = BY_NAME[name]
    return option.parse(name, option.default)
