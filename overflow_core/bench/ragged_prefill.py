"""Batching efficiency of prefill for families without an attention mask (RWKV, xLSTM), on real chunk lengths.

``python -m overflow_core.bench.ragged_prefill [--chunk-tokens 256] [--budget 4096] [--family rwkv]``

Chunks a real-ish corpus (the demo corpus and the repository's docs) with the bundled tokenizer, builds every chunk's
prompt for one question, plans micro-batches as the engine does, and prefills them four ways on a random model of the
family (hidden 256 by default, 4 layers; the figures are about batching, not about answers):

- ``ragged`` (what Overflow does): each micro-batch runs as segments between its distinct lengths; rows that are done
  leave; no pad is ever fed;
- ``by-length``: micro-batches of exactly equal lengths only (no padding either, more batches);
- ``padded``: left-padded micro-batches fed whole (what a masked model does; here pads pollute the state, so its outputs
  are wrong: it is the throughput ceiling, not an option);
- ``one-by-one``: every prompt alone.

For each: forward calls, tokens fed, real tokens / tokens fed, wall and process CPU time (CPU time is the steadier
figure on a shared machine) and real tokens per CPU second. Each method runs twice (``--repeat``); the last run counts. Prints the
length distribution too. Results are CPU figures of this machine; run it where you run your model.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["main"]


def _corpus() -> list[tuple[str, dict[str, str]]]:
    root = Path(__file__).resolve().parents[2]
    files = sorted((Path(__file__).resolve().parents[1] / "demo" / "corpus").glob("*.txt"))
    files += [*sorted((root / "docs").glob("*.md")), root / "README.md"]
    return [(f.read_text(encoding="utf-8"), {"source": f.name}) for f in files if f.is_file()]


def _model(family: str, vocab: int, pad: int, eos: int, hidden: int) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    sizes: dict[str, dict[str, Any]] = {
        "rwkv": {
            "hidden_size": hidden,
            "num_hidden_layers": 4,
            "attention_hidden_size": hidden,
            "intermediate_size": 4 * hidden,
        },
        "xlstm": {
            "hidden_size": hidden,
            "embedding_dim": hidden,
            "num_hidden_layers": 4,
            "num_blocks": 4,
            "num_heads": 4,
            "qk_dim_factor": 1.0,
            "autocast_kernel_dtype": "float32",
        },
    }
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=vocab, pad_token_id=pad, eos_token_id=eos, **sizes[family])
    return AutoModelForCausalLM.from_config(config).eval()


def _run(name: str, batches: Sequence[Sequence[int]], prompts: Sequence[Sequence[int]], fn: Any) -> dict[str, Any]:
    real = sum(len(prompts[i]) for b in batches for i in b)
    t0, c0 = time.perf_counter(), time.process_time()
    calls = fed = 0
    with torch.inference_mode():
        for rows in batches:
            c, f = fn([prompts[i] for i in rows])
            calls, fed = calls + c, fed + f
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"method": name, "batches": len(batches), "calls": calls, "fed": fed, "real": real, "wall": wall, "cpu": cpu}


def main(argv: Sequence[str] | None = None) -> int:
    from transformers import AutoTokenizer

    from overflow_core import OPRM
    from overflow_core.backends import resolve_backend
    from overflow_core.config import OPRMConfig
    from overflow_core.engine import DEFAULT_MODEL_DIR
    from overflow_core.prefill import pad_left, plan_batches

    p = argparse.ArgumentParser(prog="python -m overflow_core.bench.ragged_prefill", description=__doc__)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--budget", type=int, default=4096, help="max_batch_tokens of one micro-batch")
    p.add_argument("--family", choices=["rwkv", "xlstm"], default="rwkv")
    p.add_argument("--hidden", type=int, default=256, help="hidden size of the random model")
    p.add_argument("--methods", default="padded,ragged,by-length,one-by-one", help="comma-separated, run in this order")
    p.add_argument("--repeat", type=int, default=2, help="runs per method (the last counts; the first warms up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-prompts", type=int, default=160, help="a seeded sample of the prompts (0: all of them)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    model = _model(args.family, len(tok), tok.pad_token_id, tok.eos_token_id, args.hidden)
    oprm = OPRM(model, tok, OPRMConfig(chunk_tokens=args.chunk_tokens, max_batch_tokens=args.budget))
    backend = resolve_backend(model)
    q_ids = oprm.encode_question("What is the access code of project Lantern?")
    prompts = [oprm.prompt(c.ids, q_ids) for c in oprm.chunk(_corpus())]
    if 0 < args.max_prompts < len(prompts):
        import random

        prompts = random.Random(0).sample(prompts, args.max_prompts)
    lengths = [len(x) for x in prompts]
    hist = Counter(lengths)
    top = max(lengths)
    print(
        f"{len(prompts)} prompts (a seeded sample) of the chunks of {len(_corpus())} documents "
        f"(chunk_tokens={args.chunk_tokens}): "
        f"{len(hist)} distinct lengths, {hist[top]} ({100 * hist[top] / len(prompts):.0f}%) at the longest ({top}), "
        f"shortest {min(lengths)}, {sum(lengths)} real tokens; budget {args.budget} tokens per micro-batch"
    )
    planned = plan_batches(lengths, args.budget)
    by_length: list[list[int]] = []
    for n in sorted(hist, reverse=True):
        same = [i for i, x in enumerate(lengths) if x == n]
        by_length += [list(g) for g in plan_batches([n] * len(same), args.budget) for g in [[same[j] for j in g]]]

    def ragged(rows: list[list[int]]) -> tuple[int, int]:
        ids, mask = pad_left(rows, oprm.pad_id)
        before = backend.calls  # type: ignore[attr-defined]
        backend.prefill(ids, mask)
        return backend.calls - before, sum(len(r) for r in rows)  # type: ignore[attr-defined]

    def padded(rows: list[list[int]]) -> tuple[int, int]:
        ids, _ = pad_left(rows, oprm.pad_id)
        model(input_ids=ids, use_cache=True)
        return 1, int(ids.numel())

    def alone(rows: list[list[int]]) -> tuple[int, int]:
        for r in rows:
            model(input_ids=torch.tensor([r]), use_cache=True)
        return len(rows), sum(len(r) for r in rows)

    print(
        f"{'method':<16}{'batches':>8}{'calls':>7}{'tokens fed':>12}{'real/fed':>10}{'wall s':>9}{'cpu s':>9}"
        f"{'real tok/cpu-s':>16}"
    )
    plans = [
        ("ragged", planned, ragged),
        ("by-length", by_length, ragged),
        ("padded (wrong)", planned, padded),
        ("one-by-one", [[i] for i in range(len(prompts))], alone),
    ]
    wanted = [m.strip() for m in args.methods.split(",")]
    for name, batches, fn in sorted(
        plans, key=lambda x: wanted.index(x[0].split()[0]) if x[0].split()[0] in wanted else 99
    ):
        if name.split()[0] not in wanted:
            continue
        for _ in range(args.repeat):
            r = _run(name, batches, prompts, fn)
        print(
            f"{r['method']:<16}{r['batches']:>8}{r['calls']:>7}{r['fed']:>12}{r['real'] / r['fed']:>10.3f}"
            f"{r['wall']:>9.2f}{r['cpu']:>9.2f}{r['real'] / r['cpu']:>16.0f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
