"""model=...: run a model on every stored image, in batches; its output becomes a metadata column.

The model is an ONNX file run by onnxruntime (CUDA when `onnxruntime-gpu` and a GPU are there, else
the CPU), or `module:Class`: a Python class made once per process with no arguments and called with a
batch (torch or open_clip users wrap their own model so). Each sample is preprocessed on its own thread
from the pixels the resize stage kept (`Sample.pixels`: the image is decoded once, for resizing and for
the model): shorter side to `model_input_size`, center crop, RGB in [0, 1], `(x - mean) / std`, in
`model_layout`. A sample that cannot be preprocessed fails alone, with its reason; the others are run
in batches of `model_batch_size` (`BatchStage`) and each gets its row of the output, flattened to
float32, in `model_column`: a fixed-size list column (its size is found before any work by running
the model once: `resolve`). With `model_save_npy` the shard's outputs are also `NNNNN.npy`, row for
row with `NNNNN.parquet` (`NpyRows`); the stats file names the model and its content hash.

Where the batches run: in the worker process (multiprocessing, Spark tasks; one model per process,
`load`), or, with distributor=ray, in an actor pool that the distributor starts (`ModelConfig.pool`,
`distributors/ray.py`): the shard tasks decode and preprocess, the actors hold the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from ..errors import ConfigError
from ..naming import shard_file
from ..options import ModelLayout
from ..registry import import_path
from ..sample import Sample, StageError, Status
from ..storage import Folder, accessing, filesystem
from .base import BatchStage
from .resize import ResizeError, decode, onto_white
from .resize import inspect as inspect_image

if TYPE_CHECKING:
    from ..config import Config, ModelConfig

NPY_SUFFIX = ".npy"
WEIGHTS_SUFFIX = ".data"  # NAME.onnx.data: the weights that torch.onnx.export keeps apart from NAME.onnx
COPY_CHUNK = 1 << 22
Runner = Callable[[np.ndarray], np.ndarray]  # a batch of preprocessed images -> a batch of outputs


@dataclass(frozen=True)
class ModelInfo:
    """What `resolve` found out about the model before any work; recorded in every stats file."""

    name: str  # the .onnx file's name, or module:Class
    sha256: str  # of the .onnx file's bytes, or of the Python class's module source
    dim: int  # values per output row
    output: str | None  # the ONNX output kept

    def as_dict(self, column: str) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "column": column, "dim": self.dim, "output": self.output}


def is_python_model(model: str) -> bool:
    return not (model.endswith(".onnx") or "/" in model)


def preprocess(
    pixels: np.ndarray,
    size: int,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    layout: ModelLayout = ModelLayout.NCHW,
) -> np.ndarray:
    """One image's model input from 8-bit BGR or BGRA pixels (OpenCV's order; alpha is composited onto
    white): the center square (the shorter side's length), resized to `size` x `size` (area when shrinking,
    bicubic when enlarging), RGB scaled to [0, 1], then `(x - mean) / std` per channel; float32, CHW or HWC.
    Cropping first is the shorter side resized then center cropped, without resizing what the crop drops
    (a 1 x 20000 image would otherwise become 224 x 4,480,000 pixels)."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side != size:
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
        square = cv2.resize(square, (size, size), interpolation=interpolation)
    if square.shape[2] == 4:
        square = onto_white(square)
    # each channel through a table of its 256 values: (v - mean * 255) / (std * 255) == (v / 255 - mean) / std,
    # the same float32 arithmetic as on the whole image, at about half its cost (measured: bench/RESULTS.md)
    levels = np.arange(256, dtype=np.float32)
    tables = [(levels - np.float32(m) * np.float32(255)) / (np.float32(s) * np.float32(255)) for m, s in zip(mean, std)]
    nchw = layout is ModelLayout.NCHW
    values = np.empty((3, size, size) if nchw else (size, size, 3), np.float32)
    for channel, table in enumerate(tables):  # RGB from OpenCV's BGR
        np.take(table, square[:, :, 2 - channel], out=values[channel] if nchw else values[:, :, channel], mode="clip")
    return values


def input_shape(config: ModelConfig) -> tuple[int, int, int]:
    size = config.model_input_size
    return (3, size, size) if config.model_layout is ModelLayout.NCHW else (size, size, 3)


# --- the model itself: loading and running ------------------------------------------------------


