"""Mamba-2's chunked scan (SSD) in plain torch: the maths of transformers' reference path, with less copying.

transformers without ``mamba_ssm`` runs ``mamba2_chunk_scan`` of each Mamba-2 family's modeling module (mamba2, bamba,
zamba2, falcon_h1, nemotron_h, granitemoehybrid). It copies ``B`` and ``C`` once per head (``repeat_interleave``),
contracts them per head, and builds every decay matrix through ``expand`` + ``masked_fill`` + ``cumsum``; on a CPU those
copies take about a third of a forward. :func:`chunk_scan` computes the ``C B^T`` scores once per group, the within-chunk
decays from one cumulative sum, and carries the state across chunks in a short loop.

:func:`install` routes a modeling module's ``mamba2_chunk_scan`` through a dispatcher that calls :func:`chunk_scan` only
inside :func:`fast_scan` blocks (a context variable, so per thread and per task) and transformers' own function
everywhere else: other models in the process, and other threads, are untouched. Backends open a :func:`fast_scan` block
around their forwards; ``tests/test_ssd.py`` ties :func:`chunk_scan` to transformers' function (outputs, final states and
gradients) and the equivalence tests tie every backend to the slow reference path, which runs transformers' own scan.
"""

from __future__ import annotations

import contextvars
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn import functional

__all__ = ["chunk_scan", "fast_scan", "install"]

SCAN_NAME = "mamba2_chunk_scan"  # the function every Mamba-2 family module of transformers 5.x defines
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("overflow_fast_ssd_scan", default=False)
_LOCK = threading.Lock()


def _chunks(t: torch.Tensor, pad: int, size: int) -> torch.Tensor:
    """``[b, L, ...] -> [b, c, size, ...]``, zero-padded at the end to a whole number of chunks."""
    if pad:
        t = functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.shape[0], -1, size, *t.shape[2:])


def chunk_scan(  # transformers' argument names (A, B, C, D): the mixer passes D by keyword
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,  # noqa: N803
    B: torch.Tensor,  # noqa: N803
    C: torch.Tensor,  # noqa: N803
    chunk_size: int,
    D: torch.Tensor | None = None,  # noqa: N803
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan with transformers' ``mamba2_chunk_scan`` signature.

    Args:
        hidden_states: ``x [b, L, h, p]``.
        dt: ``[b, L, h]``, before ``dt_bias`` and softplus.
        A: ``[h]``, negative.
        B, C: ``[b, L, g, n]``, ``g`` dividing ``h``.
        chunk_size: ``Q``, the block length of the scan.
        D: ``[h]``, the skip connection, or None.
        dt_bias: ``[h]`` or None.
        initial_states: ``[b, h, p, n]`` or None (zeros).
        return_final_states: also return the state after the last token, ``[b, h, p, n]``.

    Returns:
        ``y [b, L, h, p]`` (float32), and the final state when asked for.
    """
    b, length, h, p = hidden_states.shape
    g, n = B.shape[2], B.shape[3]
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = functional.softplus(dt)
    dt = torch.clamp(dt.float(), min=dt_limit[0], max=dt_limit[1])
    x = hidden_states.float()
    pad = (chunk_size - length % chunk_size) % chunk_size
    q = chunk_size

    xdt = _chunks(x * dt[..., None], pad, q).permute(0, 1, 3, 2, 4)  # [b, c, h, Q, p]
    a = _chunks(A.float() * dt, pad, q).permute(0, 1, 3, 2)  # [b, c, h, Q]
    b_chunks = _chunks(B.float(), pad, q).permute(0, 1, 3, 2, 4)  # [b, c, g, Q, n]
    c_chunks = _chunks(C.float(), pad, q).permute(0, 1, 3, 2, 4)  # [b, c, g, Q, n]
    nc = xdt.shape[1]
    a_cum = torch.cumsum(a, dim=-1)  # [b, c, h, Q]

    # 1. within each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(a_cum_l - a_cum_s) xdt_s, scores shared by a group's heads
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~causal, float("-inf")))  # [b,c,h,Q,Q]
    scores = c_chunks @ b_chunks.transpose(-1, -2)  # [b, c, g, Q, Q]
    weights = decay.view(b, nc, g, h // g, q, q) * scores[:, :, :, None]
    y = (weights.view(b, nc, h, q, q) @ xdt).view(b, nc, h, q, p)

    # 2. each chunk's contribution to the state at its end: sum_s exp(a_cum_last - a_cum_s) xdt_s B_s^T
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [b, c, h, Q]
    xs = (xdt * to_end[..., None]).transpose(-1, -2).reshape(b, nc, g, h // g, p, q)
    chunk_states = (xs @ b_chunks[:, :, :, None]).reshape(b, nc, h, p, n)

    # 3. the state entering each chunk, carried across chunks
    state = (
        initial_states.float()
        if initial_states is not None
        else torch.zeros(b, h, p, n, dtype=torch.float32, device=x.device)
    )
    chunk_decay = torch.exp(a_cum[..., -1])  # [b, c, h]
    entering = []
    for k in range(nc):
        entering.append(state)
        state = state * chunk_decay[:, k, :, None, None] + chunk_states[:, k]
    starts = torch.stack(entering, dim=1)  # [b, c, h, p, n]

    # 4. the entering state read out by C, decayed to each position
    from_start = starts.reshape(b, nc, g, h // g, p, n) @ c_chunks[:, :, :, None].transpose(-1, -2)  # [b,c,g,h/g,p,Q]
    y = y + from_start.reshape(b, nc, h, p, q).transpose(-1, -2) * torch.exp(a_cum)[..., None]

    out = y.permute(0, 1, 3, 2, 4).reshape(b, nc * q, h, p)[:, :length]
    if D is not None:
        out = out + D.float()[:, None] * x
    return (out, state) if return_final_states else out


def _kernels_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def install(model: Any) -> bool:
    """Route ``model``'s modeling-module scan through the dispatcher (once per module; idempotent, thread-safe).

    Returns whether the module has a scan to route (False for families without one, e.g. Mamba-1 or attention-only).
    With the ``mamba_ssm`` kernels installed, tensors on a GPU keep going to transformers' function (and so to them).
    """
    module = sys.modules.get(type(model).__module__)
    original: Callable[..., Any] | None = getattr(module, SCAN_NAME, None)
    if module is None or original is None:
        return False
    with _LOCK:
        current = getattr(module, SCAN_NAME)
        if getattr(current, "_overflow_dispatch", False):
            return True
        kernels = _kernels_available()

        def dispatch(*args: Any, **kwargs: Any) -> Any:
            hidden = args[0] if args else kwargs.get("hidden_states")
            mine = (
                _ACTIVE.get()
                and kwargs.get("z") is None  # a gated scan (z) is not what chunk_scan computes
                and isinstance(hidden, torch.Tensor)
                and (hidden.device.type == "cpu" or not kernels)
            )
            return chunk_scan(*args, **kwargs) if mine else current(*args, **kwargs)

        dispatch._overflow_dispatch = True  # type: ignore[attr-defined]
        dispatch.__wrapped__ = current  # type: ignore[attr-defined]
        setattr(module, SCAN_NAME, dispatch)
    return True


@contextmanager
def fast_scan(enabled: bool = True) -> Iterator[None]:
    """Within the block, installed modules run :func:`chunk_scan` (in this thread or task only)."""
    token = _ACTIVE.set(enabled)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
