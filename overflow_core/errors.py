"""One small error hierarchy. Messages name the argument, what was expected and what came."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = [
    "ConfigError",
    "DuplicateSourceError",
    "IndexBusyError",
    "IndexChangedError",
    "IndexConflictError",
    "IndexCorruptError",
    "IndexMismatchError",
    "InputError",
    "ModelLoadError",
    "OverflowCoreError",
    "StateIndexError",
    "UnsupportedModelError",
]


class OverflowCoreError(Exception):
    """Base class of every error Overflow raises on purpose: ``except OverflowCoreError`` catches them all."""


class ConfigError(OverflowCoreError, ValueError):
    """A setting is out of range or inconsistent."""


class InputError(OverflowCoreError, ValueError):
    """A question, document or file the user gave cannot be used."""


class DuplicateSourceError(InputError):
    """Documents whose source an index already holds were added to it: ``sources`` names them."""

    def __init__(self, message: str, sources: tuple[str, ...]) -> None:
        super().__init__(message)
        self.sources = sources


class ModelLoadError(OverflowCoreError, OSError):
    """A model folder is missing, incomplete or corrupt."""


class UnsupportedModelError(OverflowCoreError, TypeError):
    """The model has no recurrent state that a backend knows how to handle."""


class StateIndexError(OverflowCoreError):
    """Base class of state-index errors."""


class IndexMismatchError(StateIndexError, ValueError):
    """An index was built with another model, tokenizer or settings."""


class IndexCorruptError(StateIndexError, OSError):
    """An index on disk is truncated or its checksums do not match."""


class IndexBusyError(StateIndexError, TimeoutError):
    """Another writer held an index folder's lock for longer than the save was willing to wait."""


class IndexChangedError(StateIndexError, RuntimeError):
    """An index was changed underneath a reader: another save replaced it and deleted files the reader still needed
    (only where readers cannot hold leases, or when writers commit faster than a load can start). Load it again."""


class IndexConflictError(StateIndexError, RuntimeError):
    """An index folder was changed by another writer since this index was loaded or saved there."""


def install_extra(extra: str) -> str:
    """How to install an optional extra, for error messages: Overflow installs from a clone (it is not on PyPI)."""
    return f"pip install -e '.[{extra}]' in the Overflow clone (keep torch==2.13.0 on a CPU machine)"


_DEPRECATED = {"OverflowError_": "OverflowCoreError", "IndexError_": "StateIndexError"}  # old name -> new, until 0.3


def __getattr__(name: str) -> Any:
    """The old names of the base classes, kept for one release with a DeprecationWarning."""
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"overflow_core.{name} is deprecated and will be removed in 0.3; use {new}", DeprecationWarning, stacklevel=2
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
