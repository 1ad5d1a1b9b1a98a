"""Overflow: model-native retrieval for recurrent LLMs (OPRM, arXiv 2505.07793).

Example:
    >>> from overflow_core import OPRM
    >>> oprm = OPRM.from_pretrained()
    >>> oprm.answer("What is the locker number of Alice Baker?", ["... Alice Baker's locker number is 4412. ..."]).text
    '4412'
"""

from overflow_core.config import OPRMConfig
from overflow_core.engine import OPRM
from overflow_core.errors import (
    ConfigError,
    DuplicateSourceError,
    IndexBusyError,
    IndexChangedError,
    IndexConflictError,
    IndexCorruptError,
    IndexMismatchError,
    InputError,
    ModelLoadError,
    OverflowCoreError,
    StateIndexError,
    UnsupportedModelError,
)
from overflow_core.index import StateIndex
from overflow_core.prompting import PromptTemplate
from overflow_core.types import Answer, Chunk, ChunkScore, Document, Ranking, Timings, Usage

__version__ = "0.1.0"

__all__ = [
    "OPRM",
    "Answer",
    "Chunk",
    "ChunkScore",
    "ConfigError",
    "Document",
    "DuplicateSourceError",
    "IndexBusyError",
    "IndexChangedError",
    "IndexConflictError",
    "IndexCorruptError",
    "IndexMismatchError",
    "InputError",
    "ModelLoadError",
    "OPRMConfig",
    "OverflowCoreError",
    "PromptTemplate",
    "Ranking",
    "StateIndex",
    "StateIndexError",
    "Timings",
    "UnsupportedModelError",
    "Usage",
    "__version__",
]


def __getattr__(name: str) -> object:
    """Deprecated names (``OverflowError_``, ``IndexError_``), resolved with a DeprecationWarning by :mod:`.errors`."""
    from overflow_core import errors

    return getattr(errors, name)
