"""Turning scored records into LongBench's figures: per dataset, per category, the averages, LongBench-E's length
buckets and LongBench v2's breakdown; a Markdown table and a bar plot of OPRM vs vanilla.

The averages are LongBench's: a dataset's score is ``round(100 * mean item score, 2)``; a category's score is the mean
of its datasets' scores; the average is the mean of the category scores, per language (English datasets and code for
"en", Chinese datasets and code for "zh", as LongBench's leaderboard counts code in both), and over every dataset for
"all". The plain mean over datasets is given beside it (the paper's figure does not say which it plots). LongBench-E
scores each dataset per length interval (0-4k, 4-8k, 8k+ words) and averages the intervals the same way. LongBench v2
reports accuracy overall, by difficulty (easy, hard) and by length (short, medium, long), rounded to one decimal.

Nothing here runs a model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from overflow_core.errors import install_extra
from overflow_core.longbench.datasets import CATEGORIES, DATASETS, E_BUCKETS, length_bucket

__all__ = ["markdown", "plot", "summarize", "write"]


def _runs(records: Iterable[dict[str, Any]]) -> list[str]:
    labels = {r["run"] for r in records}
    oprm = sorted((x for x in labels if x != "vanilla"), key=lambda x: int(x.split("@")[1]))
    return (["vanilla"] if "vanilla" in labels else []) + oprm


def _pct(scores: Sequence[float]) -> float | None:
    return round(100 * mean(scores), 2) if scores else None


def _averages(per_dataset: dict[str, float | None]) -> dict[str, float | None]:
    """LongBench's averages of one run: mean of category means per language, and the plain mean over datasets."""
    out: dict[str, float | None] = {}
    for lang in ("en", "zh", "all"):
        cats = []
        for cat in CATEGORIES:
            vals = [
                v
                for name, v in per_dataset.items()
                if v is not None
                and DATASETS[name].category == cat
                and (lang == "all" or DATASETS[name].language in (lang, "code"))
            ]
            if vals:
                cats.append(mean(vals))
        out[lang] = round(mean(cats), 2) if cats else None
    vals = [v for v in per_dataset.values() if v is not None]
    out["dataset_mean"] = round(mean(vals), 2) if vals else None
    return out


