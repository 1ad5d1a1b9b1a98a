"""Scaling measurements: OPRM against context length, memory against the batch token budget, prefill throughput, and
per-question latency against the number of questions with and without the state index.

Length and budget points each run in a fresh Python process (``python -m overflow_core.bench.scaling SPEC_JSON``), so that
one point's allocations cannot hide in another's baseline and the kernel's ``ru_maxrss`` high-water mark belongs to the
point alone. A point loads the model, generates its haystack, records the RSS, then calls :meth:`OPRM.rank` under
:class:`~overflow_core.bench.memory.PeakRss`, and prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from overflow_core.bench.memory import PeakRss, current_rss, max_rss

__all__ = ["ALLOCATORS", "baseline_prefill", "json_child", "length_point", "question_scaling", "run_point", "throughput"]

logger = logging.getLogger("overflow_core.bench")
WARM_QUESTION = "What is the locker number of Alice Baker?"


def _haystack(
    oprm: Any, tokens: int, seed: int, *, one_document: bool = False
) -> tuple[list[tuple[str, dict[str, str]]], str, int]:
    """A single-needle haystack of about ``tokens`` tokens: (documents, question, measured tokens). Its ~220-token
    documents, or with ``one_document`` the same text as one document (chunks then fill ``chunk_tokens``)."""
    from overflow_core.synthetic.facts import FactWorld
    from overflow_core.synthetic.haystack import make_haystack

    world = FactWorld("train", not_found=oprm.config.not_found)
    hay = make_haystack(world, random.Random(f"{seed}-scaling-{tokens}"), oprm.tokenizer, tokens, present=True)
    docs = list(hay.documents)
    if one_document:
        docs = [("\n\n".join(text for text, _ in docs), {"source": "haystack.txt"})]
    measured = sum(len(oprm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in docs)
    return docs, hay.question.text, measured


def length_point(spec: dict[str, Any]) -> dict[str, Any]:
    """One scaling point, in this process: ``spec`` has ``model``, ``tokens``, ``max_batch_tokens``, ``threads``,
    ``seed`` and optionally ``chunking`` (also measure chunking alone, before the rank)."""
    import torch

    from overflow_core.engine import OPRM

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    settings = {"max_batch_tokens": spec["max_batch_tokens"]} if spec.get("max_batch_tokens") else {}
    t0 = time.perf_counter()
    oprm = OPRM.from_pretrained(spec.get("model"), **settings)
    load_s = time.perf_counter() - t0
    oprm.rank(WARM_QUESTION, ["A short warm-up document. The locker number of Alice Baker is 12."])
    docs, question, measured = _haystack(oprm, int(spec["tokens"]), int(spec.get("seed", 0)))
    gc.collect()
    out: dict[str, Any] = {
        "tokens": int(spec["tokens"]),
        "context_tokens": measured,
        "max_batch_tokens": oprm.config.batch_tokens,
        "chunk_tokens": oprm.config.chunk_tokens,
        "threads": torch.get_num_threads(),
        "load_s": load_s,
        "rss_loaded": current_rss(),
        "max_rss_before": max_rss(),
    }
    if spec.get("chunking"):
        with PeakRss() as m:
            chunks = oprm.chunk(docs)
        out["chunking_rss_delta"] = m.delta
        out["chunks"] = len(chunks)
        del chunks
        gc.collect()
    t0 = time.perf_counter()
    with PeakRss() as m:
        ranking = oprm.rank(question, docs)
    wall = time.perf_counter() - t0
    out.update(
        {
            "chunks": len(ranking.scores),
            "rank_s": wall,
            "prefill_s": ranking.timings.prefill_s,
            "select_s": ranking.timings.select_s,
            "prompt_tokens": ranking.usage.prompt_tokens,
            "padded_tokens": ranking.usage.padded_tokens,
            "prefill_tokens_per_s": ranking.usage.prompt_tokens / ranking.timings.prefill_s,
            "rss_before": m.before,
            "rss_peak": m.peak,
            "rss_delta": m.delta,
            "rss_samples": m.samples,
            "max_rss_after": max_rss(),
        }
    )
    return out


ALLOCATORS = {
    "glibc": {},  # the C library's defaults: what a user's process gets
    # every allocation of 128 KiB or more is its own mapping, returned to the system when freed: RSS then follows the
    # memory the engine actually holds, without what glibc's heap keeps after frees (its threshold otherwise grows)
    "mmap": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def run_point(spec: dict[str, Any], timeout_s: float = 1800) -> dict[str, Any]:
    """Run :func:`length_point` in a fresh interpreter and return its result.

    ``spec["allocator"]`` (``"glibc"``, the default, or ``"mmap"``) picks the C allocator's settings (:data:`ALLOCATORS`).
    """
    allocator = spec.get("allocator", "glibc")
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator: expected one of {', '.join(ALLOCATORS)}, got {allocator!r}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(ALLOCATORS[allocator])
    result = json_child(["-m", "overflow_core.bench.scaling", json.dumps(spec)], env, timeout_s, f"scaling point {spec}")
    result["allocator"] = allocator
    return result


def json_child(args: Sequence[str], env: dict[str, str], timeout_s: float, what: str) -> dict[str, Any]:
    """Run ``python ARGS`` in a fresh interpreter and return the last JSON object line it printed; a failure raises
    RuntimeError naming ``what`` with the end of the child's output."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    result: dict[str, Any] = json.loads(lines[-1])
    return result


