"""Typed configuration: one frozen dataclass per concern, each with its defaults, validated once.

`download(**options)` and the CLI map their options onto `Config.from_options`, which validates
them through the table of options (`options.py`) and sorts them into the dataclasses below. The
defaults of every field come from that table, so they cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from enum import Enum
from typing import Any

from .errors import ConfigError
from .naming import KeyFormat
from .options import (
    EncodeFormat,
    HashType,
    IncrementalMode,
    InputFormat,
    Interpolation,
    ModelLayout,
    ResizeMode,
    default,
    parse_options,
)
from .stages.base import STAGES, Stage
from .storage import Folder
from .writers.base import WRITERS, ShardWriter

logger = logging.getLogger(__name__)
StageFactory = Callable[["Config"], Stage]  # a Stage class taking the Config is one


@dataclass(frozen=True)
class ReadConfig:
    """Where the url list is, which of its columns are read, and how it is cut into shards."""

    url_list: str | tuple[str, ...] = ""  # a tuple: shards as input, several sources
    input_format: InputFormat = default("input_format")
    url_col: str = default("url_col")
    caption_col: str | None = default("caption_col")
    save_additional_columns: tuple[str, ...] = default("save_additional_columns")
    bbox_col: str | None = default("bbox_col")
    verify_hash_col: str | None = None  # the column of expected hashes, when verify_hash is set
    number_sample_per_shard: int = default("number_sample_per_shard")
    storage_options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class FetchConfig:
    """How one url is downloaded, and how many at once per worker process."""

    timeout: float = default("timeout")
    retries: int = default("retries")
    thread_count: int = default("thread_count")
    user_agent_token: str | None = default("user_agent_token")
    disallowed_header_directives: tuple[str, ...] = default("disallowed_header_directives")
    ignore_ssl_certificate: bool = default("ignore_ssl_certificate")
    max_download_bytes: int = default("max_download_bytes")
    public_addresses_only: bool = default("public_addresses_only")
    allow_https_downgrade: bool = default("allow_https_downgrade")
    resolve: tuple[tuple[str, int, tuple[str, ...]], ...] = default("resolve")  # (host, port, addresses)
    memory_budget: int | None = default("memory_budget")  # bytes per process, None: `budget.memory_budget`
    processes_per_machine: int = 1  # worker processes of a machine, which share its memory
    respect_robots_txt: bool = default("respect_robots_txt")
    max_host_concurrency: int = default("max_host_concurrency")
    min_host_interval: float = default("min_host_interval")
    max_host_rate: float | None = default("max_host_rate")  # requests/s per host for the whole job
    workers: int = 1  # shards the distributor runs at once, which share max_host_rate


@dataclass(frozen=True)
class ResizeConfig:
    """How downloaded bytes become the stored image."""

    image_size: int = default("image_size")
    resize_mode: ResizeMode = default("resize_mode")
    resize_only_if_bigger: bool = default("resize_only_if_bigger")
    upscale_interpolation: Interpolation = default("upscale_interpolation")
    downscale_interpolation: Interpolation = default("downscale_interpolation")
    encode_quality: int = default("encode_quality")
    encode_format: EncodeFormat = default("encode_format")
    skip_reencode: bool = default("skip_reencode")
    disable_all_reencoding: bool = default("disable_all_reencoding")
    min_image_size: int = default("min_image_size")
    max_image_area: float = default("max_image_area")
    max_aspect_ratio: float = default("max_aspect_ratio")
    max_image_pixels: int = default("max_image_pixels")
    memory_budget: int | None = default("memory_budget")
    apply_exif_orientation: bool = default("apply_exif_orientation")
    processes_per_machine: int = 1  # worker processes that decode at once and share the memory cap


@dataclass(frozen=True)
class MetadataConfig:
    """What is recorded about the downloaded bytes besides the image: EXIF and hashes."""

    extract_exif: bool = default("extract_exif")
    compute_hash: HashType | None = default("compute_hash")
    compute_phash: bool = default("compute_phash")  # of the stored image, not of the downloaded bytes
    verify_hash_type: HashType | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The model stage (stages/model.py): which model, what its input is, where its outputs go."""

    model: str | None = default("model")  # an .onnx file's url, or module:Class; None: no model stage
    model_input_size: int = default("model_input_size")
    model_mean: tuple[float, float, float] = default("model_mean")
    model_std: tuple[float, float, float] = default("model_std")
    model_layout: ModelLayout = default("model_layout")
    model_batch_size: int = default("model_batch_size")
    model_output: str | None = default("model_output")
    model_column: str = default("model_column")
    model_save_npy: bool = default("model_save_npy")
    model_pool_size: int | None = default("model_pool_size")
    model_num_gpus: float | None = default("model_num_gpus")
    storage_options: tuple[tuple[str, Any], ...] = ()  # to read the .onnx file
    processes_per_machine: int = 1  # worker processes that share the machine's cores (onnxruntime's threads)
    distributor: str = default("distributor")  # multiprocessing: the processes share the cores; else a task per core
    # found by `stages.model.resolve` before any work: name, content hash, output size
    info: Any = field(default=None, compare=False)
    # with distributor=ray: the actor pool that runs the batches (`distributors.ray.ModelPool`), else None
    pool: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class WriteConfig:
    """What a shard's output looks like and where it goes."""

    output_format: str = default("output_format")
    writer: type[ShardWriter] = field(default_factory=lambda: WRITERS.get(default("output_format")))
    output_folder: Folder = field(default_factory=lambda: Folder(default("output_folder")))
    oom_shard_count: int = default("oom_shard_count")


