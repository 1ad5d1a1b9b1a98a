"""One benchmark run: build the items, run every method on every item, then the scaling measurements; return one dict.

Sections (each optional):

1. ``accuracy``: every method on every item; per call the answer, the chunks it chose, timings, tokens and peak RSS.
2. ``throughput``: prefill tokens/s of batched OPRM vs vanilla on one input, with the roofline fraction.
3. ``questions``: per-question latency against the number of questions, with and without the state index.
4. ``scaling``: OPRM rank time and peak memory against context length (one fresh process per length).
5. ``memory``: peak memory of ``rank`` over a long input for several ``max_batch_tokens`` budgets, next to the peak for an
   input that fills one micro-batch of that budget (one fresh process per point).

The GEMM peak used by the roofline fraction is measured at the start of the run, in this process.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from overflow_core.bench import metrics
from overflow_core.bench.memory import PeakRss
from overflow_core.bench.methods import METHODS, Method, Outcome, index_available, make_methods
from overflow_core.bench.tasks import BENCH_SEED, TASKS, Item, generate_all, load_jsonl
from overflow_core.errors import ConfigError

__all__ = ["FULL", "QUICK", "SECTIONS", "BenchSpec", "run"]

logger = logging.getLogger("overflow_core.bench")
SECTIONS = ("accuracy", "throughput", "questions", "scaling", "memory")
Step = Callable[[str], None]


@dataclass(frozen=True)
class BenchSpec:
    """What to run. ``samples`` maps each length to the number of items per task at that length."""

    model: str | None = None
    tasks: tuple[str, ...] = TASKS
    lengths: tuple[int, ...] = (256, 2048, 16384, 131072)
    samples: dict[int, int] = field(default_factory=lambda: {256: 3, 2048: 3, 16384: 1, 131072: 1})
    methods: tuple[str, ...] = METHODS
    jsonl: str | None = None
    split: str = "train"
    seed: int = BENCH_SEED
    threads: int | None = None
    sections: tuple[str, ...] = SECTIONS
    long_from: int | None = None  # lengths >= this use only ``long_tasks`` (to fit a time budget)
    long_tasks: tuple[str, ...] = ("single", "absent")
    index_max_tokens: int | None = None  # the oprm+index method runs only on items up to this length
    throughput_tokens: int = 16384
    throughput_reps: int = 2
    question_tokens: int = 16384
    questions: int = 6
    scaling_lengths: tuple[int, ...] = (16384, 200_000, 1_048_576)
    memory_tokens: int = 200_000
    memory_budgets: tuple[int, ...] = (4096, 16384)
    mmap_tokens: int | None = 65536  # also measure rank with the "mmap" allocator at the default budget (None: skip)
    gemm_sizes: tuple[int, ...] = (1024, 2048)

    def __post_init__(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise ConfigError(f"sections: expected some of {', '.join(SECTIONS)}, got {', '.join(bad)}")
        if any(n < 1 for n in self.lengths) or any(n < 1 for n in self.scaling_lengths):
            raise ConfigError("lengths: expected positive token counts")
        missing = [n for n in self.lengths if n not in self.samples]
        if missing:
            raise ConfigError(f"samples: expected a count for every length, missing {missing}")


# Profiles, sized for a 2-core CPU and the bundled model (about 2,000 prefill tokens/s there): ``oprm bench --quick``
# within 3 minutes, ``oprm bench`` within 30.
QUICK: dict[str, Any] = dict(
    lengths=(256, 2048),
    samples={256: 1, 2048: 1},
    throughput_tokens=8192,
    throughput_reps=1,
    question_tokens=4096,
    questions=3,
    scaling_lengths=(4096, 16384, 32768),
    memory_tokens=32768,
    memory_budgets=(4096, 16384),
    mmap_tokens=None,
    gemm_sizes=(1024,),
)
FULL: dict[str, Any] = dict(long_from=100_000, index_max_tokens=2048)


def _chunk_ref(chunk: Any) -> dict[str, Any] | None:
    if chunk is None:
        return None
    return {"index": chunk.index, "doc": chunk.doc_index, "start": chunk.start, "end": chunk.end}


def record(item: Item, method: str, out: Outcome, rss: PeakRss | None) -> dict[str, Any]:
    """One JSON-ready row for ``method`` on ``item``."""
    retrieval = method != "vanilla"
    hits = [metrics.chunk_hit(c.doc_index, c.start, c.end, c.text, item) for c in out.ranked]
    chosen = out.chosen
    present = not item.absent
    return {
        "item": item.id,
        "task": item.task,
        "length": item.length,
        "context_tokens": item.context_tokens,
        "method": method,
        "question": item.question,
        "answers": list(item.answers),
        "absent": item.absent,
        "prediction": out.text,
        "not_found": out.not_found,
        "em": metrics.exact_match(out.text, item.answers) if present else None,
        "hit1": (
            chosen is not None and metrics.chunk_hit(chosen.doc_index, chosen.start, chosen.end, chosen.text, item)
        )
        if present and retrieval
        else None,
        "hit3": metrics.hit_at_k(hits, 3) if present and retrieval else None,
        "chosen": _chunk_ref(chosen),
        "prefill_s": out.prefill_s,
        "select_s": out.select_s,
        "decode_s": out.decode_s,
        "total_s": out.total_s,
        "prompt_tokens": out.prompt_tokens,
        "generated_tokens": out.generated_tokens,
        "rss_before": rss.before if rss else None,
        "rss_peak": rss.peak if rss else None,
        "rss_delta": rss.delta if rss else None,
        "extra": out.extra,
    }


class Run:
    """A planned run: ``steps()`` for a progress bar, then ``execute(step)``."""

    def __init__(self, spec: BenchSpec, oprm: Any = None, *, encoder: Any = None) -> None:
        self.spec = spec
        self.oprm = oprm
        self.encoder = encoder
        self.has_index = index_available()
        names = [m for m in spec.methods if m != "oprm+index" or self.has_index]
        if len(names) < len(spec.methods):
            logger.warning("overflow_core.index is not importable: skipping the oprm+index method")
        self.method_names = tuple(names)
        self.items: list[Item] = []
        self._points: dict[str, dict[str, Any]] = {}

    def load(self) -> None:
        """Load the model (unless given) and build the items."""
        import torch

        if self.spec.threads:
            torch.set_num_threads(self.spec.threads)
        if self.oprm is None:
            from overflow_core.engine import OPRM

            self.oprm = OPRM.from_pretrained(self.spec.model)
        if "accuracy" in self.spec.sections:
            if self.spec.jsonl:
                self.items = load_jsonl(self.spec.jsonl, self.oprm.tokenizer)
            else:
                s = self.spec
                for length in s.lengths:
                    long = s.long_from is not None and length >= s.long_from
                    tasks = [t for t in s.tasks if t in s.long_tasks] if long else list(s.tasks)
                    self.items += generate_all(
                        tasks,
                        [length],
                        s.samples,
                        self.oprm.tokenizer,
                        seed=s.seed,
                        split=s.split,
                        not_found=self.oprm.config.not_found,
                    )

    def _runs(self, item: Item, method: str) -> bool:
        limit = self.spec.index_max_tokens
        return not (method == "oprm+index" and limit is not None and item.length > limit)

    def _point_specs(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The subprocess points of the scaling and memory sections. A point both need (same settings) runs once."""
        s = self.spec
        default = self.oprm.config.batch_tokens

        def point(tokens: int, budget: int, allocator: str = "glibc") -> dict[str, Any]:
            return {"model": s.model, "tokens": tokens, "threads": s.threads, "seed": s.seed, "chunking": True,
                    "max_batch_tokens": budget, "allocator": allocator}

        scaling = [point(n, default) for n in s.scaling_lengths] if "scaling" in s.sections else []
        memory: list[dict[str, Any]] = []
        if "memory" in s.sections:
            memory = [point(n, b) for b in s.memory_budgets for n in (b, s.memory_tokens)]
            if s.mmap_tokens:
                memory += [point(default, default, "mmap"), point(s.mmap_tokens, default, "mmap")]
        return scaling, memory

    def steps(self) -> int:
        s = self.spec
        n = 1  # GEMM peak
        if "accuracy" in s.sections:
            n += sum(self._runs(i, m) for i in self.items for m in self.method_names)
        n += int("throughput" in s.sections)
        if "questions" in s.sections and self.has_index:
            n += s.questions + 1
        scaling, memory = self._point_specs()
        n += len({json.dumps(p, sort_keys=True) for p in scaling + memory})
        return n

    def _point(self, spec: dict[str, Any], tick: Step, label: str) -> dict[str, Any]:
        from overflow_core.bench.scaling import run_point

        key = json.dumps(spec, sort_keys=True)
        if key not in self._points:
            tick(label)
            self._points[key] = run_point(spec)
        return dict(self._points[key])

    def execute(self, step: Step | None = None) -> dict[str, Any]:
        tick: Step = step or (lambda _desc: None)
        s, oprm = self.spec, self.oprm
        from overflow_core.bench.system import describe_machine, describe_model

        started = time.time()
        result: dict[str, Any] = {
            "version": 1,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": describe_machine(),
            "model": describe_model(oprm, s.model),
            "settings": {**asdict(self.spec), "methods": list(self.method_names)},
            "flops_per_token_note": (
                "2 x non-embedding parameters (input embedding and the once-per-row output head excluded; the scan's "
                "own arithmetic is not counted, so the roofline fraction is a lower bound)"
            ),
        }
        result["settings"]["samples"] = {str(k): v for k, v in s.samples.items()}
        tick("GEMM peak")
        result["gemm"] = metrics.gemm_peak(s.gemm_sizes)
        if "accuracy" in s.sections:
            result["records"] = self._accuracy(tick)
            result["rows"] = self._rows(result["records"], ("task", "length", "method"), result)
            result["by_length"] = self._rows(result["records"], ("length", "method"), result)
        if "throughput" in s.sections:
            from overflow_core.bench.scaling import throughput

            tick(f"throughput at {s.throughput_tokens:,} tokens")
            tp = throughput(oprm, s.throughput_tokens, reps=s.throughput_reps, seed=s.seed)
            peak, fpt = result["gemm"]["flops"], result["model"]["flops_per_token"]
            tp["oprm_roofline"] = metrics.roofline_fraction(fpt, tp["oprm_prefill_tokens_per_s"], peak)
            tp["vanilla_roofline"] = metrics.roofline_fraction(fpt, tp["vanilla_prefill_tokens_per_s"], peak)
            result["throughput"] = tp
        if "questions" in s.sections:
            if self.has_index:
                from overflow_core.bench.scaling import question_scaling

                tick(f"index build over {s.question_tokens:,} tokens")
                result["questions"] = question_scaling(
                    oprm, s.question_tokens, s.questions, seed=s.seed, tick=lambda: tick("questions: index vs full")
                )
            else:
                result["questions"] = {"skipped": "overflow_core.index is not importable"}
        scaling, memory = self._point_specs()
        if scaling:
            result["scaling"] = [
                self._point(p, tick, f"scaling: rank over {p['tokens']:,} tokens (subprocess)") for p in scaling
            ]
        if memory:
            rows = []
            for p in memory:
                label = f"memory: rank over {p['tokens']:,} tokens, budget {p['max_batch_tokens']:,}, {p['allocator']}"
                row = self._point(p, tick, label)
                row["input"] = "one batch" if p["tokens"] == p["max_batch_tokens"] else "long"
                rows.append(row)
            result["rank_memory"] = rows
        if "records" in result:
            result["prefill_longest"] = prefill_at_longest(result)
        result["seconds"] = time.time() - started
        result["headline"] = headline(result)
        return result

    def _accuracy(self, tick: Step) -> list[dict[str, Any]]:
        methods: list[Method] = make_methods(self.oprm, self.method_names, encoder=self.encoder)
        for m in methods:
            m.prepare()
        if self.items:  # warm-up: first calls pay one-off costs (thread pools, lazy imports); keep them out of timings
            warm = min(self.items, key=lambda i: i.context_tokens)
            for m in methods:
                m.run(warm)
        records = []
        for item in self.items:
            for m in methods:
                if not self._runs(item, m.name):
                    continue
                tick(f"{m.name}: {item.task} @ {item.length:,} tokens")
                with PeakRss() as rss:
                    out = m.run(item)
                records.append(record(item, m.name, out, rss))
        return records

    @staticmethod
    def _rows(records: Sequence[dict[str, Any]], keys: Sequence[str], result: dict[str, Any]) -> list[dict[str, Any]]:
        rows = metrics.aggregate(records, keys)
        peak, fpt = result["gemm"]["flops"], result["model"]["flops_per_token"]
        for row in rows:
            tps = row["prefill_tokens_per_s"]
            row["roofline"] = metrics.roofline_fraction(fpt, tps, peak) if tps else None
        return rows


