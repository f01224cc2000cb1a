"""A folder on any fsspec filesystem: everything that reads or writes output goes through it.

A location is normalised once, here, into a `Folder` (a url plus storage options); its filesystem
is resolved once per process, on first use, and nothing else inspects which filesystem it is.
A `Folder` pickles as its url and options, so workers rebuild the filesystem on their side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import IO, Any

import fsspec

_PROTOCOLS = set(fsspec.available_protocols()) | {"file", "local"}


def filesystem(url: str, storage_options: Mapping[str, Any] = ()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path of `url`.

    `storage_options` are the filesystem's options (`{"endpoint_url": ...}`), or options keyed by
    protocol (`{"s3": {...}, "gcs": {...}}`) when a run reads from one store and writes to another.
    """
    options = dict(storage_options)
    if options and all(isinstance(v, dict) for v in options.values()) and set(options) <= _PROTOCOLS:
        options = options.get(fsspec.utils.get_protocol(url), {})
    return fsspec.core.url_to_fs(url, **options)


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

    def empty(self) -> None:
        self.remove_all()
        self.makedirs()
