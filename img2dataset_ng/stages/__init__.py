"""Per-sample stages: the contract (`base.py`), one file per step of the download path, and how the
path is assembled from the configuration (`pipeline.py`)."""

from .base import BatchStage, Stage, register_stage, run_stages

__all__ = ["BatchStage", "Stage", "register_stage", "run_stages"]
