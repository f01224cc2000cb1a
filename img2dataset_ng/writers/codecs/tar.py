"""POSIX ustar members written directly: a fixed 512-byte header layout, one write per sample.

Byte-identical to what Python's tarfile writes for the same member, and the archive ends like
tarfile's: two zero blocks, padded to a 10 KiB record.
"""

from __future__ import annotations

TAR_BLOCK, TAR_RECORD = 512, 20 * 512
# every member's modification time: fixed, so that the same run gives the same bytes (2024-01-01)
MTIME = 1_704_067_200


def tar_member(name: str, data: bytes, mtime: int = MTIME) -> bytes:
    """One regular file of a POSIX ustar archive: its 512-byte header, the data, zero padding."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    header = bytearray(
        encoded.ljust(100, b"\0")
        + b"0000444\0"  # mode: read-only for all
        + b"0000000\0" * 2  # uid, gid
        + b"%011o\0" % len(data)
        + b"%011o\0" % mtime
        + b" " * 8  # the checksum, counted as spaces while it is computed
        + b"0"  # a regular file
        + b"\0" * 100  # link name
        + b"ustar\x0000"
        + b"\0" * (32 + 32 + 8 + 8 + 155 + 12)  # user and group names, device numbers, prefix, padding
    )
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + data + b"\0" * (-len(data) % TAR_BLOCK)


def tar_end(size: int) -> bytes:
    """What closes an archive of `size` bytes of members: two zero blocks, then zeros to a whole record."""
    end = size + 2 * TAR_BLOCK
    return b"\0" * (end + -end % TAR_RECORD - size)
