"""The input side: url lists read in every format (`formats.py`) and cut into shards (`shards.py`)."""

from .formats import UrlListReader
from .shards import Shard, Sharder

__all__ = ["Shard", "Sharder", "UrlListReader"]