def _pooled(result: dict[str, Any], method: str, length: int | None = None) -> dict[str, Any] | None:
    """The method's accuracy over every item (all lengths) or at one length, from the records."""
    recs = [r for r in result.get("records", []) if r["method"] == method and (length is None or r["length"] == length)]
    if not recs:
        return None
    return metrics.aggregate([{**r, "all": 0} for r in recs], ("all",))[0]


def prefill_at_longest(result: dict[str, Any]) -> dict[str, Any] | None:
    """OPRM vs vanilla prefill on the same inputs: the items of the longest length that both methods ran."""
    recs = result.get("records", [])
    if not recs:
        return None
    longest = max(r["length"] for r in recs)
    by = {(r["item"], r["method"]): r for r in recs if r["length"] == longest}
    items = sorted({i for i, m in by if m == "oprm" and (i, "vanilla") in by})
    if not items:
        return None
    o = [by[(i, "oprm")] for i in items]
    v = [by[(i, "vanilla")] for i in items]
    o_s, v_s = sum(r["prefill_s"] for r in o), sum(r["prefill_s"] for r in v)
    o_tps, v_tps = sum(r["prompt_tokens"] for r in o) / o_s, sum(r["prompt_tokens"] for r in v) / v_s
    peak, fpt = result["gemm"]["flops"], result["model"]["flops_per_token"]
    return {
        "length": longest,
        "items": len(items),
        "context_tokens": statistics.fmean(r["context_tokens"] for r in o),
        "oprm_prefill_s": o_s / len(items),
        "vanilla_prefill_s": v_s / len(items),
        "oprm_vs_vanilla_prefill_time": o_s / v_s,
        "oprm_prefill_tokens_per_s": o_tps,
        "vanilla_prefill_tokens_per_s": v_tps,
        "oprm_roofline": metrics.roofline_fraction(fpt, o_tps, peak),
        "vanilla_roofline": metrics.roofline_fraction(fpt, v_tps, peak),
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The ratios the issue asks for, from what the run measured (None where a section did not run)."""
    h: dict[str, Any] = {}
    lengths = sorted({r["length"] for r in result.get("records", [])})
    if lengths:
        longest = lengths[-1]
        h["longest_length"] = longest
        for name in ("oprm", "vanilla", "oprm+index", "embedding-rag", "bm25-rag"):
            at = _pooled(result, name, longest)
            every = _pooled(result, name)
            key = name.replace("+", "_").replace("-", "_")
            h[f"{key}_em_longest"] = at["em"] if at else None
            h[f"{key}_not_found_rate_longest"] = at["not_found_rate"] if at else None
            h[f"{key}_em_all"] = every["em"] if every else None
            h[f"{key}_n_present_all"] = every["n_present"] if every else None
    tp = result.get("throughput")
    if tp:
        h["prefill_tokens"] = tp["tokens"]
        h["oprm_prefill_s"] = tp["oprm_prefill_s"]
        h["vanilla_prefill_s"] = tp["vanilla_prefill_s"]
        h["oprm_vs_vanilla_prefill_time"] = tp["oprm_vs_vanilla_prefill_time"]
        h["oprm_prefill_tokens_per_s"] = tp["oprm_prefill_tokens_per_s"]
        h["vanilla_prefill_tokens_per_s"] = tp["vanilla_prefill_tokens_per_s"]
        h["oprm_roofline"] = tp["oprm_roofline"]
        h["vanilla_roofline"] = tp["vanilla_roofline"]
    q = result.get("questions")
    if q and "rows" in q:
        last = q["rows"][-1]
        h["questions"] = last["questions"]
        h["per_question_with_index_s"] = last["with_index_s"]
        h["per_question_without_index_s"] = last["without_index_s"]
        h["index_speedup_at_n"] = last["without_index_s"] / last["with_index_s"]
        h["index_query_speedup"] = q["median_full_answer_s"] / q["median_index_answer_s"]
        h["index_break_even_questions"] = q["break_even_questions"]
    pl = result.get("prefill_longest")
    if pl:
        h["prefill_longest"] = pl
    mem = result.get("rank_memory")
    if mem:
        h["rank_memory"] = [
            {
                "max_batch_tokens": p["max_batch_tokens"],
                "allocator": p["allocator"],
                "input": p["input"],
                "context_tokens": p["context_tokens"],
                "rss_before": p["rss_before"],
                "rss_peak": p["rss_peak"],
                "rss_delta": p["rss_delta"],
            }
            for p in mem
        ]
    sc = result.get("scaling")
    if sc and len(sc) >= 2:
        h["scaling_max_tokens"] = sc[-1]["context_tokens"]
        h["scaling_rss_delta_min"] = min(p["rss_delta"] for p in sc)
        h["scaling_rss_delta_max"] = max(p["rss_delta"] for p in sc)
        first, last = sc[0], sc[-1]
        h["scaling_time_ratio"] = last["rank_s"] / first["rank_s"]
        h["scaling_token_ratio"] = last["prompt_tokens"] / first["prompt_tokens"]
    return h


def run(spec: BenchSpec, oprm: Any = None, *, step: Step | None = None, encoder: Any = None) -> dict[str, Any]:
    """Run ``spec`` and return the results dict (no files written; see :mod:`overflow_core.bench.report`)."""
    r = Run(spec, oprm, encoder=encoder)
    r.load()
    return r.execute(step)
