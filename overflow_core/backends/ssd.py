"""Mamba-2's chunked scan (SSD) and the short causal convolution in plain torch: transformers' maths, with less copying.

transformers without ``mamba_ssm`` / ``causal_conv1d`` runs two torch functions of each modeling module:

- ``mamba2_chunk_scan`` (mamba2, bamba, zamba2, falcon_h1, nemotron_h, granitemoehybrid). It copies ``B`` and ``C`` once
  per head (``repeat_interleave``), contracts them per head, and builds every decay matrix through ``expand`` +
  ``masked_fill`` + ``cumsum``. :func:`chunk_scan` computes the ``C B^T`` scores once per group, the decays from one
  cumulative sum (in place when no gradient is recorded), and the chunk states and their read-out as one matrix product
  per group with the group's heads folded into the rows, so nothing is copied per head; the output keeps the input's
  ``[b, L, h, p]`` layout.
- ``causal_conv1d_fn`` (every family with a short convolution: the Mamba-2 mixers above, mamba, falcon_mamba, jamba,
  qwen3_next, lfm2, ...). It runs a depthwise ``conv1d`` that a CPU computes slowly for 4 taps; :func:`causal_conv1d`
  adds the taps as shifted, scaled copies in the input's own memory layout.
- ``mamba2_selective_state_update`` (the Mamba-2 mixers' one-token step: decoding, and the not-found check's forced
  token). It expands the per-head decay and input to the state's size; :func:`state_step` decays, adds and reads the
  state in three passes.

:func:`install` routes a modeling module's functions through dispatchers that call this module's versions only inside
:func:`fast_scan` blocks (a context variable, so per thread and per task) and transformers' own functions everywhere
else: other models in the process, and other threads, are untouched. Backends open a :func:`fast_scan` block around their
forwards; ``tests/test_ssd.py`` ties both functions to transformers' (outputs, final states and gradients) and the
equivalence tests tie every backend to the slow reference path, which runs transformers' own functions.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn import functional

__all__ = ["block_length", "causal_conv1d", "chunk_scan", "fast_scan", "install", "state_step"]

SCAN_NAME = "mamba2_chunk_scan"  # the function every Mamba-2 family module of transformers 5.x defines
CONV_NAME = "causal_conv1d_fn"  # the short convolution's function, in every family module with one
STEP_NAME = "mamba2_selective_state_update"  # one recurrent step (decoding, and the not-found check's forced token)
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("overflow_fast_ssd_scan", default=False)
_LOCK = threading.Lock()


def _chunks(t: torch.Tensor, pad: int, size: int) -> torch.Tensor:
    """``[b, L, ...] -> [b, c, size, ...]``, zero-padded at the end to a whole number of chunks."""
    if pad:
        t = functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
    return t.reshape(t.shape[0], -1, size, *t.shape[2:])


def block_length(length: int, chunk_size: int) -> int:
    """The scan's block length for a sequence of ``length``: the one among ``chunk_size``, its halves down to 32, and 48
    that pads ``length`` least, the longest of those on a tie.

    The result of the scan does not depend on the block length (it only regroups the same sums), but the work does: rows
    are padded to a whole number of blocks, so a 45-token continuation costs 64 positions with blocks of 64 and 48 with
    blocks of 48, and a 268-token prompt 512 with a model's blocks of 256 against 288 with blocks of 48.
    """
    sizes = {chunk_size} | {chunk_size >> i for i in range(1, 8) if chunk_size >> i >= 32}
    if chunk_size > 48:
        sizes.add(48)
    return min(sizes, key=lambda q: (-(-length // q) * q, -q))


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
        chunk_size: the model's block length; the scan uses :func:`block_length` of it (same result, less padding).
        D: ``[h]``, the skip connection, or None.
        dt_bias: ``[h]`` or None.
        initial_states: ``[b, h, p, n]`` or None (zeros).
        return_final_states: also return the state after the last token, ``[b, h, p, n]``.

    Returns:
        ``y [b, L, h, p]`` (float32), and the final state when asked for.
    """
    b, length, h, p = hidden_states.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g  # heads per group: they share B and C
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = functional.softplus(dt)
    dt = torch.clamp(dt.float(), min=dt_limit[0], max=dt_limit[1])
    x = hidden_states.float()
    q = block_length(length, chunk_size)
    pad = (q - length % q) % q
    nc = (length + pad) // q
    inplace = not torch.is_grad_enabled()  # in-place steps save passes over [b, c, h, Q, Q] when nothing is recorded

    xdt = _chunks(x * dt[..., None], pad, q)  # [b, c, Q, h, p]
    a_cum = torch.cumsum(_chunks(dt * A.float(), pad, q).transpose(-1, -2), dim=-1)  # [b, c, h, Q]
    b_chunks = _chunks(B.float(), pad, q).transpose(2, 3)  # [b, c, g, Q, n]
    c_chunks = _chunks(C.float(), pad, q).transpose(2, 3)  # [b, c, g, Q, n]

    # 1. within each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(a_cum_l - a_cum_s) xdt_s, scores shared by a group's heads
    above = torch.ones(q, q, dtype=torch.bool, device=x.device).triu(1)
    scores = c_chunks @ b_chunks.transpose(-1, -2)  # [b, c, g, Q, Q]
    segsum = a_cum[..., :, None] - a_cum[..., None, :]  # [b, c, h, Q, Q]
    if inplace:
        weights = segsum.masked_fill_(above, float("-inf")).exp_()
        weights.view(b, nc, g, r, q, q).mul_(scores[:, :, :, None])
    else:
        weights = (segsum.masked_fill(above, float("-inf")).exp().view(b, nc, g, r, q, q) * scores[:, :, :, None]).view(
            b, nc, h, q, q
        )
    y = weights @ xdt.transpose(2, 3)  # [b, c, h, Q, p]

    # 2. each chunk's contribution to the state at its end, sum_s exp(a_cum_last - a_cum_s) xdt_s B_s^T: one product per
    #    group with its heads' (head, p) rows folded together, [r*p, Q] @ [Q, n]
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [b, c, h, Q]
    xs = (xdt * to_end.transpose(-1, -2)[..., None]).view(b, nc, q, g, r * p).permute(0, 1, 3, 4, 2)  # [b,c,g,r*p,Q]
    chunk_states = xs @ b_chunks  # [b, c, g, r*p, n]

    # 3. the state entering each chunk, carried across chunks
    state = (
        initial_states.float().reshape(b, g, r * p, n)
        if initial_states is not None
        else torch.zeros(b, g, r * p, n, dtype=torch.float32, device=x.device)
    )
    chunk_decay = torch.exp(a_cum[..., -1]).view(b, nc, g, r, 1, 1)
    entering = []
    for k in range(nc):
        entering.append(state)
        state = (state.view(b, g, r, p, n) * chunk_decay[:, k]).view(b, g, r * p, n) + chunk_states[:, k]
    starts = entering[0][:, None] if nc == 1 else torch.stack(entering, dim=1)  # [b, c, g, r*p, n]; one chunk: a view

    # 4. the entering state read out by C (one product per group, [Q, n] @ [n, r*p]), decayed to each position
    from_start = (c_chunks @ starts.transpose(-1, -2)).view(b, nc, g, q, r, p)
    from_start = from_start * torch.exp(a_cum).view(b, nc, g, r, q).transpose(-1, -2)[..., None]
    out = y.transpose(2, 3).reshape(b, nc * q, h, p)
    out = out + from_start.permute(0, 1, 3, 2, 4, 5).reshape(b, nc * q, h, p)
    out = out[:, :length]
    if D is not None:
        out = out + D.float()[:, None] * x
    final = state.view(b, h, p, n)
    return (out, final) if return_final_states else out


