"""One run per output folder: the lock file `_img2dataset_ng.lock`, taken before a run changes anything.

Two runs on one folder do every shard twice and race on `_tmp`, the stats files and the run record.
So the first thing a run does with its output folder is to take its lock; a second run refuses at
once with one line that names the holder (or, with `wait_for_lock=True`, waits until it is free).

The lock file is JSON: a random token, the holder's pid, host, start time and a heartbeat, which a
thread rewrites every `HEARTBEAT` seconds while the run lasts. A holder that stopped without
releasing it (`kill -9`, a lost machine) is detected in one of two ways, and its lock is taken over
after a warning that names it:
- its heartbeat is older than `STALE` seconds (any filesystem, any host; clocks may differ by less);
- it ran on this machine (same host, boot and pid namespace) and its process is gone: taken over at
  once, without waiting for the heartbeat to age.

Taking the lock is as atomic as the filesystem allows:
- local disk: the content is written to a file of its own and hard-linked to the lock name, which
  fails if the name exists (atomic also on NFS); a stale lock is taken over by renaming it aside
  (only one run's rename succeeds) and checking that what moved is the stale lock;
- object stores and other fsspec filesystems: a conditional create (`If-None-Match: *` on S3, which
  AWS, GCS, MinIO and moto honour; an exclusive open elsewhere), a stale lock replaced by a
  conditional write on its ETag (`If-Match`) where there is one. The lock is read back after every
  write: the token there must be ours, which also catches a store that ignores the conditions.
The heartbeat checks that the lock still holds our token before it rewrites it, and says so loudly
when another run took it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from .errors import FolderLocked
from .naming import LOCK_FILE
from .storage import Folder

logger = logging.getLogger(__name__)
HEARTBEAT = 10.0  # seconds between two rewrites of the lock by its holder
STALE = 120.0  # seconds without a heartbeat after which a lock is taken over
POLL = 2.0  # seconds between two looks at a held lock, with wait_for_lock
WAITING_NOTE = 60.0  # seconds between two "still waiting" lines


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the run that holds it (None fields: an unreadable lock file)."""

    token: str | None = None
    pid: int | None = None
    host: str | None = None
    started: float | None = None
    heartbeat: float | None = None
    boot: str | None = None
    pid_namespace: str | None = None
    process_start: str | None = None

    @classmethod
    def parse(cls, data: bytes | None) -> Holder:
        try:
            fields = json.loads(data or b"")
            return cls(**{name: fields.get(name) for name in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError):
            return cls()

    def describe(self) -> str:
        if self.token is None:
            return "an unknown run (the lock file is empty or unreadable)"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started or 0))
        return f"pid {self.pid} on host {self.host}, started {started}, heartbeat {self.age():.0f}s ago"

    def age(self) -> float:
        return time.time() - (self.heartbeat or 0.0)

    def is_dead(self) -> bool:
        """Whether the holder was a process of this machine (and pid namespace) that no longer runs."""
        me = _identity()
        if self.pid is None or (self.host, self.boot, self.pid_namespace) != (
            me["host"],
            me["boot"],
            me["pid_namespace"],
        ):
            return False
        if self.boot is None or self.pid_namespace is None:
            return False  # cannot tell this machine from another of the same name
        return not _alive(self.pid, self.process_start)


