"""Every transformers-version workaround, and nothing else.

transformers 5.x returns recurrent state as a ``DynamicCache`` at ``out.cache`` whose layers are ``LinearAttentionLayer``
(``conv_states`` / ``recurrent_states`` dicts), ``DynamicLayer`` (``keys`` / ``values``) or both. These helpers turn such a
cache into a flat ``{name: tensor}`` dict (the batch on dim 0) and back, so the rest of Overflow never touches cache internals.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["cache_from_output", "cache_to_tensors", "forward_accepts", "tensors_to_cache"]


def cache_from_output(out: Any) -> Any:
    """The cache a forward returned (``out.cache`` in 5.x, ``past_key_values`` / ``cache_params`` before)."""
    for name in ("cache", "past_key_values", "cache_params"):
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    raise TypeError(f"the model's output {type(out).__name__} carries no cache; was use_cache=True passed?")


def cache_to_tensors(cache: Any) -> dict[str, torch.Tensor]:
    """Flatten a ``DynamicCache`` into ``{"<layer>.conv<j>" | "<layer>.ssm<j>" | "<layer>.k" | "<layer>.v": tensor}``."""
    tensors: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(cache.layers):
        for j, t in getattr(layer, "conv_states", {}).items():
            if isinstance(t, torch.Tensor):
                tensors[f"{i}.conv{j}"] = t
        for j, t in getattr(layer, "recurrent_states", {}).items():
            if isinstance(t, torch.Tensor):
                tensors[f"{i}.ssm{j}"] = t
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.numel() > 0:
            tensors[f"{i}.k"] = keys
            tensors[f"{i}.v"] = layer.values
    return tensors


def tensors_to_cache(config: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Build a fresh ``DynamicCache`` for ``config`` holding ``tensors`` (as made by :func:`cache_to_tensors`).

    The tensors are used as they are (not copied): the cache will update them in place.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for name, t in tensors.items():
        index, kind = name.split(".", 1)
        layer: Any = cache.layers[int(index)]
        if kind.startswith("conv"):
            j = int(kind[4:])
            layer.conv_states[j] = t
            layer.is_conv_states_initialized[j] = True
            layer.has_previous_state[j] = True
            layer.conv_kernel_size[j] = t.shape[-1]
        elif kind.startswith("ssm"):
            j = int(kind[3:])
            layer.recurrent_states[j] = t
            layer.is_recurrent_states_initialized[j] = True
            layer.has_previous_state[j] = True
        elif kind == "k":
            layer.keys = t
            layer.values = tensors[f"{index}.v"]
            layer.is_initialized = True
        elif kind != "v":
            raise KeyError(f"state tensor {name!r}: unknown kind {kind!r}")
        if getattr(layer, "device", None) is None:
            layer.device = t.device
        if hasattr(layer, "dtype") and getattr(layer, "dtype", None) is None and t.is_floating_point():
            layer.dtype = t.dtype
    return cache


_FORWARD_PARAMETERS: dict[type, frozenset[str]] = {}


def forward_accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` explicitly (looked up once per model class)."""
    cls = type(model)
    if cls not in _FORWARD_PARAMETERS:
        _FORWARD_PARAMETERS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return name in _FORWARD_PARAMETERS[cls]
