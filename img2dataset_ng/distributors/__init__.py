"""Where shards run: the contract, `run_shards` and the registry (`base.py`), one file per backend."""

from .base import Distributor, register_distributor, run_shards

__all__ = ["Distributor", "register_distributor", "run_shards"]