PRE_26_BATCH_TOKENS = 16384  # the default max_batch_tokens before issue #26 (now 4,096 on a CPU)


@contextmanager
def baseline_prefill(oprm: Any) -> Iterator[None]:
    """Prefill as it was before the speed work of issue #26, for figures side by side in one run: transformers' own SSD
    scan and convolution (not :mod:`overflow_core.backends.ssd`), a heap trim after every micro-batch (not
    :class:`~overflow_core.memory.HeapBound`'s trim past a bound), and the default budget of then (16,384 tokens) when
    the engine's is the default. Not thread-safe: for benchmarks only."""
    import dataclasses

    import overflow_core.prefill as prefill_module

    backend = oprm.backend
    fast = getattr(backend, "fast_scan", None)
    rss = prefill_module.resident_bytes
    config = oprm.config
    if fast is not None:
        backend.fast_scan = False
    prefill_module.resident_bytes = lambda: None  # type: ignore[assignment]  # unknown size: HeapBound trims each batch
    if config.max_batch_tokens is None:
        oprm.config = dataclasses.replace(config, max_batch_tokens=PRE_26_BATCH_TOKENS)
    try:
        yield
    finally:
        oprm.config = config
        prefill_module.resident_bytes = rss  # type: ignore[assignment]
        if fast is not None:
            backend.fast_scan = fast


def _prefill_runs(oprm: Any, docs: Any, question: str, reps: int) -> dict[str, Any]:
    """``reps`` OPRM rank + vanilla prefill runs, interleaved: seconds and token counts."""
    o_pre, o_sel, v_pre = [], [], []
    o_tok = v_tok = padded = 0
    for _ in range(reps):
        r = oprm.rank(question, docs, k=1)
        o_pre.append(r.timings.prefill_s)
        o_sel.append(r.timings.select_s)
        o_tok, padded = r.usage.prompt_tokens, r.usage.padded_tokens
        a = oprm.answer(question, docs, mode="vanilla", max_new_tokens=1)
        v_pre.append(a.timings.prefill_s)
        v_tok = a.usage.prompt_tokens
    return {"o_pre": o_pre, "o_sel": o_sel, "v_pre": v_pre, "o_tok": o_tok, "v_tok": v_tok, "padded": padded}


def _extend(into: dict[str, Any], run: dict[str, Any]) -> None:
    for key in ("o_pre", "o_sel", "v_pre"):
        into[key].extend(run[key])
    into.update({k: run[k] for k in ("o_tok", "v_tok", "padded")})


