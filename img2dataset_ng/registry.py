"""Named extension points: the writers, the distributors and the extra stages each have a registry.

A name resolves to, in this order: an object registered in this process, a built-in (a dotted
path imported on first use, with the package it needs and how to install it), an entry point of
the registry's group (for third-party packages), or a `module:attribute` path. A name that
resolves to nothing, or whose package is missing, is a `ConfigError` naming the option.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Builtin:
    target: str  # "module:attribute.path"
    package: str | None = None  # what it needs beyond our own dependencies
    install: str | None = None  # how to get it: pip install '<install>'


def import_path(target: str) -> Any:
    """The object at `module:attribute.path`."""
    module, _, attribute = target.partition(":")
    return functools.reduce(getattr, attribute.split("."), importlib.import_module(module))


class Registry(Generic[T]):
    def __init__(self, option: str, entry_point_group: str, builtins: dict[str, Builtin]):
        self.option = option
        self.entry_point_group = entry_point_group
        self.builtins = builtins
        self.registered: dict[str, T] = {}

    def register(self, name: str, obj: T) -> None:
        self.registered[name] = obj

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        return {entry.name: entry for entry in importlib.metadata.entry_points(group=self.entry_point_group)}

    def names(self) -> list[str]:
        """Built-ins in their order, then registered names, then entry points."""
        return list(dict.fromkeys([*self.builtins, *self.registered, *sorted(self._entry_points())]))

    def get(self, name: str) -> T:
        if name in self.registered:
            return self.registered[name]
        if name in self.builtins:
            builtin = self.builtins[name]
            if builtin.package is not None and importlib.util.find_spec(builtin.package) is None:
                raise ConfigError(
                    f"{self.option} {name!r} needs the {builtin.package} package: pip install '{builtin.install}'"
                )
            return import_path(builtin.target)
        entry_points = self._entry_points()
        if name in entry_points:
            return entry_points[name].load()
        if ":" in name:
            try:
                return import_path(name)
            except (ImportError, AttributeError) as error:
                raise ConfigError(f"{self.option} {name!r} cannot be imported: {error}") from None
        names = self.names()
        allowed = f"one of {', '.join(names)}" if names else "a registered name"
        raise ConfigError(f"{self.option} must be {allowed}, or a module:attribute path; got {name!r}")