class OnnxModel:
    """An ONNX model on onnxruntime: one session, called from any thread (`InferenceSession.run` is
    thread-safe); `threads` bounds its intra-op threads (spinning off: idle threads must not burn CPU)."""

    def __init__(self, path: str, output: str | None, threads: int, gpu: bool):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(
                "model: an .onnx model needs onnxruntime: pip install 'img2dataset-ng[model]' (or onnxruntime-gpu)"
            ) from None

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types
            raise ConfigError(f"model: onnxruntime cannot load it: {str(error).strip().splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"model: it must take one input (a batch of images); it takes {len(inputs)}")
        self.input = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in outputs:
            raise ConfigError(f"model_output {output!r} is not an output of the model; its outputs: {outputs}")
        self.output = output or outputs[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: batch})[0]


def _fetch_model(config: ModelConfig) -> tuple[str, str, str | None]:
    """A local path of the .onnx file, the sha256 of its bytes and of its weights file, and the temporary
    folder to remove once it is loaded. Weights kept apart (torch's exporter writes `NAME.onnx.data` beside
    `NAME.onnx`) are read from beside it, so a model on an object store is copied to a temporary folder
    with them; a local one is used in place."""
    url = config.model or ""
    with accessing(url, "read model"):
        fs, path = filesystem(url, config.storage_options)
        files = [path] + [path + WEIGHTS_SUFFIX] * fs.exists(path + WEIGHTS_SUFFIX)
        digest = hashlib.sha256()
        local = path if isinstance(fs, LocalFileSystem) else None
        folder = None if local else tempfile.mkdtemp(prefix="img2dataset-ng-model-")
        for name in files:
            with fs.open(name, "rb") as source:
                copy = None if folder is None else open(os.path.join(folder, name.rsplit("/", 1)[-1]), "wb")
                try:
                    while chunk := source.read(COPY_CHUNK):
                        digest.update(chunk)
                        if copy is not None:
                            copy.write(chunk)
                finally:
                    if copy is not None:
                        copy.close()
        return local or os.path.join(folder or "", path.rsplit("/", 1)[-1]), digest.hexdigest(), folder


class PythonModel:
    """`module:Class`, made once with no arguments; called with one batch at a time (the user's code need not
    be thread-safe; a torch model uses its own threads within a call)."""

    def __init__(self, name: str):
        try:
            cls = import_path(name)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"model {name!r} cannot be imported: {error}") from None
        self.model = cls()
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.model(batch)


def _source_hash(name: str) -> str:
    """The sha256 of the module source of `module:Class` (of the name when there is no source file)."""
    try:
        source = inspect.getsource(importlib.import_module(name.partition(":")[0])).encode("utf-8")
    except (OSError, TypeError):  # a compiled module
        source = name.encode("utf-8")
    return hashlib.sha256(source).hexdigest()


_LOADED: dict[tuple[Any, ...], tuple[Runner, str]] = {}  # the process's models: loaded once, kept
_LOADING = threading.Lock()


def load(config: ModelConfig, threads: int | None = None, gpu: bool = True) -> tuple[Runner, str]:
    """The model of `config` and its content hash, loaded once per process (every shard the process runs
    shares it). `threads`: onnxruntime's intra-op threads, by default the process's share of the cores."""
    if threads is None:  # Spark runs a task per core: one thread each; multiprocessing's processes share the cores
        share = (os.cpu_count() or 1) // max(1, config.processes_per_machine)
        threads = max(1, share if config.distributor == "multiprocessing" else 1)
    key = (config.model, config.model_output, config.storage_options, threads, gpu)
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = _open(config, threads, gpu)
    runner, sha256 = _LOADED[key]
    if config.info is not None and sha256 != config.info.sha256:  # the shards of one run have one model
        raise ConfigError(
            f"model {config.model} changed since the run started (sha256 {sha256}, was {config.info.sha256})"
        )
    return runner, sha256


def _open(config: ModelConfig, threads: int, gpu: bool) -> tuple[Runner, str]:
    model = config.model or ""
    if is_python_model(model):
        return PythonModel(model), _source_hash(model)
    path, sha256, copied = _fetch_model(config)
    try:
        return OnnxModel(path, config.model_output, threads, gpu), sha256
    finally:  # the session holds what it needs
        if copied is not None:
            shutil.rmtree(copied, ignore_errors=True)


def run_batch(runner: Runner, batch: np.ndarray) -> np.ndarray:
    """The model's output for `batch` as float32 rows, one per image."""
    output = np.asarray(runner(batch))
    if output.ndim == 0 or output.shape[0] != len(batch):
        raise ValueError(f"the model gave an output of shape {output.shape} for a batch of {len(batch)} images")
    return output.reshape(len(batch), -1).astype(np.float32, copy=False)


