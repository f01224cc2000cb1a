"""Hash stages: check the downloaded bytes against an expected hash, and record their hash."""

from __future__ import annotations

import hashlib

import pyarrow as pa

from ..options import HashType
from ..sample import VERIFY_HASH, Sample, StageError, Status
from .base import Stage

HASH_COLUMNS = {hash_type: pa.field(hash_type.value, pa.string()) for hash_type in HashType}


def digest(hash_type: HashType, data: bytes) -> str:
    return hashlib.new(hash_type.value, data).hexdigest()


class VerifyHash(Stage):
    """Fails the sample ("hash mismatch") when the downloaded bytes' hash differs from its verify_hash column."""

    failure = Status.FAILED_TO_DOWNLOAD

    def __init__(self, hash_type: HashType):
        self.hash_type = hash_type

    def __call__(self, sample: Sample) -> None:
        if digest(self.hash_type, sample.source) != sample.row.get(VERIFY_HASH):
            raise StageError("hash mismatch")


class ComputeHash(Stage):
    """The hash of the downloaded bytes in a column named after the hash type (`sha256`); null on
    failed rows, as img2dataset 1.47 writes them."""

    def __init__(self, hash_type: HashType):
        self.hash_type = hash_type

    def columns(self) -> list[pa.Field]:
        return [HASH_COLUMNS[self.hash_type]]

    def __call__(self, sample: Sample) -> None:
        sample.fields[self.hash_type.value] = digest(self.hash_type, sample.source)
