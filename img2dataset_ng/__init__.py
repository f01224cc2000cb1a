"""img2dataset-ng: turn lists of image urls into training datasets, a drop-in successor of img2dataset.

The extension points, each one file plus one registration: a stage (`Stage` or `BatchStage`,
`register_stage`), a writer (`ShardWriter`, `register_writer`), a distributor (`register_distributor`).
"""

from .config import Config
from .distributors import register_distributor
from .duplicates import find_duplicates
from .errors import ConfigError, FolderLocked, InputError, Interrupted, StorageError
from .main import download, run
from .sample import Sample, StageError, Status
from .stages import BatchStage, Stage, register_stage
from .stats import Summary
from .version import __version__
from .writers import ShardWriter, register_writer

__all__ = [
    "BatchStage",
    "Config",
    "ConfigError",
    "FolderLocked",
    "InputError",
    "Interrupted",
    "Sample",
    "ShardWriter",
    "Stage",
    "StageError",
    "StorageError",
    "Status",
    "Summary",
    "download",
    "find_duplicates",
    "register_distributor",
    "register_stage",
    "register_writer",
    "__version__",
    "run",
]