def _categories(per_dataset: dict[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for cat in CATEGORIES:
        vals = [v for n, v in per_dataset.items() if v is not None and DATASETS[n].category == cat]
        if vals:
            out[cat] = round(mean(vals), 2)
    return out


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every figure of a run, as plain data (what ``FILE.summary.json`` holds)."""
    runs = _runs(records)
    by: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by[(r["suite"], r["dataset"], r["run"])].append(r)
    out: dict[str, Any] = {"runs": runs, "config": records[0]["config"] if records else None}

    def counts(rs: list[dict[str, Any]]) -> dict[str, int]:
        return {
            "n": len(rs),
            "errors": sum(1 for r in rs if r.get("error")),
            "not_found": sum(1 for r in rs if r.get("not_found")),
        }

    v1_names = [n for n in DATASETS if any(k[0] == "v1" and k[1] == n for k in by)]
    if v1_names:
        table = {n: {run: _pct([r["score"] for r in by[("v1", n, run)]]) for run in runs} for n in v1_names}
        per_run = {run: {n: table[n][run] for n in v1_names} for run in runs}
        out["v1"] = {
            "datasets": {n: {run: {"score": table[n][run], **counts(by[("v1", n, run)])} for run in runs}
                         for n in v1_names},
            "categories": {run: _categories(per_run[run]) for run in runs},
            "average": {run: _averages(per_run[run]) for run in runs},
        }
    e_names = [n for n in DATASETS if any(k[0] == "e" and k[1] == n for k in by)]
    if e_names:
        datasets: dict[str, dict[str, dict[str, Any]]] = {}
        for n in e_names:
            datasets[n] = {}
            for run in runs:
                rs = by[("e", n, run)]
                buckets = {b: _pct([r["score"] for r in rs if length_bucket(int(r["length"] or 0)) == b])
                           for b in E_BUCKETS}
                datasets[n][run] = {**buckets, "all": _pct([r["score"] for r in rs]), **counts(rs)}
        average = {
            run: {b: _averages({n: datasets[n][run][b] for n in e_names})["all"] for b in (*E_BUCKETS, "all")}
            for run in runs
        }
        out["e"] = {"datasets": datasets, "average": average}
    if any(k[0] == "v2" for k in by):
        v2: dict[str, Any] = {}
        for run in runs:
            rs = by[("v2", "v2", run)]
            if not rs:
                continue

            def acc(sel: list[dict[str, Any]]) -> float | None:
                return round(100 * mean(r["score"] for r in sel), 1) if sel else None

            v2[run] = {
                "overall": acc(rs),
                **{d: acc([r for r in rs if r.get("difficulty") == d]) for d in ("easy", "hard")},
                **{ln: acc([r for r in rs if r.get("length") == ln]) for ln in ("short", "medium", "long")},
                "unparsed": sum(1 for r in rs if r.get("choice") is None),
                **counts(rs),
            }
        out["v2"] = v2
    return out


# -- table ------------------------------------------------------------------------------------------------------------
def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _delta(x: float | None, base: float | None) -> str:
    return "–" if x is None or base is None else f"{x - base:+.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _columns(runs: Sequence[str]) -> tuple[list[str], list[str]]:
    oprm = [r for r in runs if r != "vanilla"]
    deltas = [f"Δ {r}" for r in oprm] if "vanilla" in runs else []
    return list(runs), deltas


def _cells(values: dict[str, float | None], runs: Sequence[str]) -> list[str]:
    cells = [_f(values.get(r)) for r in runs]
    if "vanilla" in runs:
        cells += [_delta(values.get(r), values.get("vanilla")) for r in runs if r != "vanilla"]
    return cells


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables (what the command prints and writes to ``FILE.md``)."""
    runs = summary["runs"]
    cols, deltas = _columns(runs)
    lines: list[str] = []
    cfg = summary.get("config") or {}
    if cfg:
        lines += [f"Model `{cfg.get('model')}`; budget {cfg.get('budget')}; chat template: {cfg.get('chat')}; "
                  f"not-found sentence in OPRM mode: {'yes' if cfg.get('idk') else 'no'} "
                  f"(phrase {cfg.get('not_found')!r})", ""]
    if "v1" in summary:
        v1 = summary["v1"]
        rows = []
        for name, per in v1["datasets"].items():
            n = max(per[r]["n"] for r in runs)
            errs = sum(per[r]["errors"] for r in runs)
            label = f"{name} (n={n}{f', {errs} errors' if errs else ''})"
            rows.append([label, DATASETS[name].category, *_cells({r: per[r]["score"] for r in runs}, runs)])
        for cat in CATEGORIES:
            vals = {r: v1["categories"][r].get(cat) for r in runs}
            if any(v is not None for v in vals.values()):
                rows.append([f"*{cat}*", "category", *_cells(vals, runs)])
        names = {"en": "**Avg (en)**", "zh": "**Avg (zh)**", "all": "**Avg (all)**", "dataset_mean": "Mean of datasets"}
        for key, label in names.items():
            vals = {r: v1["average"][r][key] for r in runs}
            if any(v is not None for v in vals.values()):
                rows.append([label, "LongBench average" if key != "dataset_mean" else "", *_cells(vals, runs)])
        lines += ["### LongBench", "", *_table(["dataset", "category", *cols, *deltas], rows)]
    if "e" in summary:
        e = summary["e"]
        header = ["dataset", *(f"{r} {b}" for r in runs for b in (*E_BUCKETS, "all"))]
        rows = [[name, *(_f(per[r][b]) for r in runs for b in (*E_BUCKETS, "all"))] for name, per in e["datasets"].items()]
        rows.append(["**Avg**", *(_f(e["average"][r][b]) for r in runs for b in (*E_BUCKETS, "all"))])
        lines += ["### LongBench-E (by input length)", "", *_table(header, rows)]
    if "v2" in summary:
        keys = ("overall", "easy", "hard", "short", "medium", "long")
        rows = [[r, str(v["n"]), *(_f(v[k]) for k in keys), str(v["unparsed"])] for r, v in summary["v2"].items()]
        lines += ["### LongBench v2 (accuracy %)", "", *_table(["run", "n", *keys, "no answer parsed"], rows)]
    return "\n".join(lines).rstrip() + "\n"


# -- plot -------------------------------------------------------------------------------------------------------------
COLOURS = {"vanilla": "#9e9e9e"}
_OPRM_COLOURS = ("#2e7d32", "#66bb6a", "#1b5e20", "#a5d6a7")


def _bars(ax: Any, groups: Sequence[str], series: dict[str, list[float]], title: str, ylabel: str) -> None:
    import numpy as np

    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    for i, (run, values) in enumerate(series.items()):
        colour = COLOURS.get(run) or _OPRM_COLOURS[(i - ("vanilla" in series)) % len(_OPRM_COLOURS)]
        label = "vanilla" if run == "vanilla" else f"OPRM ({run.split('@')[1]} tok chunks)"
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=colour)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, max(1.0, *(v for vals in series.values() for v in vals)) * 1.1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot(summary: dict[str, Any], path: str | Path) -> Path:
    """Bar plots of OPRM vs vanilla: per dataset with the LongBench average last (the paper's figure), LongBench-E's
    average per length interval, LongBench v2's breakdown; one panel each, for what the summary holds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(f"the LongBench plot needs matplotlib: {install_extra('longbench')}") from exc
    runs = summary["runs"]
    panels = [k for k in ("v1", "e", "v2") if k in summary]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    model = (summary.get("config") or {}).get("model", "")
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        if panel == "v1":
            v1 = summary["v1"]
            # the paper's figure: English datasets and their average; with Chinese ones too, the average over all
            lang = "en" if all(DATASETS[n].language != "zh" for n in v1["datasets"]) else "all"
            groups = [*v1["datasets"], f"Avg ({lang})"]
            series = {r: [*(v1["datasets"][n][r]["score"] or 0.0 for n in v1["datasets"]),
                          v1["average"][r][lang] or 0.0] for r in runs}
            _bars(ax, groups, series, f"LongBench: OPRM vs vanilla ({model})", "score")
        elif panel == "e":
            groups = [*E_BUCKETS, "all"]
            series = {r: [summary["e"]["average"][r][b] or 0.0 for b in groups] for r in runs}
            _bars(ax, groups, series, "LongBench-E: average by input length (words)", "score")
        else:
            keys = ["overall", "easy", "hard", "short", "medium", "long"]
            v2 = summary["v2"]
            series = {r: [v2[r][k] or 0.0 for k in keys] for r in runs if r in v2}
            _bars(ax, keys, series, "LongBench v2", "accuracy %")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def output_paths(out: str | Path) -> dict[str, Path]:
    """Where the summary JSON, the Markdown table and the plot of results file ``out`` go (beside it)."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".jsonl", ".json") else out
    return {"summary": Path(f"{stem}.summary.json"), "table": Path(f"{stem}.md"), "plot": Path(f"{stem}.png")}


def write(records: Sequence[dict[str, Any]], out: str | Path, *, with_plot: bool = True) -> dict[str, Any]:
    """Write the summary JSON, the Markdown table and (``with_plot``) the bar plot beside ``out``; returns the summary."""
    summary = summarize(records)
    paths = output_paths(out)
    paths["summary"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["table"].write_text(markdown(summary), encoding="utf-8")
    if with_plot and records:
        plot(summary, paths["plot"])
    return summary
