"""img2dataset-ng: turn lists of image urls into training datasets, a drop-in successor of img2dataset."""

from .config import ConfigError
from .main import Summary, download
from .reader import InputError

__all__ = ["ConfigError", "InputError", "Summary", "download"]
__version__ = "0.1.0"
