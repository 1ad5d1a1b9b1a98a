"""Writing a run's results: the JSON file (every figure), a Markdown page of tables, matplotlib PNGs, and rich tables.

Nothing here measures anything; it formats what :func:`overflow_core.bench.runner.run` returned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown", "plot", "rich_tables", "write"]

MiB = 2**20
COLOURS = {
    "vanilla": "tab:red",
    "oprm": "tab:green",
    "oprm+index": "tab:olive",
    "embedding-rag": "tab:blue",
    "bm25-rag": "tab:purple",
}


def _f(x: float | None, spec: str = ".2f", none: str = "–") -> str:
    return none if x is None else format(x, spec)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _mib(x: float | None) -> str:
    return "–" if x is None else f"{x / MiB:,.0f}"


def _length(n: int) -> str:
    if n == 0:
        return "user"
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}k"
    return f"{n:,}"


def _methods(result: dict[str, Any]) -> list[str]:
    return list(result["settings"]["methods"])


def _row(rows: Sequence[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return [*out, ""]


def accuracy_body(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the accuracy table: EM per method, or the not-found rate for tasks whose answers are absent."""
    methods = _methods(result)
    header = ["length", "task", "n", *methods]
    body = []
    rows = result.get("rows", [])
    keys = sorted({(r["length"], r["task"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for length, task in keys:
        cells = []
        n = 0
        for m in methods:
            r = _row(rows, length=length, task=task, method=m)
            if r is None:
                cells.append("–")
                continue
            n = r["n"]
            cells.append(_pct(r["not_found_rate"] if r["n_present"] == 0 else r["em"]))
        label = f"{task} (not-found rate)" if task == "absent" else task
        body.append([_length(length), label, str(n), *cells])
    return header, body


def markdown(result: dict[str, Any], images: Sequence[str] = ()) -> str:
    """The results as a Markdown page (tables, then the images given, relative to the page)."""
    m, mach, h = result["model"], result["machine"], result.get("headline", {})
    lines = [
        f"# Benchmark results: {result.get('name', 'bench')}",
        "",
        f"Command: `{result.get('command', 'oprm bench')}`; started {result['started']} UTC, took "
        f"{result['seconds'] / 60:.1f} min.",
        "",
        f"Machine: {mach['cpu']}, {mach['usable_cpus']} usable CPUs, {_f((mach['memory_bytes'] or 0) / 2**30, '.0f')} GiB "
        f"RAM, {mach['platform']}; Python {mach['python']}, torch {mach['torch']} ({mach['torch_threads']} threads), "
        f"transformers {mach['transformers']}.",
        "",
        f"Model: {m['name']} ({m['type']}, {m['params']:,} parameters, {m['non_embedding_params']:,} non-embedding; "
        f"{m['flops_per_token'] / 1e6:.2f} MFLOP/token counted as 2 x non-embedding parameters); chunk_tokens "
        f"{m['chunk_tokens']}, max_batch_tokens {m['max_batch_tokens']:,}, {m['dtype']}.",
        "",
        f"GEMM peak (float32 torch.matmul, {result['gemm']['size']}x{result['gemm']['size']}, best of "
        f"{result['gemm']['reps']}): {result['gemm']['flops'] / 1e9:.1f} GFLOP/s.",
        "",
    ]
    if h:
        lines += ["## Headline", ""] + [f"- {s}" for s in headline_lines(result)] + [""]
    if result.get("rows"):
        header, body = accuracy_body(result)
        lines += ["## Accuracy: exact match (not-found rate for absent answers)", "", *_table(header, body)]
        methods = [x for x in _methods(result) if x != "vanilla"]
        by_len = result["by_length"]
        body = []
        for length in sorted({r["length"] for r in by_len}):
            cells = []
            for x in methods:
                r = _row(by_len, length=length, method=x)
                cells.append("–" if r is None else f"{_pct(r['hit1'])} / {_pct(r['hit3'])}")
            body.append([_length(length), *cells])
        lines += ["## Retrieval: hit@1 / hit@3 (the chosen chunk holds the answer; answerable items)", ""]
        lines += _table(["length", *methods], body)
        body = []
        for r in sorted(by_len, key=lambda r: (r["length"], _methods(result).index(r["method"]))):
            body.append(
                [
                    _length(r["length"]),
                    r["method"],
                    str(r["n"]),
                    _f(r["context_tokens"], ",.0f"),
                    _f(r["prefill_s"], ".3f"),
                    _f(r["select_s"], ".3f"),
                    _f(r["decode_s"], ".3f"),
                    _f(r["total_s"], ".3f"),
                    _f(r["tokens_per_s"], ",.0f"),
                    _f(r["prefill_tokens_per_s"], ",.0f"),
                    _pct(r["roofline"]) if r["roofline"] is not None else "–",
                    _mib(r["rss_delta_max"]),
                ]
            )
        lines += ["## Cost per question (means over every task at that length)", ""]
        lines += _table(
            ["length", "method", "n", "context tok", "prefill s", "select s", "decode s", "total s", "tok/s",
             "prefill tok/s", "roofline", "peak RSS Δ MiB"],
            body,
        )
    tp = result.get("throughput")
    if tp:
        lines += [f"## Prefill throughput on the same {tp['context_tokens']:,}-token input (median of {tp['reps']})", ""]
        lines += _table(
            ["method", "tokens through the model", "prefill s", "prefill tok/s", "roofline"],
            [
                ["oprm (batched chunks)", f"{tp['oprm_prompt_tokens']:,}", _f(tp["oprm_prefill_s"], ".3f"),
                 _f(tp["oprm_prefill_tokens_per_s"], ",.0f"), _pct(tp["oprm_roofline"])],
                ["vanilla (one sequence)", f"{tp['vanilla_prompt_tokens']:,}", _f(tp["vanilla_prefill_s"], ".3f"),
                 _f(tp["vanilla_prefill_tokens_per_s"], ",.0f"), _pct(tp["vanilla_roofline"])],
            ],
        )
        if "baseline" in tp:
            lines += ["", f"Side by side in the same run, the baseline ({tp['baseline']}):", ""]
            lines += _table(
                ["method", "baseline prefill s", "baseline tok/s", "speed-up now"],
                [
                    [name, _f(tp[f"baseline_{key}_prefill_s"], ".3f"), _f(tp[f"baseline_{key}_prefill_tokens_per_s"], ",.0f"),
                     f"x{tp[f'speedup_{key}_prefill']:.2f}"]
                    for name, key in (("oprm (batched chunks)", "oprm"), ("vanilla (one sequence)", "vanilla"))
                ],
            )
    q = result.get("questions")
    if q and "rows" in q:
        lines += [
            f"## Per-question latency vs number of questions ({q['corpus_tokens']:,}-token corpus, {q['chunks']} chunks)",
            "",
            f"Index build {q['build_s']:.2f} s (peak RSS Δ {_mib(q['build_rss_delta'])} MiB, states "
            f"{_mib(q['index_bytes'])} MiB); median answer {q['median_index_answer_s']:.3f} s with the index, "
            f"{q['median_full_answer_s']:.3f} s with full prefill; same answers {q['agree']}/{len(q['index_answer_s'])}; "
            f"expected value in the answer {q['correct_with_index']} (index) vs {q['correct_without_index']} (full).",
            "",
        ]
        lines += _table(
            ["questions", "with index s/question (build amortised)", "without index s/question"],
            [[str(r["questions"]), _f(r["with_index_s"], ".3f"), _f(r["without_index_s"], ".3f")] for r in q["rows"]],
        )
    sc = result.get("scaling")
    if sc:
        lines += ["## OPRM rank vs context length (one fresh process per length)", ""]
        lines += _table(
            ["context tokens", "chunks", "tokens through the model", "rank s", "µs per token", "prefill tok/s",
             "RSS before MiB", "peak RSS MiB", "peak Δ MiB", "chunking alone Δ MiB"],
            [
                [f"{p['context_tokens']:,}", str(p["chunks"]), f"{p['prompt_tokens']:,}", _f(p["rank_s"], ".2f"),
                 _f(1e6 * p["rank_s"] / p["prompt_tokens"], ".1f"), _f(p["prefill_tokens_per_s"], ",.0f"),
                 _mib(p["rss_before"]), _mib(p["rss_peak"]),
                 _mib(p["rss_delta"]), _mib(p.get("chunking_rss_delta"))]
                for p in sc
            ],
        )
    mem = result.get("rank_memory")
    if mem:
        lines += [
            "## Peak memory of rank vs max_batch_tokens (one fresh process per point)",
            "",
            "`glibc`: the C library's default allocator settings, as a user's process runs. `mmap`: "
            "`MALLOC_MMAP_THRESHOLD_=131072`, so every allocation of 128 KiB or more is returned to the system when "
            "freed; RSS then tracks the memory the engine holds, without heap memory glibc keeps after frees.",
            "",
        ]
        lines += _table(
            ["max_batch_tokens", "allocator", "input", "context tokens", "rank s", "RSS before MiB", "peak RSS MiB",
             "peak Δ MiB"],
            [
                [f"{p['max_batch_tokens']:,}", p.get("allocator", "glibc"), p["input"], f"{p['context_tokens']:,}",
                 _f(p["rank_s"], ".2f"), _mib(p["rss_before"]), _mib(p["rss_peak"]), _mib(p["rss_delta"])]
                for p in mem
            ],
        )
    for image in images:
        lines += [f"![{Path(image).stem}]({image})", ""]
    return "\n".join(lines)


def headline_lines(result: dict[str, Any]) -> list[str]:
    """The headline figures as sentences."""
    h = result.get("headline", {})
    out = []
    if "longest_length" in h:
        out.append(
            f"At the longest length ({_length(h['longest_length'])} tokens): OPRM EM {_pct(h['oprm_em_longest'])} vs "
            f"vanilla {_pct(h['vanilla_em_longest'])}; not-found on absent answers OPRM "
            f"{_pct(h['oprm_not_found_rate_longest'])} vs vanilla {_pct(h['vanilla_not_found_rate_longest'])}; "
            f"EM at that length: OPRM+index {_pct(h['oprm_index_em_longest'])}, embedding RAG "
            f"{_pct(h['embedding_rag_em_longest'])}, BM25 RAG {_pct(h['bm25_rag_em_longest'])}."
        )
        n = h["oprm_n_present_all"]

        def pooled(key: str) -> str:  # a method that ran on fewer items (oprm+index stops at --index-max-tokens) says so
            other = h.get(f"{key}_n_present_all")
            return _pct(h[f"{key}_em_all"]) + (f" (of {other} items)" if other is not None and other != n else "")

        out.append(
            f"All lengths pooled ({n} answerable items): EM OPRM {pooled('oprm')}, OPRM+index {pooled('oprm_index')}, "
            f"embedding RAG {pooled('embedding_rag')}, BM25 RAG {pooled('bm25_rag')}, vanilla {pooled('vanilla')}."
        )
    pl = h.get("prefill_longest")
    if pl:
        out.append(
            f"Prefill on the same {_length(pl['length'])}-token inputs ({pl['items']} items, both methods): OPRM "
            f"{pl['oprm_prefill_s']:.1f} s vs vanilla {pl['vanilla_prefill_s']:.1f} s per item, time ratio "
            f"{pl['oprm_vs_vanilla_prefill_time']:.2f}x ({pl['oprm_prefill_tokens_per_s']:,.0f} vs "
            f"{pl['vanilla_prefill_tokens_per_s']:,.0f} tok/s; roofline fraction OPRM {_pct(pl['oprm_roofline'])}, "
            f"vanilla {_pct(pl['vanilla_roofline'])})."
        )
    if "oprm_prefill_s" in h:
        out.append(
            f"Prefill on the same {h['prefill_tokens']:,}-token input: OPRM {h['oprm_prefill_s']:.2f} s "
            f"({h['oprm_prefill_tokens_per_s']:,.0f} tok/s) vs vanilla {h['vanilla_prefill_s']:.2f} s "
            f"({h['vanilla_prefill_tokens_per_s']:,.0f} tok/s): time ratio {h['oprm_vs_vanilla_prefill_time']:.2f}x; "
            f"roofline fraction OPRM {_pct(h['oprm_roofline'])}, vanilla {_pct(h['vanilla_roofline'])}."
        )
    if "per_question_with_index_s" in h:
        out.append(
            f"{h['questions']} questions on one corpus: {h['per_question_with_index_s']:.3f} s per question with the index "
            f"(build amortised) vs {h['per_question_without_index_s']:.3f} s without ({h['index_speedup_at_n']:.1f}x); "
            f"a query alone is {h['index_query_speedup']:.1f}x faster; "
            + (f"the index pays off from {h['index_break_even_questions']} question(s)."
               if h["index_break_even_questions"] else f"the index does not pay off within {h['questions']} questions.")
        )
    if "scaling_max_tokens" in h:
        out.append(
            f"Context length up to {h['scaling_max_tokens']:,} tokens: rank time x{h['scaling_time_ratio']:.1f} for "
            f"x{h['scaling_token_ratio']:.1f} tokens; peak RSS Δ between {_mib(h['scaling_rss_delta_min'])} and "
            f"{_mib(h['scaling_rss_delta_max'])} MiB."
        )
    mem = h.get("rank_memory", [])
    for p in mem:
        one = next((q for q in mem if q["input"] == "one batch" and q["max_batch_tokens"] == p["max_batch_tokens"]
                    and q["allocator"] == p["allocator"]), None)
        if p["input"] == "long":
            out.append(
                f"rank over {p['context_tokens']:,} tokens, max_batch_tokens {p['max_batch_tokens']:,} ({p['allocator']}): "
                f"peak RSS {_mib(p['rss_peak'])} MiB, {_mib(p['rss_delta'])} MiB above the {_mib(p['rss_before'])} MiB "
                "before" + (f"; {_mib(one['rss_delta'])} MiB for an input of one micro-batch." if one else ".")
            )
    return out


def plot(result: dict[str, Any], folder: Path, name: str) -> list[Path]:
    """Write the PNGs for what the run measured; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def save(fig: Any, suffix: str) -> None:
        path = folder / f"{name}_{suffix}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    by_len = [r for r in result.get("by_length", []) if r["length"] > 0]
    if by_len:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
        for meth in _methods(result):
            rs = sorted((r for r in by_len if r["method"] == meth), key=lambda r: r["length"])
            c = COLOURS.get(meth)
            xs = [r["length"] for r in rs]
            ax1.plot(xs, [r["em"] for r in rs], marker="o", color=c, label=meth)
            ax2.plot(xs, [r["not_found_rate"] for r in rs], marker="o", color=c, label=meth)
            ax3.plot(xs, [r["total_s"] for r in rs], marker="o", color=c, label=meth)
        for ax, title in ((ax1, "exact match (answerable)"), (ax2, "not-found rate (absent answers)")):
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(title)
        ax3.set_yscale("log")
        ax3.set_title("seconds per question")
        for ax in (ax1, ax2, ax3):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context tokens")
            ax.grid(alpha=0.3)
        ax1.legend(fontsize=8)
        save(fig, "accuracy")
    sc = result.get("scaling")
    if sc:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        xs = [p["context_tokens"] for p in sc]
        ax1.plot(xs, [p["rank_s"] for p in sc], marker="o", color="tab:green", label="OPRM rank (measured)")
        slope = sc[-1]["rank_s"] / sc[-1]["context_tokens"]
        ax1.plot(xs, [slope * x for x in xs], "--", color="gray", label="linear through the last point")
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_ylabel("seconds")
        ax1.set_title("rank time vs context length")
        ax2.plot(xs, [p["rss_delta"] / MiB for p in sc], marker="o", color="tab:green", label="rank: peak RSS Δ")
        ax2.plot(xs, [(p.get("chunking_rss_delta") or 0) / MiB for p in sc], marker="s", color="tab:gray",
                 label="chunking alone: peak RSS Δ")
        ax2.set_xscale("log")
        ax2.set_ylabel("MiB above the RSS before the call")
        ax2.set_ylim(bottom=0)
        ax2.set_title(f"peak memory (max_batch_tokens {sc[0]['max_batch_tokens']:,})")
        for ax in (ax1, ax2):
            ax.set_xlabel("context tokens")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "scaling")
    q = result.get("questions")
    if q and "rows" in q:
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [r["questions"] for r in q["rows"]]
        ax.plot(ns, [r["with_index_s"] for r in q["rows"]], marker="o", color="tab:olive", label="with index (build amortised)")
        ax.plot(ns, [r["without_index_s"] for r in q["rows"]], marker="o", color="tab:green", label="without index")
        ax.set_xlabel("questions over one corpus")
        ax.set_ylabel("seconds per question")
        ax.set_title(f"{q['corpus_tokens']:,}-token corpus")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "questions")
    mem = result.get("rank_memory")
    if mem:
        fig, ax = plt.subplots(figsize=(7, 4))
        groups = sorted({(p.get("allocator", "glibc"), p["max_batch_tokens"]) for p in mem})
        width = 0.38
        for k, (kind, colour) in enumerate((("one batch", "tab:gray"), ("long", "tab:green"))):
            vals, labels = [], []
            for alloc, b in groups:
                match = [p for p in mem if p["max_batch_tokens"] == b and p["input"] == kind
                         and p.get("allocator", "glibc") == alloc]
                vals.append(match[0]["rss_delta"] / MiB if match else 0)
                labels.append(f"{match[0]['context_tokens']:,}" if match else "")
            label = "input of about one micro-batch" if kind == "one batch" else "long input"
            xs = [i + (k - 0.5) * width for i in range(len(groups))]
            ax.bar(xs, vals, width, color=colour, label=label)
            for x, v, t in zip(xs, vals, labels, strict=True):
                ax.text(x, v, f"{t}\ntok", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(groups)), [f"{b:,}\n{a}" for a, b in groups])
        ax.set_xlabel("max_batch_tokens / allocator")
        ax.set_ylabel("peak RSS Δ during rank (MiB)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
        save(fig, "memory")
    return paths


def write(result: dict[str, Any], folder: str | Path, name: str, *, plots: bool = True) -> list[Path]:
    """Write ``{name}.json``, ``{name}.md`` and the PNGs into ``folder``; returns the paths written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "name": name}
    images = plot(result, out, name) if plots else []
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    md_path = out / f"{name}.md"
    md_path.write_text(markdown(result, [p.name for p in images]) + "\n", encoding="utf-8")
    return [json_path, md_path, *images]


def rich_tables(result: dict[str, Any]) -> list[Any]:
    """rich renderables: the accuracy table, the cost table and the headline."""
    from rich.table import Table

    out: list[Any] = []
    if result.get("rows"):
        header, body = accuracy_body(result)
        t = Table(title="Accuracy: exact match (not-found rate for absent answers)")
        for i, col in enumerate(header):
            t.add_column(col, justify="left" if i < 2 else "right")
        for row in body:
            t.add_row(*row)
        out.append(t)
        t = Table(title="Cost per question (means)")
        for col in ("length", "method", "prefill s", "select s", "decode s", "total s", "tok/s", "hit@1", "peak Δ MiB"):
            t.add_column(col, justify="left" if col in ("length", "method") else "right")
        for r in sorted(result["by_length"], key=lambda r: (r["length"], _methods(result).index(r["method"]))):
            t.add_row(
                _length(r["length"]), r["method"], _f(r["prefill_s"], ".3f"), _f(r["select_s"], ".3f"),
                _f(r["decode_s"], ".3f"), _f(r["total_s"], ".3f"), _f(r["tokens_per_s"], ",.0f"), _pct(r["hit1"]),
                _mib(r["rss_delta_max"]),
            )
        out.append(t)
    lines = headline_lines(result)
    if lines:
        t = Table(title="Headline", show_header=False)
        t.add_column("")
        for line in lines:
            t.add_row(line)
        out.append(t)
    return out