def causal_conv1d(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The depthwise causal convolution with transformers' ``causal_conv1d_fn`` signature.

    ``hidden_states [b, C, L]`` (any memory layout), ``weight [C, K]``, ``bias [C]``: ``out[l] = bias + sum_j
    weight[:, K-1-j] * x[l-j]`` (zero before the start), then ``activation`` (``"silu"``/``"swish"`` or None). The
    taps are added as shifted copies; elementwise ops follow the input's strides, so a channels-last input (what the
    mixers pass, a transpose of ``[b, L, C]``) is read and written in order.
    """
    length, k = hidden_states.shape[-1], weight.shape[-1]
    x = hidden_states.to(weight.dtype)
    out = x * weight[:, k - 1, None]
    for lag in range(1, min(k, length + 1)):
        tap = weight[:, k - 1 - lag, None]
        if torch.is_grad_enabled():
            out = torch.cat([out[..., :lag], out[..., lag:] + x[..., : length - lag] * tap], -1)
        else:
            out[..., lag:].addcmul_(x[..., : length - lag], tap)
    if bias is not None:
        out = out + bias[:, None]
    if activation is not None:
        out = functional.silu(out)
    return out.to(hidden_states.dtype)


def state_step(  # transformers' argument names (A, B, C, D)
    state: torch.Tensor,
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,  # noqa: N803
    B: torch.Tensor,  # noqa: N803
    C: torch.Tensor,  # noqa: N803
    D: torch.Tensor | None = None,  # noqa: N803
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    z: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """One recurrent step with transformers' ``mamba2_selective_state_update`` signature: ``state [b, h, p, n]`` is
    advanced in place by one token and the step's output ``[b, h, p]`` returned.

    transformers' Mamba-2 mixers pass ``dt``, ``A``, ``D`` and ``dt_bias`` as per-head values expanded over ``p`` (and
    ``n``); this step uses them per head, so the decay is one multiply of the state, the input one batched outer
    product added in place, the read-out one batched product: three passes over the state, where transformers' step
    makes about ten, materialising the decay and the input at the state's size. Only for a float32 state with per-head
    values (:func:`_step_is_mine`).
    """
    b, h, p = hidden_states.shape
    g, n = B.shape[1], B.shape[-1]
    step = dt[..., 0].float()  # [b, h]
    if dt_bias is not None:
        step = step + dt_bias[:, 0].float()
    if dt_softplus:
        step = functional.softplus(step)
    x = hidden_states.float()
    grouped = state.view(b * g, (h // g) * p, n)
    state.mul_(torch.exp(step * A[:, 0, 0].float())[..., None, None])
    grouped.baddbmm_((x * step[..., None]).reshape(b * g, (h // g) * p, 1), B.float().reshape(b * g, 1, n))
    out = torch.bmm(grouped, C.float().reshape(b * g, n, 1)).view(b, h, p)
    if D is not None:
        out = out + x * D.float()
    if z is not None:
        out = out * functional.silu(z.float())
    return out.to(hidden_states.dtype)


@functools.cache
def _kernels_available(name: str) -> bool:
    """Whether a kernel package is installed (looked up once: the dispatchers ask on every call, per layer and step)."""
    return importlib.util.find_spec(name) is not None


def _scan_is_mine(*args: Any, **kwargs: Any) -> bool:
    hidden = args[0] if args else kwargs.get("hidden_states")
    return (
        kwargs.get("z") is None  # a gated scan (z) is not what chunk_scan computes
        and isinstance(hidden, torch.Tensor)
        and (hidden.device.type == "cpu" or not _kernels_available("mamba_ssm"))
    )


def _conv_is_mine(*args: Any, **kwargs: Any) -> bool:
    hidden = args[0] if args else kwargs.get("hidden_states")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    activation = args[3] if len(args) > 3 else kwargs.get("activation")
    extra = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "weight", "bias", "activation")}
    return (
        isinstance(hidden, torch.Tensor)
        and hidden.dim() == 3
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and activation in (None, "silu", "swish")
        and all(v is None for v in extra.values())  # e.g. seq_idx: packed sequences are the kernels' business
        and (hidden.device.type == "cpu" or not _kernels_available("causal_conv1d"))
    )


# transformers' name -> (this module's function, looked up at each call; whether a call is one it computes)
def _step_is_mine(*args: Any, **kwargs: Any) -> bool:
    names = ("state", "hidden_states", "dt", "A", "B", "C", "D", "dt_bias")
    given = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    state, x, dt, a = (given.get(k) for k in ("state", "hidden_states", "dt", "A"))
    if not all(isinstance(t, torch.Tensor) for t in (state, x, dt, a)):
        return False
    per_head = [dt.stride(-1) == 0, a.stride(-1) == 0 and a.stride(-2) == 0]  # type: ignore[union-attr]
    for name in ("D", "dt_bias"):
        t = given.get(name)
        per_head.append(t is None or (isinstance(t, torch.Tensor) and t.dim() == 2 and t.stride(-1) == 0))
    tensors = [t for t in given.values() if isinstance(t, torch.Tensor)]
    recorded = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)  # in-place steps: no autograd
    return (
        all(per_head)
        and not recorded
        and state.dtype == torch.float32  # type: ignore[union-attr]
        and state.is_contiguous()  # type: ignore[union-attr]
        and (state.device.type == "cpu" or not _kernels_available("mamba_ssm"))  # type: ignore[union-attr]
    )


_ROUTES: dict[str, tuple[str, Callable[..., bool]]] = {
    SCAN_NAME: ("chunk_scan", _scan_is_mine),
    CONV_NAME: ("causal_conv1d", _conv_is_mine),
    STEP_NAME: ("state_step", _step_is_mine),
}


def _route(module: Any, name: str) -> bool:
    """Put a dispatcher in front of ``module.name`` (once; the caller holds the lock). False if the module has none."""
    current: Callable[..., Any] | None = getattr(module, name, None)
    if current is None:
        return False
    if getattr(current, "_overflow_dispatch", False):
        return True
    fast, applies = _ROUTES[name]

    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE.get() and applies(*args, **kwargs):
            return globals()[fast](*args, **kwargs)
        return current(*args, **kwargs)

    dispatch._overflow_dispatch = True  # type: ignore[attr-defined]
    dispatch.__wrapped__ = current  # type: ignore[attr-defined]
    setattr(module, name, dispatch)
    return True


def install(model: Any) -> bool:
    """Route ``model``'s modeling-module scan and convolution through dispatchers (once per module; idempotent,
    thread-safe).

    Returns whether the module has anything to route (False for a module with neither function, e.g. attention-only
    families). With the ``mamba_ssm`` / ``causal_conv1d`` kernels installed, tensors on a GPU keep going to
    transformers' functions (and so to the kernels).
    """
    module = sys.modules.get(type(model).__module__)
    if module is None:
        return False
    with _LOCK:
        routed = [_route(module, name) for name in _ROUTES]
    return any(routed)


@contextmanager
def fast_scan(enabled: bool = True) -> Iterator[None]:
    """Within the block, installed modules run this module's functions (in this thread or task only)."""
    token = _ACTIVE.set(enabled)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
