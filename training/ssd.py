"""Mamba-2's fast chunk scan (SSD) for training: :func:`chunk_scan` is the library's
(:mod:`overflow_core.backends.ssd`, where its docstring says what it saves over transformers' reference path);
``tests/test_training.py`` ties it to transformers' function with gradients.

:func:`fast_chunk_scan` installs it in transformers for the duration of a ``with`` block, process-wide (training runs
one model in one process; inference uses the library's per-thread dispatcher instead). ``python -m training.ssd`` prints
seconds per training step with each scan (:func:`time_training_step`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from overflow_core.backends.ssd import chunk_scan

__all__ = ["chunk_scan", "fast_chunk_scan", "time_training_step"]


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
