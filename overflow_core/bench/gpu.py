"""``oprm bench gpu``: prefill throughput of OPRM and vanilla on a GPU, in bf16, with and without the CUDA kernels.

Each configuration runs in a fresh Python process, because transformers picks ``mamba_ssm`` / ``causal_conv1d`` when its
modeling modules are imported: ``--kernels off`` blocks those two packages in the child before anything imports them, so
the model runs transformers' torch path (with Overflow's SSD scan for Mamba-2 families); ``--kernels on`` lets them load
when installed, and the result says whether they were. Timings are wall-clock around ``torch.cuda.synchronize()``;
memory is ``torch.cuda.max_memory_allocated`` over the timed runs.

    oprm bench gpu --model tiiuae/falcon-mamba-7b-instruct --tokens 16384,131072 --kernels on,off --out gpu.json

On a machine without CUDA it runs on the CPU in float32 (for a dry run of the script; the figures are then not GPU
figures and say so in ``device``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "measure"]

BLOCKED = ("mamba_ssm", "causal_conv1d")


def _block_kernels() -> None:
    """Make ``import mamba_ssm`` / ``import causal_conv1d`` fail in this process (before transformers imports them)."""
    for name in BLOCKED:
        sys.modules[name] = None  # type: ignore[assignment]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: ``spec`` has ``model``, ``tokens`` (list), ``reps``, ``kernels`` ("on" or
    "off"), ``dtype`` and optionally ``max_batch_tokens`` / ``chunk_tokens``."""
    if spec["kernels"] == "off":
        _block_kernels()
    import importlib.util

    import torch

    from overflow_core.bench.scaling import WARM_QUESTION, _haystack
    from overflow_core.engine import OPRM

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", spec.get("dtype", "bfloat16")) if cuda else ("cpu", "float32")
    settings = {k: spec[k] for k in ("max_batch_tokens", "chunk_tokens") if spec.get(k)}
    oprm = OPRM.from_pretrained(spec.get("model"), device=device, dtype=dtype, **settings)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    kernels = {name: importlib.util.find_spec(name) is not None and sys.modules.get(name, 0) is not None for name in BLOCKED}
    out: dict[str, Any] = {
        "model": oprm.name,
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run: not GPU figures)",
        "dtype": dtype,
        "kernels": spec["kernels"],
        "kernels_importable": kernels,
        "max_batch_tokens": oprm.config.batch_tokens,
        "chunk_tokens": oprm.config.chunk_tokens,
        "points": [],
    }
    for tokens in spec["tokens"]:
        docs, question, measured = _haystack(oprm, int(tokens), 0)
        oprm.rank(WARM_QUESTION, docs[:2])
        oprm.answer(WARM_QUESTION, docs[:2], mode="vanilla", max_new_tokens=1)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        o_s, v_s = [], []
        o_tok = v_tok = 0
        for _ in range(int(spec.get("reps", 3))):
            sync()
            t0 = time.perf_counter()
            r = oprm.rank(question, docs, k=1)
            sync()
            o_s.append(time.perf_counter() - t0)
            o_tok = r.usage.prompt_tokens
            sync()
            t0 = time.perf_counter()
            a = oprm.answer(question, docs, mode="vanilla", max_new_tokens=1)
            sync()
            v_s.append(time.perf_counter() - t0)
            v_tok = a.usage.prompt_tokens
        op, vp = statistics.median(o_s), statistics.median(v_s)
        out["points"].append(
            {
                "tokens": int(tokens),
                "context_tokens": measured,
                "oprm_prompt_tokens": o_tok,
                "oprm_rank_s": op,
                "oprm_tokens_per_s": o_tok / op,
                "vanilla_prompt_tokens": v_tok,
                "vanilla_prefill_s": vp,
                "vanilla_tokens_per_s": v_tok / vp,
                "oprm_vs_vanilla_time": op / vp,
                "max_memory_allocated": int(torch.cuda.max_memory_allocated()) if cuda else None,
                "oprm_runs_s": o_s,
                "vanilla_runs_s": v_s,
            }
        )
    return out


def _child(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    from overflow_core.bench.scaling import json_child

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    args = ["-m", "overflow_core.bench.gpu", "--child", json.dumps(spec)]
    return json_child(args, env, timeout_s, f"gpu bench {spec['kernels']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``oprm bench gpu``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--child"]:
        print(json.dumps(measure(json.loads(args_list[1]))), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="oprm bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="hub id or folder (default: the bundled model)")
    p.add_argument("--tokens", default="16384,131072", help="input lengths, comma-separated")
    p.add_argument("--kernels", default="on,off", help="on, off or both (comma-separated)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--chunk-tokens", type=int, default=None)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(args_list)
    tokens = [int(t) for t in args.tokens.split(",") if t]
    import torch  # the parent only asks; each configuration's child process measures

    if not torch.cuda.is_available():
        sys.stderr.write(
            f"oprm bench gpu: no CUDA device: a dry run on the CPU in float32, not GPU figures; {max(tokens):,} tokens "
            "take minutes there (--tokens 512 checks the script in seconds)\n"
        )
    results = []
    for kernels in [k.strip() for k in args.kernels.split(",") if k.strip()]:
        if kernels not in ("on", "off"):
            sys.stderr.write(f"oprm bench gpu: error: --kernels: expected on and/or off, got {kernels!r}\n")
            return 2
        spec = {
            "model": args.model, "tokens": tokens, "reps": args.reps, "kernels": kernels, "dtype": args.dtype,
            "max_batch_tokens": args.max_batch_tokens, "chunk_tokens": args.chunk_tokens,
        }  # fmt: skip
        r = _child(spec, args.timeout)
        results.append(r)
        print(f"{r['device']} {r['model']} {r['dtype']} kernels={kernels} (importable: {r['kernels_importable']}), "
              f"max_batch_tokens {r['max_batch_tokens']:,}")
        for pt in r["points"]:
            mem = pt["max_memory_allocated"]
            print(f"  {pt['context_tokens']:>8,} tokens: OPRM {pt['oprm_rank_s']:.3f} s ({pt['oprm_tokens_per_s']:,.0f} tok/s), "
                  f"vanilla {pt['vanilla_prefill_s']:.3f} s ({pt['vanilla_tokens_per_s']:,.0f} tok/s), time ratio "
                  f"{pt['oprm_vs_vanilla_time']:.2f}" + (f", peak {mem / 2**30:.2f} GiB" if mem else ""))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
