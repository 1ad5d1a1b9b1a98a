"""Benchmark metrics: pure functions over answers, chunks and timings, and the two machine measurements they need.

- ``exact_match``: the normalised answer equals one of the accepted answers (lower case, surrounding punctuation and
  whitespace stripped, inner whitespace collapsed).
- ``chunk_hit`` / ``hit_at_k``: a chosen chunk holds the answer. With the item's evidence span, the chunk must come from
  the evidence document and contain the whole value span; without it (a user's JSONL) the chunk's text must contain an
  accepted answer.
- ``flops_per_token``: 2 x the model's non-embedding parameters (each weight is one multiply and one add per token). The
  input embedding is a lookup and the output head runs once per row (``logits_to_keep=1``), not per token, so neither
  counts. The recurrent scan's own arithmetic is not counted either, so this is a lower bound on the work.
- ``gemm_peak``: the best ``torch.matmul`` throughput of square float32 matrices, measured now, in this process.
- ``roofline_fraction``: ``flops_per_token x tokens/s / gemm_peak``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from overflow_core.bench.tasks import Item

__all__ = [
    "aggregate",
    "chunk_hit",
    "exact_match",
    "flops_per_token",
    "gemm_peak",
    "hit_at_k",
    "normalize",
    "roofline_fraction",
]


def normalize(text: str) -> str:
    """Lower case, strip surrounding whitespace and ``.,;:!?"'`` , collapse inner whitespace."""
    return " ".join(text.strip().strip(".,;:!?\"'").strip().lower().split())


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """The normalised ``prediction`` equals a normalised accepted answer."""
    pred = normalize(prediction)
    return any(pred == normalize(a) for a in answers)


def chunk_hit(doc_index: int, start: int, end: int, text: str, item: Item) -> bool:
    """The chunk ``documents[doc_index][start:end]`` (``text``) holds ``item``'s answer; always False for absent items."""
    if item.absent:
        return False
    ev = item.evidence
    if ev is not None:
        return doc_index == ev.doc and start <= ev.start and ev.end <= end
    low = text.lower()
    return any(a.lower() in low for a in item.answers)


def hit_at_k(hits: Sequence[bool], k: int) -> bool:
    """Some chunk among the first ``k`` of a ranking (``hits[i]``: the i-th ranked chunk holds the answer) holds it."""
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    return any(hits[:k])


def flops_per_token(model: Any) -> int:
    """2 x non-embedding parameters of ``model`` (a ``torch.nn.Module`` with Hugging Face embedding accessors)."""
    skip: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            skip.update(id(p) for p in module.parameters())
    return 2 * sum(p.numel() for p in model.parameters() if id(p) not in skip)


def gemm_peak(sizes: Sequence[int] = (1024, 2048), reps: int = 5) -> dict[str, Any]:
    """Best measured float32 ``torch.matmul`` FLOP/s over square sizes: ``{"flops", "size", "per_size"}``."""
    import torch

    per_size: dict[str, float] = {}
    with torch.inference_mode():
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            torch.matmul(a, b)  # warm-up: thread pool start, first-touch of the output
            best = math.inf
            for _ in range(reps):
                t0 = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - t0)
            per_size[str(n)] = 2 * n**3 / best
    size = max(per_size, key=lambda s: per_size[s])
    return {"flops": per_size[size], "size": int(size), "per_size": per_size, "dtype": "float32", "reps": reps}


def roofline_fraction(flops_per_tok: float, tokens_per_s: float, peak_flops: float) -> float:
    """Achieved FLOP/s (``flops_per_tok x tokens_per_s``) as a fraction of ``peak_flops``."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops: expected > 0, got {peak_flops}")
    return flops_per_tok * tokens_per_s / peak_flops


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _rate(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def aggregate(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct ``keys`` tuple (e.g. ``("task", "length", "method")``) over per-call ``records``.

    A record holds ``absent``, ``em``, ``hit1``, ``hit3`` (None when not applicable), ``not_found``, ``prefill_s``,
    ``select_s``, ``decode_s``, ``total_s``, ``prompt_tokens``, ``context_tokens`` and ``rss_delta`` / ``rss_peak``.
    Rates are means over the records where they apply; ``tokens_per_s`` is context tokens over total seconds (how fast
    the method reads the context, end to end) and ``prefill_tokens_per_s`` prompt tokens over prefill seconds.
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, rs in groups.items():
        present = [r for r in rs if not r["absent"]]
        absent = [r for r in rs if r["absent"]]
        prefill_s = sum(r["prefill_s"] for r in rs)
        total_s = sum(r["total_s"] for r in rs)
        rows.append(
            {
                **dict(zip(keys, key, strict=False)),
                "n": len(rs),
                "n_present": len(present),
                "n_absent": len(absent),
                "em": _mean(r["em"] for r in present),
                "hit1": _mean(r["hit1"] for r in present),
                "hit3": _mean(r["hit3"] for r in present),
                "not_found_rate": _mean(float(r["not_found"]) for r in absent),
                "false_not_found_rate": _mean(float(r["not_found"]) for r in present),
                "context_tokens": _mean(r["context_tokens"] for r in rs),
                "prefill_s": _mean(r["prefill_s"] for r in rs),
                "select_s": _mean(r["select_s"] for r in rs),
                "decode_s": _mean(r["decode_s"] for r in rs),
                "total_s": _mean(r["total_s"] for r in rs),
                "tokens_per_s": _rate(sum(r["context_tokens"] for r in rs), total_s),
                "prefill_tokens_per_s": _rate(sum(r["prompt_tokens"] for r in rs), prefill_s),
                "rss_delta_max": max((r["rss_delta"] for r in rs if r.get("rss_delta") is not None), default=None),
                "rss_peak_max": max((r["rss_peak"] for r in rs if r.get("rss_peak") is not None), default=None),
            }
        )
    return rows
