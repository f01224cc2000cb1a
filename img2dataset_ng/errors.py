"""The errors a user catches: bad options, unreadable input, unusable folders and a folder another
run is using (all raised before any work starts), and an interrupted run."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad option value; the message names the option and what it allows."""


class InputError(ValueError):
    """The url list cannot be read as asked: missing file or column, unreadable content."""


class StorageError(ValueError):
    """A folder cannot be read or written: the message names it, the cause and what to check."""


class FolderLocked(StorageError):
    """Another run holds the output folder's lock; the message names it and how to proceed."""


class Interrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); `summary` says what was done. Finished shards are kept:
    running the same command again finishes the job."""

    def __init__(self, summary: object):
        super().__init__("interrupted")
        self.summary = summary
