"""A folder on any fsspec filesystem: everything that reads or writes output goes through it.

A location is normalised once, here, into a `Folder` (a url plus storage options); its filesystem
is resolved once per process, on first use, and nothing else inspects which filesystem it is.
A `Folder` pickles as its url and options, so workers rebuild the filesystem on their side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import fsspec

from .errors import ConfigError, InputError, StorageError

_PROTOCOLS = set(fsspec.available_protocols()) | {"file", "local"}
# what to install for a filesystem whose package is missing (others: fsspec's own message)
INSTALL_HINTS = {
    "s3": "img2dataset-ng[s3]",
    "s3a": "img2dataset-ng[s3]",
    "gcs": "gcsfs",
    "gs": "gcsfs",
}


def filesystem(url: str, storage_options: Mapping[str, Any] = ()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of `url`.

    `storage_options` are the filesystem's options (`{"endpoint_url": ...}`), or options keyed by
    protocol (`{"s3": {...}, "gcs": {...}}`) when a run reads from one store and writes to another.
    """
    options = dict(storage_options)
    protocol = fsspec.utils.get_protocol(url)
    if options and all(isinstance(v, dict) for v in options.values()) and set(options) <= _PROTOCOLS:
        options = options.get(protocol, {})
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as error:
        hint = f"pip install '{INSTALL_HINTS[protocol]}'" if protocol in INSTALL_HINTS else str(error)
        raise StorageError(f"{url}: {protocol}:// needs a package that is not installed: {hint}") from None


@contextlib.contextmanager
def accessing(url: str, doing: str) -> Iterator[None]:
    """Turn a failure to reach `url` (missing credentials, no endpoint, no permission, a file where a
    folder should be) into one StorageError line that names the url, the cause and what to check."""
    try:
        yield
    except (ConfigError, InputError, StorageError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - whatever the filesystem raises, the user gets one line
        cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise StorageError(
            f"cannot {doing} {url}: {type(error).__name__}{': ' + cause if cause else ''} "
            "(check the path, its permissions, and the credentials or storage_options of its filesystem)"
        ) from error


class Folder:
    """A folder given by an fsspec url and storage options; equal folders compare and hash equal."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        self.url = url.rstrip("/") or url
        self.storage_options = tuple(sorted(dict(storage_options).items()))
        self._resolved: tuple[fsspec.AbstractFileSystem, str] | None = None

    def _resolve(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self._resolved is None:
            fs, root = filesystem(self.url, dict(self.storage_options))
            self._resolved = fs, root.rstrip("/")
        return self._resolved

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._resolve()[0]

    @property
    def root(self) -> str:
        return self._resolve()[1]

    def __reduce__(self) -> tuple[type, tuple[str, tuple[tuple[str, Any], ...]]]:
        return Folder, (self.url, self.storage_options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folder) and (self.url, self.storage_options) == (other.url, other.storage_options)

    def __hash__(self) -> int:
        return hash((self.url, repr(self.storage_options)))

    def __repr__(self) -> str:
        return f"Folder({self.url!r})"

    def path(self, *names: str) -> str:
        return "/".join([self.root, *names])

    def child(self, name: str) -> Folder:
        return Folder(f"{self.url}/{name}", self.storage_options)

    def open(self, name: str, mode: str = "rb") -> IO:
        return self.fs.open(self.path(name), mode)

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(name), data)

    def makedirs(self, *names: str) -> None:
        self.fs.makedirs(self.path(*names), exist_ok=True)

    def exists(self) -> bool:
        return self.fs.exists(self.root)

    def contains(self, other: Folder) -> bool:
        """Whether `other` is this folder or lies inside it (on the same filesystem)."""
        if type(self.fs) is not type(other.fs):
            return False
        return other.root == self.root or other.root.startswith(self.root.rstrip("/") + "/")

    def names(self) -> list[str]:
        """Base names of the entries directly in the folder ([] when it does not exist)."""
        fs, root = self._resolve()
        fs.invalidate_cache(root)  # object stores cache listings; this one must be fresh
        if not fs.exists(root):
            return []
        return sorted(entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(root, detail=False))

    def remove(self, names: Iterable[str]) -> None:
        """Delete these entries (files or folders) where they exist, in the order given."""
        fs = self.fs
        fs.invalidate_cache(self.root)
        for name in names:
            if fs.exists(self.path(name)):
                fs.rm(self.path(name), recursive=True)

    def remove_all(self) -> None:
        """Delete the folder with everything in it, if it exists."""
        if self.exists():
            self.fs.rm(self.root, recursive=True)
