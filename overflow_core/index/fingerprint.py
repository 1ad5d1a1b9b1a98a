"""Fingerprints: what identifies the model, tokenizer and settings an index was built with, and how two differ.

An index's states are valid only for the exact model weights, tokenizer and prompt settings that made them; the manifest
stores these fingerprints and loading compares them with the engine's (:func:`differences` names every mismatch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from overflow_core.chunking import CHUNKER_VERSION
from overflow_core.index.engine_api import Engine

__all__ = [
    "canonical",
    "differences",
    "model_info",
    "settings_info",
    "sha256",
    "tensor_digest",
    "tokenizer_info",
    "weights_digest",
]

_SAMPLES = 4096  # values per tensor in the cheap check that guards the digest cache (see tensor_digest)


_THREADS = min(8, os.cpu_count() or 1)  # hashlib releases the GIL: tensors are hashed in parallel


_RUNTIME_CONFIG_KEYS = frozenset(
    {"transformers_version", "torch_dtype", "dtype", "use_cache", "output_attentions", "output_hidden_states",
     "return_dict", "name_or_path"}
)  # fmt: skip


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain(value: Any) -> Any:
    """``value`` as plain JSON: tuples as lists, non-finite floats and unknown objects as strings (configs hold ``inf``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _bytes(tensor: torch.Tensor) -> Any:
    flat = tensor.detach().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.cpu().contiguous().view(torch.uint8).numpy()


def _samples(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    if flat.numel() > _SAMPLES:
        flat = flat[torch.arange(_SAMPLES, device=flat.device) * (flat.numel() - 1) // (_SAMPLES - 1)]
    return bytes(_bytes(flat))


_cache: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], str]] = {}
_cache_lock = threading.Lock()


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of every byte of ``tensor`` (any shape, any device).

    Remembered per tensor object in this process, and hashed again when its autograd version counter (bumped by every
    in-place operation, ``load_state_dict`` included), storage address, dtype, shape or device changes, or when 4,096
    evenly spaced values differ from those seen. What the memory trusts: writes that bypass the version counter
    (through ``tensor.data``, NumPy views or raw storage) and leave those 4,096 values unchanged are not seen until the
    process restarts.
    """
    key = (tensor._version, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride(), str(tensor.device))
    probe = sha256(_samples(tensor))
    with _cache_lock:
        hit = _cache.get(id(tensor))
    if hit is not None and hit[0]() is tensor and hit[1] == (*key, probe):
        return hit[2]
    digest = hashlib.sha256(_bytes(tensor)).hexdigest()
    ident = id(tensor)
    with _cache_lock:
        _cache[ident] = (weakref.ref(tensor, lambda _: _cache.pop(ident, None)), (*key, probe), digest)
    return digest


def weights_digest(
    named: Iterable[tuple[str, torch.Tensor | Callable[[], torch.Tensor]]], threads: int = _THREADS
) -> str:
    """One sha256 over every tensor's name, dtype, shape and the sha256 of all its bytes, in name order.

    A tensor may be given as a function that returns it (loaded when its turn comes). Tensors are hashed in ``threads``
    threads, a few at a time, so memory stays bounded (a model on a GPU is copied to the CPU a tensor at a time)."""
    items = sorted(named, key=lambda item: item[0])

    def one(item: tuple[str, torch.Tensor | Callable[[], torch.Tensor]]) -> str:
        name, value = item
        tensor = value() if callable(value) else value
        return f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{tensor_digest(tensor)}\n"

    total = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        window = max(1, threads) * 2
        for start in range(0, len(items), window):
            for line in pool.map(one, items[start : start + window]):
                total.update(line.encode())
    return total.hexdigest()


def model_info(engine: Engine) -> dict[str, Any]:
    """What identifies the model: its architecture config, its weights' dtype and a hash of every byte of its weights.

    The hash (:func:`weights_digest`) covers each parameter and buffer's name, dtype, shape and all of its values:
    changing any single weight changes it. Its cost is one pass of sha256 over the weights (measured by
    ``python -m overflow_core.bench.fingerprint_cost``), paid once per process: later calls reuse each tensor's digest
    while the tensor is unchanged (see :func:`tensor_digest`).
    """
    model = engine.model
    config = {
        k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k not in _RUNTIME_CONFIG_KEYS
    }
    config = _plain(config)
    with torch.inference_mode():
        weights = weights_digest(model.state_dict(keep_vars=True).items())
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters()), "unknown")
    return {
        "name": engine.name,
        "backend": engine.backend.name,
        "dtype": dtype,
        "config_sha256": sha256(canonical(config)),
        "weights_sha256": weights,
        "config": config,
    }


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What identifies the tokenizer: its full definition (vocabulary, merges, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)  # runtime settings, changed by calls, not part of the tokenizer
        definition.pop("padding", None)
    else:
        definition = sorted(tokenizer.get_vocab().items())
    special = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": sha256(canonical({"definition": definition, "special": special})),
    }


def settings_info(engine: Engine) -> dict[str, Any]:
    """The settings that decide which chunks exist and which tokens precede the question."""
    return {
        "chunk_tokens": engine.config.chunk_tokens,
        "overlap_tokens": engine.config.overlap_tokens,
        "chunker": CHUNKER_VERSION,
        "template": engine.template.to_dict(),
        "not_found": engine.config.not_found,
        "prefix_ids": list(engine.prompt_ids.prefix),
        "infix_ids": list(engine.prompt_ids.infix),
    }


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a manifest's model/tokenizer/settings and the engine's."""
    out: list[str] = []
    s_model, c_model = stored["model"], current["model"]
    if s_model["backend"] != c_model["backend"]:
        out.append(f"model family: index {s_model['backend']!r}, engine {c_model['backend']!r}")
    elif s_model["config_sha256"] != c_model["config_sha256"]:
        keys = sorted(
            k for k in {*s_model["config"], *c_model["config"]} if s_model["config"].get(k) != c_model["config"].get(k)
        )
        shown = ", ".join(
            f"{k} index={_short(s_model['config'].get(k), 30)} engine={_short(c_model['config'].get(k), 30)}"
            for k in keys[:4]
        )
        out.append(f"model config: {shown}{' ...' if len(keys) > 4 else ''}")
    if s_model["dtype"] != c_model["dtype"]:
        out.append(f"model dtype: index {s_model['dtype']}, engine {c_model['dtype']}")
    elif (
        s_model["weights_sha256"] != c_model["weights_sha256"] and s_model["config_sha256"] == c_model["config_sha256"]
    ):
        out.append(
            f"model weights: index built with weights {s_model['weights_sha256'][:12]} ({s_model['name']!r}), engine has "
            f"{c_model['weights_sha256'][:12]} ({c_model['name']!r}); same architecture, other checkpoint"
        )
    s_tok, c_tok = stored["tokenizer"], current["tokenizer"]
    if s_tok["sha256"] != c_tok["sha256"]:
        out.append(
            f"tokenizer: index {s_tok['class']} with {s_tok['vocab_size']} tokens ({s_tok['sha256'][:12]}), engine "
            f"{c_tok['class']} with {c_tok['vocab_size']} tokens ({c_tok['sha256'][:12]})"
        )
    s_set, c_set = stored["settings"], current["settings"]
    for key in sorted({*s_set, *c_set}):
        if s_set.get(key) != c_set.get(key):
            out.append(f"{key}: index {_short(s_set.get(key))}, engine {_short(c_set.get(key))}")
    return out
