"""Every transformers-version workaround, and nothing else.

transformers 5.x returns recurrent state as a ``DynamicCache`` at ``out.cache`` whose layers are ``LinearAttentionLayer``
(``conv_states`` / ``recurrent_states`` dicts), ``DynamicLayer`` (``keys`` / ``values``) or both. These helpers turn such a
cache into a flat ``{name: tensor}`` dict (the batch on dim 0) and back, so the rest of Overflow never touches cache internals.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = [
    "cache_from_output",
    "cache_to_tensors",
    "forward_accepts",
    "is_kv",
    "is_sliding_kv",
    "single_token_batch_broken",
    "tensors_to_cache",
]


def cache_from_output(out: Any) -> Any:
    """The cache a forward returned (``out.cache`` in 5.x, ``past_key_values`` / ``cache_params`` before)."""
    for name in ("cache", "past_key_values", "cache_params"):
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    raise TypeError(f"the model's output {type(out).__name__} carries no cache; was use_cache=True passed?")


def is_sliding_kv(name: str) -> bool:
    """Whether a state tensor named by :func:`cache_to_tensors` holds the keys/values of a sliding-window layer (they
    cover only the last ``min(consumed, window - 1)`` positions, not every consumed one)."""
    return name.endswith((".sk", ".sv"))


def is_kv(name: str) -> bool:
    """Whether a state tensor named by :func:`cache_to_tensors` holds attention keys/values ``[B, heads, T, dim]``."""
    return name.endswith((".k", ".v", ".sk", ".sv"))


def cache_to_tensors(cache: Any) -> dict[str, torch.Tensor]:
    """Flatten a ``DynamicCache`` into ``{"<layer>.conv<j>" | "<layer>.ssm<j>" | "<layer>.k" | "<layer>.v": tensor}``.

    Keys/values of a sliding-window layer are named ``"<layer>.sk"`` / ``"<layer>.sv"``: they hold the last
    ``min(consumed, window - 1)`` positions only, so selecting and stacking rows treats them apart (see
    :func:`is_sliding_kv`).
    """
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
            kind = "s" if getattr(layer, "is_sliding", False) else ""
            tensors[f"{i}.{kind}k"] = keys
            tensors[f"{i}.{kind}v"] = layer.values
    for i, t in enumerate(getattr(cache, "linear_cache", ())):  # MiniMaxCache: K^T V of each lightning-attention layer
        if isinstance(t, torch.Tensor):
            tensors[f"{i}.lin"] = t
    return tensors


def tensors_to_cache(config: Any, tensors: dict[str, torch.Tensor], seq_length: int = 0) -> Any:
    """Build a fresh ``DynamicCache`` for ``config`` holding ``tensors`` (as made by :func:`cache_to_tensors`).

    ``seq_length`` is the number of positions the cache has consumed (padding included): what a sliding-window layer
    and a linear layer count as their length (the attention mask of the next step is built from it).
    The tensors are used as they are (not copied): the cache will update them in place.
    """
    from transformers import DynamicCache

    if getattr(config, "model_type", None) == "minimax":
        from transformers.cache_utils import DummyLayer
        from transformers.models.minimax.modeling_minimax import MiniMaxCache

        # The lightning-attention layers keep K^T V in ``linear_cache``; their slot in ``layers`` must be a DummyLayer,
        # else the mask builder takes the (empty) slot 0 for the first attention layer and counts 0 consumed positions.
        cache: Any = MiniMaxCache()
        cache.layers = [
            cache.layer_class_to_replicate() if kind == "full_attention" else DummyLayer()
            for kind in config.layer_types
        ]
    else:
        cache = DynamicCache(config=config)
    for name, t in tensors.items():
        index, kind = name.split(".", 1)
        if kind == "lin":
            cache.set_linear_cache(int(index), t)
            continue
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
        elif kind in ("k", "sk"):
            if kind == "sk" and not getattr(layer, "is_sliding", False):
                raise KeyError(f"state tensor {name!r}: layer {index} of this model is not a sliding-window layer")
            layer.keys = t
            layer.values = tensors[f"{index}.{kind[:-1]}v"]
            layer.is_initialized = True
            if kind == "sk":
                layer.cumulative_length = seq_length
                layer._sliding_window_tensor = layer._sliding_window_tensor.to(t.device)
        elif kind not in ("v", "sv"):
            raise KeyError(f"state tensor {name!r}: unknown kind {kind!r}")
        if getattr(layer, "device", None) is None:
            layer.device = t.device
        if hasattr(layer, "dtype") and getattr(layer, "dtype", None) is None and t.is_floating_point():
            layer.dtype = t.dtype
    for layer in cache.layers:
        counter = getattr(layer, "cumulative_length_linear", None)
        if isinstance(counter, torch.Tensor):
            layer.cumulative_length_linear = torch.tensor(seq_length, dtype=counter.dtype, device=layer.device)
    return cache


_FORWARD_PARAMETERS: dict[type, frozenset[str]] = {}


def forward_accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` explicitly (looked up once per model class)."""
    cls = type(model)
    if cls not in _FORWARD_PARAMETERS:
        _FORWARD_PARAMETERS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return name in _FORWARD_PARAMETERS[cls]


def single_token_batch_broken(model: Any) -> bool:
    """transformers' RWKV (v4, checked on 5.25): a one-token step from a state with more than one row broadcasts the
    token shift (``[B, 1, H]`` against ``[B, H]``) into ``[B, B, H]`` and returns wrong logits without an error (measured:
    off by 6-7 on a tiny model). Such steps must be run one row at a time."""
    return type(model).__module__.startswith("transformers.models.rwkv.")