def resolve(config: Config) -> Config:
    """Before any work: load the model here (on the CPU), run it once on a blank image, and record its name,
    content hash and output size in the config. A model that cannot be read, loaded or run fails now."""
    m = config.model
    if m.model is None or m.info is not None:
        return config
    runner, sha256 = _open(m, threads=1, gpu=False)  # not kept: the driver runs no batches
    try:
        row = run_batch(runner, np.zeros((1, *input_shape(m)), np.float32))
    except Exception as error:  # noqa: BLE001 - whatever the model raises, the user gets one line
        raise ConfigError(
            f"model {m.model!r} fails on a blank {'x'.join(map(str, input_shape(m)))} input "
            f"(model_input_size, model_layout): {type(error).__name__}: {error}"
        ) from None
    name = m.model if is_python_model(m.model) else m.model.rstrip("/").rsplit("/", 1)[-1]
    info = ModelInfo(name, sha256, row.shape[1], getattr(runner, "output", None))
    return dataclasses.replace(config, model=dataclasses.replace(m, info=info))


# --- the stage --------------------------------------------------------------------------------


class ModelStage(BatchStage):
    """Preprocess each sample on its thread; run the model on batches; one output row per sample."""

    failure = Status.FAILED_TO_RESIZE  # img2dataset's status for every failure after the download

    def __init__(self, config: Config):
        super().__init__()
        self.config = config.model
        self.batch_size = self.config.model_batch_size
        self.max_pixels = config.resize.max_image_pixels
        self.info: ModelInfo = self.config.info or resolve(config).model.info
        self._runner: Runner | None = self.config.pool  # the Ray actor pool, when there is one

    def columns(self) -> list[pa.Field]:
        return [pa.field(self.config.model_column, pa.list_(pa.float32(), self.info.dim))]

    def prepare(self, sample: Sample) -> np.ndarray:
        pixels = sample.pixels
        try:
            if pixels is None:  # disable_all_reencoding: the stored bytes were not decoded yet
                inspect_image(sample.data or b"", self.max_pixels)
                pixels = decode(sample.data or b"")
            c = self.config
            return preprocess(pixels, c.model_input_size, c.model_mean, c.model_std, c.model_layout)
        except ResizeError as error:
            raise StageError(f"model input: {error}") from None
        except Exception as error:  # noqa: BLE001 - OpenCV's errors on odd pixels: this sample fails alone
            raise StageError(f"model input: {type(error).__name__}: {error}") from None

    def process_batch(self, samples: Sequence[Sample], prepared: Sequence[Any]) -> None:
        if self._runner is None:
            self._runner = load(self.config)[0]
        rows = run_batch(self._runner, np.stack(prepared))
        column = self.config.model_column
        for sample, row in zip(samples, rows):
            sample.fields[column] = row  # float32 (4 bytes a value where a list of floats takes 32)


class NpyRows:
    """A shard's model outputs as `NNNNN.npy`: float32, one row per metadata row, in the same order; NaN
    where a sample has no output (it failed). Written before the stats file, atomically."""

    def __init__(self, column: str, dim: int):
        self.column, self.dim = column, dim
        self.rows: list[Any] = []

    def add(self, sample: Sample) -> None:
        self.rows.append(sample.fields.get(self.column, sample.row.get(self.column)))

    def array(self) -> np.ndarray:
        out = np.full((len(self.rows), self.dim), np.nan, np.float32)
        for index, row in enumerate(self.rows):
            if row is not None:
                out[index] = row
        return out

    def write(self, folder: Folder, shard_name: str) -> None:
        buffer = io.BytesIO()
        np.save(buffer, self.array())
        folder.write(shard_file(shard_name, NPY_SUFFIX), buffer.getvalue())


def saves_npy(config: Config) -> bool:
    return config.model.model is not None and config.model.model_save_npy


def extra_suffixes(config: Config) -> tuple[str, ...]:
    """What a shard has besides its writer's files and its stats file: `.npy` with model_save_npy."""
    return (NPY_SUFFIX,) if saves_npy(config) else ()


def npy_rows(config: Config) -> NpyRows | None:
    """The collector of `NNNNN.npy` when model_save_npy is set."""
    return NpyRows(config.model.model_column, config.model.info.dim) if saves_npy(config) else None
