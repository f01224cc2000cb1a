"""The errors a user catches: bad options and unreadable input, both raised before any work starts."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad option value; the message names the option and what it allows."""


class InputError(ValueError):
    """The url list cannot be read as asked: missing file or column, unreadable content."""