def throughput(
    oprm: Any, tokens: int, *, reps: int = 3, seed: int = 0, baseline: bool = True, one_document: bool = False
) -> dict[str, Any]:
    """Prefill tokens/s of batched OPRM (:meth:`OPRM.rank`) and of vanilla (one sequence) on the same input.

    Each is run ``reps`` times after a warm-up; medians are reported. Vanilla decodes one token (its prefill is what is
    timed). ``oprm_prompt_tokens`` is larger than ``vanilla_prompt_tokens``: every chunk carries the prompt and question.
    With ``baseline``, the same runs again under :func:`baseline_prefill` (the prefill before issue #26), interleaved
    with the current ones rep by rep so that both see the same machine (each timed run after an untimed one in the same
    mode, since trimming after every batch leaves the next run to fault its memory back in): ``baseline_*`` figures and
    ``speedup_*`` ratios.
    """
    docs, question, measured = _haystack(oprm, tokens, seed, one_document=one_document)
    oprm.rank(WARM_QUESTION, docs[:2])
    oprm.answer(WARM_QUESTION, docs[:2], mode="vanilla", max_new_tokens=1)
    now: dict[str, Any] = {"o_pre": [], "o_sel": [], "v_pre": []}
    base: dict[str, Any] = {"o_pre": [], "o_sel": [], "v_pre": []}
    for _ in range(reps):
        if baseline:  # after a switch the heap is in the other mode's shape: one untimed pass before timing
            _prefill_runs(oprm, docs, question, 1)
        _extend(now, _prefill_runs(oprm, docs, question, 1))
        if baseline:
            with baseline_prefill(oprm):
                _prefill_runs(oprm, docs, question, 1)
                _extend(base, _prefill_runs(oprm, docs, question, 1))
    op, vp = statistics.median(now["o_pre"]), statistics.median(now["v_pre"])
    o_tok, v_tok = now["o_tok"], now["v_tok"]
    out: dict[str, Any] = {
        "tokens": tokens,
        "context_tokens": measured,
        "reps": reps,
        "max_batch_tokens": oprm.config.batch_tokens,
        "oprm_prompt_tokens": o_tok,
        "oprm_padded_tokens": now["padded"],
        "oprm_prefill_s": op,
        "oprm_select_s": statistics.median(now["o_sel"]),
        "oprm_prefill_tokens_per_s": o_tok / op,
        "vanilla_prompt_tokens": v_tok,
        "vanilla_prefill_s": vp,
        "vanilla_prefill_tokens_per_s": v_tok / vp,
        "oprm_vs_vanilla_prefill_time": op / vp,
        "oprm_vs_vanilla_tokens_per_s": (o_tok / op) / (v_tok / vp),
        "oprm_prefill_runs_s": now["o_pre"],
        "vanilla_prefill_runs_s": now["v_pre"],
    }
    if baseline:
        bop, bvp = statistics.median(base["o_pre"]), statistics.median(base["v_pre"])
        out.update(
            {
                "baseline": "before issue #26: transformers' SSD scan and convolution, a heap trim after every micro-batch, "
                "16,384-token batches",
                "baseline_oprm_prefill_s": bop,
                "baseline_oprm_prefill_tokens_per_s": o_tok / bop,
                "baseline_vanilla_prefill_s": bvp,
                "baseline_vanilla_prefill_tokens_per_s": v_tok / bvp,
                "baseline_oprm_vs_vanilla_prefill_time": bop / bvp,
                "speedup_oprm_prefill": bop / op,
                "speedup_vanilla_prefill": bvp / vp,
                "baseline_oprm_prefill_runs_s": base["o_pre"],
                "baseline_vanilla_prefill_runs_s": base["v_pre"],
            }
        )
    return out


def question_scaling(
    oprm: Any, tokens: int, questions: int, *, seed: int = 0, tick: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Per-question latency for 1..``questions`` questions over one corpus, with the state index and without.

    The corpus and questions come from :func:`overflow_core.bench.index_latency.make_corpus` (facts stated exactly once).
    After one untimed full pass over the corpus, each question is timed once through the index and once through
    :meth:`OPRM.answer` (full prefill). For N questions:
    with the index, ``(build + sum of the first N index answers) / N``; without, ``sum of the first N answers / N``.
    """
    from overflow_core.bench.index_latency import make_corpus

    docs, asked, corpus_tokens = make_corpus(oprm, tokens, questions, seed)
    oprm.rank(WARM_QUESTION, docs)  # untimed: the first pass over the corpus pays one-off costs (allocator growth)
    t0 = time.perf_counter()
    with PeakRss() as m:
        index = oprm.index(docs)
    build_s = time.perf_counter() - t0
    index.rank(WARM_QUESTION)
    fast, full, agree, right_fast, right_full = [], [], 0, 0, 0
    for q in asked:
        t0 = time.perf_counter()
        a = index.answer(q.text)
        t1 = time.perf_counter()
        b = oprm.answer(q.text, docs)
        t2 = time.perf_counter()
        fast.append(t1 - t0)
        full.append(t2 - t1)
        agree += int(a.text == b.text and a.not_found == b.not_found)
        right_fast += int(q.answer in a.text)
        right_full += int(q.answer in b.text)
        if tick is not None:
            tick()
    rows = []
    for n in range(1, len(asked) + 1):
        rows.append(
            {
                "questions": n,
                "with_index_s": (build_s + sum(fast[:n])) / n,
                "without_index_s": sum(full[:n]) / n,
            }
        )
    return {
        "corpus_tokens": corpus_tokens,
        "documents": len(docs),
        "chunks": len(index),
        "build_s": build_s,
        "build_rss_delta": m.delta,
        "index_bytes": index.nbytes,
        "index_answer_s": fast,
        "full_answer_s": full,
        "median_index_answer_s": statistics.median(fast),
        "median_full_answer_s": statistics.median(full),
        "agree": agree,
        "correct_with_index": right_fast,
        "correct_without_index": right_full,
        "rows": rows,
        "break_even_questions": next((r["questions"] for r in rows if r["with_index_s"] < r["without_index_s"]), None),
    }


def _main(argv: Sequence[str]) -> int:
    from transformers.utils import logging as hf_logging

    spec = json.loads(argv[0])
    logging.basicConfig(level=logging.WARNING)
    hf_logging.set_verbosity_error()
    print(json.dumps(length_point(spec)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