@dataclass(frozen=True)
class RunConfig:
    """How shards are scheduled, what is done with earlier output, and how the run is shown."""

    distributor: str = default("distributor")
    processes_count: int = default("processes_count")
    subjob_size: int = default("subjob_size")
    max_shard_retry: int = default("max_shard_retry")
    incremental_mode: IncrementalMode = default("incremental_mode")
    retry_failed_reasons: tuple[str, ...] | None = default("retry_failed_reasons")  # None: retry.DEFAULT_REASONS
    tmp_folder: Folder | None = None  # default: `_tmp` in the output folder
    progress: bool | None = default("progress")
    enable_wandb: bool = default("enable_wandb")
    wandb_project: str = default("wandb_project")
    wait_for_lock: bool = default("wait_for_lock")


@dataclass(frozen=True)
class Config:
    read: ReadConfig = field(default_factory=ReadConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    resize: ResizeConfig = field(default_factory=ResizeConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: tuple[StageFactory, ...] = ()  # the user's stages, after the built-in ones

    @property
    def key_format(self) -> KeyFormat:
        return KeyFormat(self.read.number_sample_per_shard, self.write.oom_shard_count)

    def with_workers(self, workers: int) -> Config:
        """This configuration for a job whose distributor runs `workers` shards at once."""
        return replace(self, fetch=replace(self.fetch, workers=workers))

    @classmethod
    def from_options(cls, **options: Any) -> Config:
        """Validate `download()`'s options (missing ones take their defaults) into a Config."""
        values = parse_options(options)
        storage_options = values["storage_options"]
        verify_hash_col, verify_hash_type = values["verify_hash"] or (None, None)
        additional = values["save_additional_columns"]
        if len(set(additional)) != len(additional):
            raise ConfigError(f"save_additional_columns has duplicate names: {list(additional)}")
        tmp_folder = values["tmp_folder"]
        return cls(
            read=_section(
                ReadConfig,
                values,
                verify_hash_col=verify_hash_col,
                storage_options=tuple(sorted(storage_options.items())),
            ),
            fetch=_section(FetchConfig, values, processes_per_machine=values["processes_count"]),
            resize=_section(
                ResizeConfig,
                values,
                encode_quality=_encode_quality(values["encode_quality"], values["encode_format"]),
                processes_per_machine=values["processes_count"],
            ),
            metadata=_section(MetadataConfig, values, verify_hash_type=verify_hash_type),
            write=_section(
                WriteConfig,
                values,
                writer=WRITERS.get(values["output_format"]),
                output_folder=Folder(values["output_folder"], storage_options),
            ),
            run=_section(
                RunConfig, values, tmp_folder=None if tmp_folder is None else Folder(tmp_folder, storage_options)
            ),
            model=_section(
                ModelConfig,
                values,
                storage_options=tuple(sorted(storage_options.items())),
                processes_per_machine=values["processes_count"],
            ),
            stages=tuple(STAGES.get(name) for name in values["stages"]),
        )


def _section(section: type, values: Mapping[str, Any], **derived: Any) -> Any:
    """A config dataclass from the option values of the same names, and `derived` fields."""
    given = {f.name: values[f.name] for f in fields(section) if f.name in values}
    return section(**{**given, **derived})


def _encode_quality(quality: int, encode_format: EncodeFormat) -> int:
    if encode_format is EncodeFormat.PNG and quality > 9:
        # png "quality" is a compression level 0-9; OpenCV (and so img2dataset) takes 95 as 9
        logger.info("encode_quality %s is a png compression level above 9: using 9", quality)
        return 9
    if quality > 100:
        raise ConfigError(f"encode_quality must be 0-100 for {encode_format.value} (0-9 for png); got {quality!r}")
    return quality


def plain(value: Any, leave_out: tuple[str, ...] = ()) -> Any:
    """A configuration value as JSON-able data: sections as dicts (fields named in `leave_out` left
    out), enums as their values, folders as urls, classes and functions as `module:name`."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name), leave_out) for f in fields(value) if f.name not in leave_out}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Folder):
        return value.url
    if isinstance(value, (list, tuple)):
        return [plain(item, leave_out) for item in value]
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    if callable(value):
        return f"{value.__module__}:{value.__qualname__}"
    return value
