"""Mamba-2's chunked scan (SSD) in plain torch, for training on CPU: the same maths as transformers' reference path.

transformers (without ``mamba_ssm``) runs ``modeling_mamba2.mamba2_chunk_scan``. It copies ``B`` and ``C`` once per head
(``repeat_interleave``), contracts them per head, and builds every decay matrix through ``expand`` + ``masked_fill`` +
``cumsum``. With one group of ``B``/``C`` (the bundled model's), the ``C B^T`` scores are the same for every head, and
the scan takes a third of a training step more than it needs to on two cores (3.49 s against 2.31 s for a forward +
backward of a 16 x 570 batch, docs/model.md "Training speed"). :func:`chunk_scan` computes the scores once per group,
the within-chunk decays from one cumulative sum, and carries the state across chunks in a short loop (a context of a few
hundred tokens has a handful of chunks). ``tests/test_training.py`` ties it to transformers' function: outputs, final
states and gradients, with and without an initial state, with several groups and with padding to a whole chunk.

:func:`fast_chunk_scan` installs it in transformers for the duration of a ``with`` block (training only; the engine and
the evaluation run transformers' own path). It is process-wide while it lasts, so it is not for concurrent inference.
``python -m training.ssd`` prints seconds per training step with each scan (:func:`time_training_step`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.nn import functional

__all__ = ["chunk_scan", "fast_chunk_scan", "time_training_step"]


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


@contextmanager
def fast_chunk_scan(*, outside_compile: bool = False) -> Iterator[None]:
    """Run transformers' Mamba-2 torch path through :func:`chunk_scan` inside the block (a no-op where transformers has
    no such function, e.g. a version that renamed it, or where ``mamba_ssm`` kernels are in use).

    ``outside_compile`` keeps the scan out of ``torch.compile`` graphs (it runs eagerly between them). Training needs
    that with bfloat16 autocast: the code inductor generates for the scan's backward under autocast gives NaN
    gradients for ``B`` and ``C`` (torch 2.13, CPU; eager and ``aot_eager`` are finite), and compiling the scan buys
    little anyway (docs/model.md, "Training speed")."""
    from transformers.models.mamba2 import modeling_mamba2

    original = getattr(modeling_mamba2, "mamba2_chunk_scan", None)
    if original is None:
        yield
        return
    scan = torch.compiler.disable(chunk_scan) if outside_compile else chunk_scan
    modeling_mamba2.mamba2_chunk_scan = scan  # type: ignore[assignment]
    try:
        yield
    finally:
        modeling_mamba2.mamba2_chunk_scan = original


def time_training_step(
    steps: int = 5,
    batch: int = 16,
    length: int = 570,
    threads: int = 2,
    compiled: bool = False,
    hidden_size: int | None = None,
    layers: int | None = None,
) -> dict[str, float]:
    """Seconds per forward + backward of the bundled model's architecture, or of another width / depth
    (``train.build_model`` with ``TrainConfig``'s sizes unless given, and the bundled tokenizer; random weights, random
    ids ``[batch, length]``, by default a stage-2 batch) with transformers' scan, with :func:`chunk_scan`, and with
    :func:`chunk_scan` under bfloat16 autocast; with ``compiled``, also through ``torch.compile`` as ``train --compile``
    runs it, in float32 and under bfloat16 autocast (the scan then outside the compiled graph). One untimed step first
    (for the compiled ones, the compilation)."""
    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from training.train import TrainConfig, _compiled, build_model

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    cfg = TrainConfig(hidden_size=hidden_size or TrainConfig.hidden_size, layers=layers or TrainConfig.layers)
    model = build_model(cfg, tokenizer).train()
    ids = torch.randint(0, len(tokenizer), (batch, length))
    variants = [("transformers", False, False, False), ("chunk_scan", True, False, False)]
    variants.append(("chunk_scan+bf16", True, True, False))
    if compiled:
        variants += [("compiled", True, False, True), ("compiled+bf16", True, True, True)]
    results: dict[str, float] = {}
    for name, fast, bf16, comp in variants:
        forward = _compiled(model) if comp else model

        def step(fast: bool = fast, bf16: bool = bf16, comp: bool = comp, forward: Any = forward) -> None:
            with fast_chunk_scan(outside_compile=comp and bf16) if fast else nullcontext():
                with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
                    logits = forward(input_ids=ids).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
                loss.backward()
            model.zero_grad(set_to_none=True)

        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        results[name] = (time.perf_counter() - t0) / steps
    return results


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Time a training step with transformers' scan and with chunk_scan.")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile, float32 and bfloat16")
    parser.add_argument("--hidden-size", type=int, help="model width (default: the bundled model's)")
    parser.add_argument("--layers", type=int, help="Mamba-2 layers (default: the bundled model's)")
    parser.add_argument("--length", type=int, default=570, help="tokens a row (default: a stage-2 batch's 570)")
    args = parser.parse_args()
    timings = time_training_step(
        args.steps, length=args.length, compiled=args.compile, hidden_size=args.hidden_size, layers=args.layers
    )
    for label, seconds in timings.items():
        print(f"{label:>16}: {seconds:.2f} s per forward + backward of a 16 x {args.length} batch")