class FolderLock:
    """The lock of `folder`: `acquire()` (refuses at once, or waits with `wait=True`), `release()`.

    Also a context manager. The heartbeat thread runs from acquire to release.
    """

    def __init__(self, folder: Folder, wait: bool = False):
        self.folder, self.wait = folder, wait
        self.token = uuid.uuid4().hex
        self.started = time.time()
        path = folder.path(LOCK_FILE)
        self.file: _LockFile = (
            _LocalLockFile(path) if isinstance(folder.fs, LocalFileSystem) else _StoreLockFile(folder)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def content(self) -> bytes:
        return json.dumps(
            {"token": self.token, "started": self.started, "heartbeat": time.time(), **_identity()}
        ).encode()

    def acquire(self) -> None:
        waiting_since = next_note = None
        while True:
            holder = self._try_once()
            if holder is None:
                if waiting_since is not None:
                    logger.warning(
                        "%s is free: this run goes on (waited %.0fs)", self.folder.url, time.time() - waiting_since
                    )
                break
            if not self.wait:
                raise FolderLocked(
                    f"output_folder {self.folder.url} is in use by another run: {holder.describe()}. Wait for it "
                    "to end, or pass wait_for_lock=True (--wait_for_lock) to wait for it; if it is dead, its lock "
                    f"is taken over once its heartbeat is {STALE:.0f}s old (or delete {self.folder.path(LOCK_FILE)})"
                )
            now = time.time()
            if waiting_since is None or now >= next_note:
                waited = "" if waiting_since is None else f" (waiting for {now - waiting_since:.0f}s)"
                logger.warning("waiting for %s, in use by %s%s", self.folder.url, holder.describe(), waited)
                waiting_since, next_note = waiting_since or now, now + WAITING_NOTE
            time.sleep(POLL)
        self._thread = threading.Thread(target=self._beat, daemon=True, name="img2dataset-ng-lock")
        self._thread.start()

    def _try_once(self) -> Holder | None:
        """Take the lock if it is free or stale; else who holds it."""
        for _ in range(3):  # a lock released between our create and our read: create again
            if self.file.create(self.content()):
                return self._confirmed()
            data, version = self.file.read()
            if data is not None:
                break
        else:
            return Holder()
        holder = Holder.parse(data)
        stale = self._stale(holder, version)
        if stale is None:
            return holder
        logger.warning("%s: taking over the lock of %s: %s", self.folder.url, holder.describe(), stale)
        if self.file.replace(version, self.content()):
            return self._confirmed()
        return Holder.parse(self.file.read()[0])  # another run took it over first

    def _stale(self, holder: Holder, version: Version) -> str | None:
        """Why the lock of `holder` may be taken over, or None while it is live."""
        if holder.token is None:
            age = time.time() - version.modified if version.modified else 0.0
            return f"it was last written {age:.0f}s ago (limit {STALE:.0f}s)" if age > STALE else None
        if holder.age() > STALE:
            return f"its heartbeat is older than the {STALE:.0f}s limit"
        if holder.is_dead():
            return "that process is no longer running on this machine"
        return None

    def _confirmed(self) -> Holder | None:
        """None when the lock, read back, holds our token: it is ours."""
        holder = Holder.parse(self.file.read()[0])
        return None if holder.token == self.token else holder

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(HEARTBEAT):
            try:
                data, version = self.file.read()
                holder = Holder.parse(data)
                if holder.token != self.token:
                    logger.error(
                        "%s: this run lost its lock to %s: two runs may now write to the folder",
                        self.folder.url,
                        holder.describe(),
                    )
                    return
                self.file.refresh(version, self.content())
                failing = False
            except Exception as error:  # noqa: BLE001 - a heartbeat that fails once (a full disk, a throttled store) is retried
                if not failing:
                    logger.warning(
                        "%s: could not refresh the lock: %s: %s", self.folder.url, type(error).__name__, error
                    )
                failing = True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours; never raises."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        try:
            if Holder.parse(self.file.read()[0]).token == self.token:
                self.file.remove()
        except Exception as error:  # noqa: BLE001 - the run's own outcome matters more; a stale lock is taken over later
            logger.warning("%s: could not remove the lock: %s: %s", self.folder.url, type(error).__name__, error)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Version:
    """Which lock file was read: to replace exactly that one (`tag`), and its age when unreadable."""

    tag: Any = None
    modified: float | None = None


class _LockFile:
    def create(self, data: bytes) -> bool:
        """Make the lock file with `data` if there is none; False when there is one."""
        raise NotImplementedError

    def read(self) -> tuple[bytes | None, Version]:
        """The lock file's content (None: there is none) and which version it is."""
        raise NotImplementedError

    def replace(self, version: Version, data: bytes) -> bool:
        """Replace the lock file read as `version` with `data`; False when it changed since."""
        raise NotImplementedError

    def refresh(self, version: Version, data: bytes) -> None:
        """Rewrite our own lock (read as `version`) with `data`."""
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError


class _LocalLockFile(_LockFile):
    def __init__(self, path: str):
        self.path = path

    def _write_aside(self, data: bytes) -> str:
        aside = f"{self.path}.{uuid.uuid4().hex[:12]}"
        with open(aside, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return aside

    def create(self, data: bytes) -> bool:
        aside = self._write_aside(data)
        try:
            os.link(aside, self.path)  # the lock appears with its content, or not at all
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: an exclusive create, then the content
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside)

    def read(self) -> tuple[bytes | None, Version]:
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                return f.read(), Version((stat.st_ino, stat.st_mtime_ns, stat.st_size), stat.st_mtime)
        except FileNotFoundError:
            return None, Version()

    def replace(self, version: Version, data: bytes) -> bool:
        aside = f"{self.path}.{uuid.uuid4().hex[:12]}.stale"
        try:
            os.rename(self.path, aside)  # of several runs taking over, one moves the lock aside
        except FileNotFoundError:
            return self.create(data)
        stat = os.stat(aside)
        if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != version.tag:  # we moved a fresh lock: put it back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return self.create(data)

    def refresh(self, version: Version, data: bytes) -> None:
        os.replace(self._write_aside(data), self.path)

    def remove(self) -> None:
        os.unlink(self.path)


class _StoreLockFile(_LockFile):
    def __init__(self, folder: Folder):
        self.fs, self.path = folder.fs, folder.path(LOCK_FILE)
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        self.etags = bool(protocols & {"s3", "s3a"})  # s3fs passes If-Match through to PutObject

    def create(self, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError):  # no exclusive create here: the read-back decides
            self.fs.invalidate_cache(self.path)
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
            return True

    def read(self) -> tuple[bytes | None, Version]:
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)  # before the content: a newer content then fails the If-Match
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None, Version()
        modified = info.get("LastModified") or info.get("mtime") or info.get("created")
        modified = modified.timestamp() if hasattr(modified, "timestamp") else modified
        return data, Version(info.get("ETag"), float(modified) if modified is not None else None)

    def replace(self, version: Version, data: bytes) -> bool:
        if self.etags and version.tag:
            try:
                self.fs.pipe_file(self.path, data, IfMatch=version.tag)
                return True
            except OSError:  # 412: the lock changed since it was read
                return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)
        return self.create(data)

    def refresh(self, version: Version, data: bytes) -> None:
        if not self.replace(version, data):
            raise OSError("the lock changed while it was refreshed")

    def remove(self) -> None:
        self.fs.rm_file(self.path)


def _identity() -> dict[str, Any]:
    """What tells this process apart: pid and host, and what tells whether a pid of this machine still
    names the same process (boot id, pid namespace, the process's start time)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": _readlink("/proc/self/ns/pid"),
        "process_start": _process_start(os.getpid()),
    }


def _alive(pid: int, process_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return process_start is None or _process_start(pid) in (None, process_start)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (a reused pid has another)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if stat else None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
