"""The tar codec: the members we write by hand are exactly what Python's tarfile writes."""

from __future__ import annotations

import io
import tarfile

import pytest

from img2dataset_ng.writers.codecs.tar import tar_member


@pytest.mark.parametrize("name, size", [("000000012.jpg", 1234), ("000010005.json", 512), ("0.txt", 0), ("é.txt", 7)])
def test_tar_member_is_byte_identical_to_tarfile(name, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o444
    expected = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8") + data + b"\0" * (-len(data) % 512)
    assert tar_member(name, data, 1_700_000_000) == expected
    with tarfile.open(fileobj=io.BytesIO(tar_member(name, data, 0) + b"\0" * 1024)) as tar:
        (member,) = tar.getmembers()
        assert member.name == name and tar.extractfile(member).read() == data


def test_names_longer_than_ustar_allows_are_refused():
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        tar_member("k" * 101, b"", 0)
