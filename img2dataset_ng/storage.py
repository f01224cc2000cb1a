"""A folder on any fsspec filesystem: everything that reads or writes output goes through it.

A location is normalised once, here, into a `Folder` (a url plus storage options); its filesystem
is resolved once per process, on first use, and nothing else inspects which filesystem it is.
A `Folder` pickles as its url and options, so workers rebuild the filesystem on their side.

Every output file becomes visible only when complete (`Folder.atomic`, `Folder.atomic_folder`):
a killed or failing run must not leave a `00042.tar` that `tarfile`, `webdataset` or a `*.tar` glob
reads as a whole shard. How depends on the filesystem:

- where a file is visible while it is written (local disk, HDFS, memory, sftp, and any filesystem
  not known to be an object store), it is written as `_partial_00042.tar.<token>` and renamed
  when complete; a folder (the `files` layout) likewise. Local files are fsynced before the rename,
  so that a stats file never outlives, after a power cut, the data it vouches for.
- on object stores (`OBJECT_STORES`: s3fs, gcsfs, adlfs, ...) an upload becomes visible only when
  it is closed: the file is written to its final name, `commit` closes it and `abort` cancels the
  upload. A rename there would be a copy of the whole shard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import ConfigError, InputError, StorageError
from .naming import partial_name

logger = logging.getLogger(__name__)

_PROTOCOLS = set(fsspec.available_protocols()) | {"file", "local"}
# what to install for a filesystem whose package is missing (others: fsspec's own message)
INSTALL_HINTS = {
    "s3": "img2dataset-ng[s3]",
    "s3a": "img2dataset-ng[s3]",
    "gcs": "gcsfs",
    "gs": "gcsfs",
}
# filesystems whose files are uploads made visible, whole, when they are closed
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oci", "oss", "cos", "tos", "r2"})
READ_THREADS = 32  # small files read at once by `read_many` (an object store answers each in ~10-50 ms)


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
        stripped = url.rstrip("/")
        # `file:///` must not become `file:` (which fsspec reads as the working directory): a root stays one
        self.url = url if not stripped or stripped.endswith(":") else stripped
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

    @property
    def writes_in_place(self) -> bool:
        """Whether a file being written shows under its name before it is closed (all but object stores)."""
        protocols = self.fs.protocol
        return not ({protocols} if isinstance(protocols, str) else set(protocols)) & OBJECT_STORES

    def atomic(self, name: str) -> AtomicFile:
        """A new file `name` that appears, complete, on `commit()` (and never, after `abort()`)."""
        return AtomicFile(self, name)

    def atomic_folder(self, name: str) -> AtomicFolder:
        """A new folder `name`, filled through `.folder`, that appears whole on `commit()` where the
        filesystem can rename folders; on object stores each file appears as it is written."""
        return AtomicFolder(self, name)

    def write(self, name: str, data: bytes, atomic: bool = True) -> None:
        """Write a whole file: visible complete or not at all (one upload on object stores, a rename
        elsewhere); `atomic=False` for files inside a folder that is itself made atomically."""
        if atomic and self.writes_in_place:
            with self.atomic(name) as f:
                f.write(data)
        else:
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
        return sorted(self.sizes())

    def sizes(self) -> dict[str, int]:
        """{base name: size in bytes} of the entries directly in the folder ({} when it does not exist):
        one listing, which also gives the sizes (on object stores, without reading any file)."""
        fs, root = self._resolve()
        fs.invalidate_cache(root)  # object stores cache listings; this one must be fresh
        if not fs.exists(root):
            return {}
        return {
            entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
            for entry in fs.ls(root, detail=True)
        }

    def read_many(self, names: Iterable[str]) -> dict[str, bytes | None]:
        """The content of each of `names` (a file that cannot be read: None), many requests at once
        (fsspec's batch on async filesystems, else `READ_THREADS` threads): reading the stats files of
        100k shards on an object store is latency-bound, not bandwidth-bound."""

        local = isinstance(self.fs, LocalFileSystem)

        def read(name: str) -> bytes | None:
            try:
                if local:  # a plain read: fsspec's file object costs more than the read itself
                    with open(self.path(name), "rb") as f:
                        return f.read()
                return self.fs.cat_file(self.path(name))
            except (OSError, ValueError):
                return None

        names = list(names)
        if local:  # the page cache answers at once: threads would only contend for the GIL
            return {name: read(name) for name in names}
        if getattr(self.fs, "async_impl", False) and names:  # s3fs, gcsfs: ~128 requests at once on one event loop
            paths = {self.path(name): name for name in names}
            found = self.fs.cat(list(paths), on_error="return")
            return {paths[path]: data if isinstance(data, bytes) else None for path, data in found.items()}
        with ThreadPoolExecutor(max(1, min(READ_THREADS, len(names)))) as pool:
            return dict(zip(names, pool.map(read, names)))

    def remove(self, names: Iterable[str]) -> None:
        """Delete these entries (files or folders) where they exist, in the order given."""
        fs = self.fs
        fs.invalidate_cache(self.root)
        for name in names:
            if fs.exists(self.path(name)):
                fs.rm(self.path(name), recursive=True)

    def remove_if_empty(self) -> None:
        """Delete the folder if it exists and holds nothing; never raises (a clean-up)."""
        with contextlib.suppress(Exception):
            if self.exists() and not self.names():
                self.fs.rmdir(self.root)

    def remove_all(self) -> None:
        """Delete the folder with everything in it, if it exists."""
        if self.exists():
            self.fs.rm(self.root, recursive=True)

    def has(self, name: str) -> bool:
        """Whether entry `name` exists now (asked afresh: object stores cache listings)."""
        self.fs.invalidate_cache(self.path(name))
        return self.fs.exists(self.path(name))

    def files(self, name: str) -> list[str]:
        """The files under folder `name` (subfolders included), as paths relative to it; [] when it is missing."""
        base = self.path(name)
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        return sorted(path[len(base) :].lstrip("/") for path in self.fs.find(base))

    def move(self, source: str, target: str) -> None:
        """Move file `source` over `target` (paths in this folder), replacing it: see `move_many`."""
        self.move_many([(source, target)])

    def move_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Move each file (source, target) over its target (paths in this folder), in any order: a rename
        where the filesystem has one (atomic on local disk); on object stores, server-side copies (each
        replaces its object whole, many at once), then the sources deleted. A source that is gone was moved
        already: moving again does nothing, so interrupted moves are finished by running them again."""
        pairs = list(pairs)
        fs = self.fs
        if isinstance(fs, LocalFileSystem):
            for source, target in pairs:
                _move_local(self.path(source), self.path(target))
            return
        fs.invalidate_cache(self.root)
        if self.writes_in_place:  # HDFS, memory, ...: renames
            for source, target in pairs:
                if fs.exists(self.path(source)):
                    _rename(fs, self.path(source), self.path(target), local=False)
            return
        if pairs:
            sources, targets = [self.path(s) for s, _ in pairs], [self.path(t) for _, t in pairs]
            fs.copy(sources, targets, on_error="ignore")  # ignored: a source that is gone (moved before)
            fs.rm(sources)


def _move_local(source: str, target: str) -> None:
    if os.path.exists(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)


def _token() -> str:
    return uuid.uuid4().hex[:12]


def _quietly(action: str, path: str, fn: Any, *args: Any) -> None:
    """Clean-up after a failure: its own error is logged, never raised, so that it cannot hide the
    error that caused the clean-up."""
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001 - see the docstring
        logger.warning("could not %s %s while cleaning up: %s: %s", action, path, type(error).__name__, error)


def _drop(file: IO, upload: bool) -> None:
    """Close `file` without committing it: an object store's `upload` is cancelled, a local file's
    handle closed even when its last buffered bytes cannot be written (a full disk)."""
    cancel = getattr(file, "discard", None)
    if upload and cancel is not None:
        cancel()
    if hasattr(file, "forced"):  # an fsspec upload: closing must not flush (and so commit) what is left
        file.forced = True
    file.close()


class AtomicFile:
    """A file written to `folder` that appears under `name` complete, on `commit()`, or not at all.

    `with folder.atomic(name) as f:` commits when the block ends and aborts when it raises. `file`
    is the writable binary file. `abort()` never raises: it closes the handle and removes what was
    written (also what was committed, when the shard fails after that).
    """

    def __init__(self, folder: Folder, name: str):
        self.folder, self.name = folder, name
        self.final = folder.path(name)
        self.temp = folder.path(partial_name(name, _token())) if folder.writes_in_place else None
        self.local = isinstance(folder.fs, LocalFileSystem)
        self.state = "open"
        self.file: IO[bytes] = folder.fs.open(self.temp or self.final, "wb")

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            raise self._named(error) from None

    def commit(self) -> None:
        if self.state != "open":
            return
        try:
            if self.local:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if self.temp is not None:
                _rename(self.folder.fs, self.temp, self.final, self.local)
        except OSError as error:
            self.abort()
            raise self._named(error) from None
        except BaseException:
            self.abort()
            raise
        self.state = "committed"

    def _named(self, error: OSError) -> OSError:
        """A write error that names the file (a full disk's ENOSPC names none), same class and errno."""
        if error.filename is not None or error.errno is None:
            return error
        return type(error)(error.errno, error.strerror, self.final)

    def abort(self) -> None:
        state, self.state = self.state, "aborted"
        if state == "open":
            _quietly("close", self.temp or self.final, _drop, self.file, self.temp is None)
            if self.temp is not None:
                _quietly("remove", self.temp, _remove, self.folder.fs, self.temp)
        elif state == "committed":
            _quietly("remove", self.final, _remove, self.folder.fs, self.final)

    def __enter__(self) -> IO[bytes]:
        return self.file

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class AtomicFolder:
    """A folder written through `.folder` that appears under `name` whole on `commit()`, where the
    filesystem renames folders; on object stores (no folders, no renames) it is written in place,
    each file appearing complete as it is written. `abort()` never raises and removes what was written."""

    def __init__(self, parent: Folder, name: str):
        self.parent, self.name = parent, name
        self.temp = partial_name(name, _token()) if parent.writes_in_place else None
        self.folder = parent.child(self.temp or name)
        self.folder.makedirs()
        self.state = "open"

    def commit(self) -> None:
        if self.state != "open":
            return
        if self.temp is not None:
            try:
                fs = self.parent.fs
                _rename(fs, self.parent.path(self.temp), self.parent.path(self.name), isinstance(fs, LocalFileSystem))
            except BaseException:
                self.abort()
                raise
        self.state = "committed"

    def abort(self) -> None:
        state, self.state = self.state, "aborted"
        if state != "aborted":
            path = self.parent.path(self.temp if state == "open" and self.temp else self.name)
            _quietly("remove", path, _remove, self.parent.fs, path)


def _rename(fs: fsspec.AbstractFileSystem, source: str, target: str, local: bool) -> None:
    """Move a complete file or folder to its final name, replacing what is there (an older attempt's)."""
    if local:
        try:
            os.replace(source, target)  # atomic, and replaces a file
            return
        except OSError:  # a folder onto a non-empty folder: the older one goes first
            if not os.path.isdir(target):
                raise
        _remove(fs, target)
        os.replace(source, target)
        return
    if fs.exists(target):  # HDFS and others refuse to rename onto an existing entry
        fs.rm(target, recursive=True)
    fs.mv(source, target, recursive=True)


def _remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)
