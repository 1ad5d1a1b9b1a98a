"""Per-question latency with a state index vs full re-prefill, on a generated corpus of at least ``--tokens`` tokens.

    python -m overflow_core.bench.index_latency [--model PATH] [--tokens 100000] [--questions 5] [--threads 1]

Steps: generate documents in the bundled model's training style (:class:`overflow_core.synthetic.facts.FactWorld`) until
the corpus holds ``--tokens`` tokens; build the index, save it, load it back (states then stream from disk, as in real
use); then ask ``--questions`` questions whose answer is stated exactly once in the corpus, both through the loaded
index and through :meth:`OPRM.answer` on the same documents (every chunk prefilled again), and compare.
Prints the corpus size, build time, size on disk per chunk, per-question latencies, the speed-up and whether the answers
agree (same text, decoded from the same chunk).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from overflow_core import OPRM
from overflow_core.index import StateIndex
from overflow_core.synthetic.facts import Curriculum, FactWorld, Question


def make_corpus(
    engine: OPRM, tokens: int, questions: int, seed: int
) -> tuple[list[tuple[str, dict[str, str]]], list[Question], int]:
    """Documents of about 3,000 characters with a few facts each, until ``tokens`` corpus tokens; and questions about
    facts stated exactly once. Returns (documents, questions, corpus tokens)."""
    rng = random.Random(seed)
    world = FactWorld("train", not_found=engine.config.not_found)
    curriculum = Curriculum.at(1.0)
    docs: list[tuple[str, dict[str, str]]] = []
    facts: dict[tuple[str, str], list[str]] = {}
    total = 0
    while total < tokens:
        sample = world.sample(rng, curriculum, n_facts=rng.randint(2, 6), target_chars=3000)
        docs.append((sample.context, {"source": f"doc{len(docs):04d}.txt"}))
        total += len(engine.tokenizer(sample.context, add_special_tokens=False)["input_ids"])
        for fact in sample.facts:
            facts.setdefault((fact.key, fact.attr), []).append(fact.value)
    unique = sorted((k, v[0]) for k, v in facts.items() if len(v) == 1)
    picked = rng.sample(unique, min(questions, len(unique)))
    asked = [world.question(rng, key, attr, value, present=True) for (key, attr), value in picked]
    return docs, asked, total


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _why(fast: Any, full: Any) -> str:
    """Where two answers part: the chunk each decoded from and both chunks' entropies in each ranking (a near tie shows)."""
    picks = [a.ranking.best.chunk.index if a.ranking and a.ranking.best else None for a in (fast, full)]
    if picks[0] == picks[1]:
        return f"same chunk {picks[0]}: decoding differs"

    def entropies(answer: Any) -> str:
        by_chunk = {s.chunk.index: s.entropy for s in answer.ranking.scores} if answer.ranking else {}
        return ", ".join(f"chunk {i}: {by_chunk.get(i, float('nan')):.7f}" for i in picks)

    return f"index picked chunk {picks[0]}, full picked {picks[1]}; index entropies {entropies(fast)}; full {entropies(full)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m overflow_core.bench.index_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--tokens", type=int, default=100_000, help="corpus size in tokens (at least)")
    parser.add_argument("--questions", type=int, default=5, help="questions to time")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="keep the index in this folder (default: a temporary folder)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar while building")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    engine = OPRM.from_pretrained(args.model, device=args.device)
    cfg = engine.config
    docs, questions, corpus_tokens = make_corpus(engine, args.tokens, args.questions, args.seed)
    print(f"model               {engine.name} ({engine.backend.name}, {cfg.dtype}, {engine.device}), "
          f"chunk_tokens={cfg.chunk_tokens}, max_batch_tokens={cfg.batch_tokens}, threads={torch.get_num_threads()}")

    t0 = time.perf_counter()
    built = StateIndex.build(engine, docs, progress=args.progress)
    build_s = time.perf_counter() - t0
    context_tokens = sum(len(engine.context_prompt(c.ids)) for c in built.chunks)
    print(f"corpus              {corpus_tokens:,} tokens in {len(docs)} documents -> {len(built)} chunks "
          f"({context_tokens:,} tokens with the prompt prefix and infix)")
    print(f"index build         {build_s:.1f} s ({context_tokens / build_s:,.0f} tok/s)")

    with tempfile.TemporaryDirectory(prefix="oprm-index-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp) / "index"
        t0 = time.perf_counter()
        built.save(folder)
        save_s = time.perf_counter() - t0
        size = disk_bytes(folder)
        print(f"index on disk       {_mib(size)} in {len(list(folder.glob('*.safetensors')))} shards: "
              f"{_mib(size / len(built))} per chunk (state {_mib(built.bytes_per_chunk)}); save {save_s:.1f} s")
        del built
        t0 = time.perf_counter()
        index = StateIndex.load(folder, engine)
        print(f"index load          {time.perf_counter() - t0:.2f} s (rows are checked as queries read them)")
        _compare(engine, index, docs, questions, args.max_new_tokens)


def _compare(engine: OPRM, index: StateIndex, docs: Any, questions: list[Question], max_new_tokens: int) -> None:
    warm = "Who is the captain of the ship Orbit?"  # first calls pay one-off costs: keep them out of the timings
    index.rank(warm)
    engine.rank(warm, docs[:2])
    rows = []
    print(f"\n{'q':>2}  {'index_s':>8}  {'full_s':>8}  {'speedup':>7}  agree  {'expected':<14} index answer")
    for n, q in enumerate(questions, 1):
        t0 = time.perf_counter()
        fast = index.answer(q.text, max_new_tokens=max_new_tokens)
        t1 = time.perf_counter()
        full = engine.answer(q.text, docs, max_new_tokens=max_new_tokens)
        t2 = time.perf_counter()
        same_chunk = (fast.chunk is None) == (full.chunk is None) and (
            fast.chunk is None or full.chunk is None or fast.chunk.chunk.index == full.chunk.chunk.index
        )
        agree = fast.text == full.text and fast.not_found == full.not_found and same_chunk
        rows.append((t1 - t0, t2 - t1, agree, q.answer in fast.text, q.answer in full.text, fast, full))
        print(f"{n:>2}  {t1 - t0:8.3f}  {t2 - t1:8.3f}  {(t2 - t1) / (t1 - t0):6.1f}x  {'yes' if agree else 'NO':<5}  "
              f"{q.answer!r:<14} {fast.text!r}")
        if not agree:
            print(f"    full re-prefill answered {full.text!r}; {_why(fast, full)}")
    fast_s = statistics.median(r[0] for r in rows)
    full_s = statistics.median(r[1] for r in rows)
    fed_fast = rows[0][5].usage.prompt_tokens
    fed_full = rows[0][6].usage.prompt_tokens
    print(f"\nmedian per question  index {fast_s:.3f} s, full re-prefill {full_s:.3f} s -> {full_s / fast_s:.1f}x faster")
    score_fast = statistics.median(r[5].timings.prefill_s + r[5].timings.select_s for r in rows)
    score_full = statistics.median(r[6].timings.prefill_s + r[6].timings.select_s for r in rows)
    print(f"  scoring only       index {score_fast:.3f} s, full re-prefill {score_full:.3f} s -> "
          f"{score_full / score_fast:.1f}x (decoding, the same work in both, excluded)")
    print(f"tokens through the model per question (first question): index {fed_fast:,} "
          f"(+{rows[0][5].usage.reused_tokens:,} from stored states), full {fed_full:,} -> {fed_full / fed_fast:.1f}x fewer")
    print(f"answers agree       {sum(r[2] for r in rows)}/{len(rows)} (same text, same chunk)")
    print(f"expected value in answer  index {sum(r[3] for r in rows)}/{len(rows)}, full {sum(r[4] for r in rows)}/{len(rows)}")


if __name__ == "__main__":
    main()
