"""Shard writers: the contract and registry (`base.py`), one file per output format, codecs apart."""

from .base import ShardWriter, register_writer

__all__ = ["ShardWriter", "register_writer"]
