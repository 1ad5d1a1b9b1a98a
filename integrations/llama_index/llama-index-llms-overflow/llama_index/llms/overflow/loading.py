"""Loading engines for the Overflow classes' ``from_pretrained`` constructors: one engine per model and settings.

Every ``from_pretrained`` (the LLM's, the retriever's, the re-ranker's) goes through :func:`shared_engine`, so built with
the same model and settings they share one :class:`~overflow_core.OPRM`: the weights load once, and the LLM continues
from the states the retriever leaves in that engine's state cache. The engine itself comes from the core's loader,
:meth:`OPRM.from_pretrained`; every keyword it accepts passes through unchanged.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from overflow_core import OPRM, OPRMConfig

__all__ = ["engine_keywords", "shared_engine", "split_settings"]

_ENGINES: weakref.WeakValueDictionary[tuple[Any, ...], OPRM] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def _path_parameter() -> str:
    """The name of ``OPRM.from_pretrained``'s first parameter (the model's name or path)."""
    return next(iter(inspect.signature(OPRM.from_pretrained).parameters))


def engine_keywords() -> frozenset[str]:
    """The keywords the core's loader takes besides the model: its named options (``device``, ``dtype``, ...) and,
    when it takes ``**settings``, every :class:`OPRMConfig` field."""
    params = inspect.signature(OPRM.from_pretrained).parameters
    path = _path_parameter()
    named = {
        name
        for name, p in params.items()
        if name != path and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        named |= {f.name for f in fields(OPRMConfig)}
    return frozenset(named)


def split_settings(owner: str, kwargs: Mapping[str, Any], own: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``kwargs`` into the class's own options and the engine's settings; anything else is a mistake.

    Raises:
        TypeError: a keyword that is neither one of ``own`` nor an engine setting, named with both lists.
    """
    own = set(own)
    engine = engine_keywords()
    unknown = sorted(set(kwargs) - own - engine)
    if unknown:
        raise TypeError(
            f"{owner}: unknown keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"expected one of its own options ({', '.join(sorted(own))}) or an engine setting "
            f"({', '.join(sorted(engine))})"
        )
    mine = {k: v for k, v in kwargs.items() if k in own}
    return mine, {k: v for k, v in kwargs.items() if k not in own}


def shared_engine(name_or_path: str | Path | None = None, **settings: Any) -> OPRM:
    """The engine for ``name_or_path`` (``None``: the bundled model) with ``settings``, loaded once per process.

    An engine stays shared while something uses it (the cache holds it weakly), so two ``from_pretrained`` calls with
    the same arguments give classes on one engine; different settings give different engines.
    """
    key = (None if name_or_path is None else str(name_or_path), tuple(sorted((k, repr(v)) for k, v in settings.items())))
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = OPRM.from_pretrained(name_or_path, **settings)
            _ENGINES[key] = engine
    return engine
