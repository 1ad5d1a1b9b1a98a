"""One small error hierarchy. Messages name the argument, what was expected and what came."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "IndexBusyError",
    "IndexConflictError",
    "IndexCorruptError",
    "IndexError_",
    "IndexMismatchError",
    "InputError",
    "ModelLoadError",
    "OverflowError_",
    "UnsupportedModelError",
]


class OverflowError_(Exception):  # noqa: N801 - the trailing underscore avoids shadowing the builtin OverflowError
    """Base class of every error Overflow raises on purpose."""


class ConfigError(OverflowError_, ValueError):
    """A setting is out of range or inconsistent."""


class InputError(OverflowError_, ValueError):
    """A question, document or file the user gave cannot be used."""


class ModelLoadError(OverflowError_, OSError):
    """A model folder is missing, incomplete or corrupt."""


class UnsupportedModelError(OverflowError_, TypeError):
    """The model has no recurrent state that a backend knows how to handle."""


class IndexError_(OverflowError_):  # noqa: N801 - avoids shadowing the builtin IndexError
    """Base class of state-index errors."""


class IndexMismatchError(IndexError_, ValueError):
    """An index was built with another model, tokenizer or settings."""


class IndexCorruptError(IndexError_, OSError):
    """An index on disk is truncated or its checksums do not match."""


class IndexBusyError(IndexError_, TimeoutError):
    """Another writer held an index folder's lock for longer than the save was willing to wait."""


class IndexConflictError(IndexError_, RuntimeError):
    """An index folder was changed by another writer since this index was loaded or saved there."""
