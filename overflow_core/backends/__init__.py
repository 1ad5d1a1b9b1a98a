"""Backends: one per architecture family, behind the :class:`~overflow_core.backends.base.Backend` protocol.

:func:`resolve_backend` picks the backend from ``model.config.model_type``; the engine never branches on model type.
"""

from __future__ import annotations

from typing import Any

from overflow_core.backends.base import Backend, Session, State
from overflow_core.backends.dynamic import DynamicCacheBackend
from overflow_core.errors import UnsupportedModelError

__all__ = ["SUPPORTED", "Backend", "DynamicCacheBackend", "Session", "State", "resolve_backend"]

# model_type -> (token_by_token, attention). Every entry is exercised by the equivalence tests on a tiny model.
SUPPORTED: dict[str, tuple[bool, bool]] = {
    "mamba2": (False, False),
    "mamba": (True, False),
    "falcon_mamba": (True, False),
    "bamba": (False, True),
    "zamba2": (False, True),
    "falcon_h1": (False, True),
}
PLANNED = {"recurrent_gemma": "RecurrentGemma", "rwkv": "RWKV"}


def resolve_backend(model: Any) -> Backend:
    """The backend for ``model`` (a Hugging Face causal LM), or :class:`UnsupportedModelError` naming what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in SUPPORTED:
        token_by_token, attention = SUPPORTED[model_type]
        return DynamicCacheBackend(model, name=model_type, token_by_token=token_by_token, attention=attention)
    supported = ", ".join(sorted(SUPPORTED))
    if model_type in PLANNED:
        raise UnsupportedModelError(
            f"model_type {model_type!r} ({PLANNED[model_type]}) keeps its state outside a DynamicCache and has no backend "
            f"yet; supported: {supported}"
        )
    raise UnsupportedModelError(
        f"model: expected a recurrent or hybrid causal LM with a supported model_type ({supported}), got "
        f"{model_type!r} ({type(model).__name__}); OPRM needs a fixed-size recurrent state"
    )
