"""``oprm bench``: run the benchmark and write its results; two focused commands for the engine's memory and throughput.

    oprm bench [--quick] [--model PATH] [--lengths 256,2048] [--samples N] [--tasks ...] [--methods ...]
               [--jsonl FILE] [--sections accuracy,throughput,questions,scaling,memory] [--out docs/results]
    oprm bench rank-memory [--model PATH] [--tokens 200000] [--budgets 4096,16384,65536]
    oprm bench throughput [--model PATH] [--tokens 65536] [--reps 3] [--max-batch-tokens N]
    oprm bench ray [--docs 96] [--workers 1,2] [--reps 5]  (distributed build and query on Ray, docs/scale-out.md)

The first writes ``NAME.json`` (every figure and the machine description), ``NAME.md`` (tables) and ``NAME_*.png`` into
``--out`` (NAME is ``bench``, or ``bench_quick`` with ``--quick``), shows a progress bar while it runs and prints rich
tables at the end. ``rank-memory`` prints the peak RSS of :meth:`OPRM.rank` over a long input next to the RSS before the
call, for several ``max_batch_tokens``, each point in a fresh process. ``throughput`` prints prefill tokens/s of batched
OPRM vs vanilla on one input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overflow_core.bench.methods import METHODS, require
from overflow_core.bench.runner import FULL, QUICK, SECTIONS, BenchSpec, Run
from overflow_core.bench.tasks import BENCH_SEED, TASKS

__all__ = ["main"]

MiB = 2**20


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(x)) for x in text.replace("_", "").split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(allowed)}, got {text!r}")
        return names

    return parse


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oprm bench",
        description="Benchmark OPRM against vanilla inference, OPRM + state index, embedding RAG and BM25 RAG.",
        epilog="Other commands: 'oprm bench rank-memory --help', 'oprm bench throughput --help', "
        "'oprm bench gpu --help'.",
    )
    p.add_argument("--quick", action="store_true", help="a small run (about 3 minutes on 2 cores)")
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--tasks", type=_names(TASKS), default=None, help=f"comma-separated, from {','.join(TASKS)}")
    p.add_argument("--lengths", type=_ints, default=None, help="context lengths in tokens, comma-separated")
    p.add_argument("--samples", type=int, default=None, help="items per task and length (default: per profile)")
    p.add_argument("--methods", type=_names(METHODS), default=None, help=f"comma-separated, from {','.join(METHODS)}")
    p.add_argument("--jsonl", default=None, help="your own {context, question, answers} JSONL instead of generated tasks")
    p.add_argument("--split", choices=("train", "heldout"), default="train", help="FactWorld split of generated tasks")
    p.add_argument("--seed", type=int, default=BENCH_SEED)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--sections", type=_names(SECTIONS), default=None, help=f"comma-separated, from {','.join(SECTIONS)}")
    p.add_argument("--scaling-lengths", type=_ints, default=None, help="context lengths of the scaling section")
    p.add_argument("--memory-tokens", type=int, default=None, help="input length of the memory section")
    p.add_argument("--budgets", type=_ints, default=None, help="max_batch_tokens values of the memory section")
    p.add_argument("--throughput-tokens", type=int, default=None, help="input length of the throughput section")
    p.add_argument("--long-from", type=int, default=None,
                   help="lengths from this on use only the single and absent tasks (full profile: 100000; 0: all tasks)")
    p.add_argument("--index-max-tokens", type=int, default=None,
                   help="run oprm+index only on items up to this length (full profile: 2048; 0: no limit)")
    p.add_argument("--mmap-tokens", type=int, default=None,
                   help="input length of the memory check with the mmap allocator (0: skip)")
    p.add_argument("--question-tokens", type=int, default=None, help="corpus length of the questions section")
    p.add_argument("--questions", type=int, default=None, help="questions of the questions section")
    p.add_argument("--out", default="docs/results", help="folder for the JSON, Markdown and PNG files")
    p.add_argument(
        "--name", default=None,
        help="file name stem (default: bench; bench_quick with --quick; bench_STEM with --jsonl STEM.jsonl)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def spec_from_args(args: argparse.Namespace) -> BenchSpec:
    """The :class:`BenchSpec` for parsed ``oprm bench`` arguments: the profile, then every explicit option."""
    profile: dict[str, Any] = dict(QUICK if args.quick else FULL)
    base = BenchSpec(**profile)
    values = dataclasses.asdict(base)
    lengths = args.lengths or base.lengths
    samples = {n: (args.samples if args.samples is not None else base.samples.get(n, min(base.samples.values())))
               for n in lengths}
    values.update(lengths=lengths, samples=samples, model=args.model, split=args.split, seed=args.seed,
                  threads=args.threads, jsonl=args.jsonl)
    for key, attr in (("tasks", "tasks"), ("methods", "methods"), ("scaling_lengths", "scaling_lengths"),
                      ("memory_tokens", "memory_tokens"), ("budgets", "memory_budgets"),
                      ("throughput_tokens", "throughput_tokens"), ("question_tokens", "question_tokens"),
                      ("questions", "questions")):
        if getattr(args, key) is not None:
            values[attr] = getattr(args, key)
    for key in ("long_from", "index_max_tokens", "mmap_tokens"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key) or None
    if args.sections is not None:
        values["sections"] = args.sections
    elif args.jsonl:
        values["sections"] = ("accuracy",)
    return BenchSpec(**values)


def output_name(args: argparse.Namespace) -> str:
    """The results' file stem: ``--name``, else ``bench`` / ``bench_quick``, else ``bench_STEM`` for ``--jsonl
    STEM.jsonl``, so a run on your own data never overwrites the generated tasks' committed ``bench.*``."""
    if args.name:
        return str(args.name)
    if args.jsonl:
        return f"bench_{Path(args.jsonl).stem}"
    return "bench_quick" if args.quick else "bench"


def _run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(list(argv))
    spec = spec_from_args(args)
    name = output_name(args)
    rich_console = require("rich.console", "oprm bench's terminal output")
    progress_mod = require("rich.progress", "oprm bench's progress bar")
    from overflow_core.bench import report

    _quiet_transformers()
    console = rich_console.Console(stderr=True)
    runner = Run(spec)
    with console.status("loading the model and generating the tasks"):
        runner.load()
    columns = (
        progress_mod.SpinnerColumn(),
        progress_mod.TextColumn("{task.description:<60}"),
        progress_mod.BarColumn(),
        progress_mod.MofNCompleteColumn(),
        progress_mod.TimeElapsedColumn(),
    )
    with progress_mod.Progress(*columns, console=console, disable=args.no_progress) as bar:
        total = runner.steps()
        task = bar.add_task("starting", total=total)
        state = {"done": -1}
        t0 = time.monotonic()

        def step(description: str) -> None:
            if state["done"] >= 0:
                bar.advance(task)
            state["done"] += 1
            bar.update(task, description=description)
            if not console.is_terminal and not args.no_progress:  # a log file gets one line per step instead of a bar
                console.print(f"[{time.monotonic() - t0:7.1f} s] {state['done'] + 1}/{total} {description}",
                              highlight=False)

        result = runner.execute(step)
        bar.advance(task)
        bar.update(task, description="done")
    result["command"] = " ".join(["oprm bench", *argv])
    paths = report.write(result, args.out, name, plots=not args.no_plots)
    out = rich_console.Console()
    if not out.is_terminal:
        out = rich_console.Console(width=150)
    for table in report.rich_tables({**result, "name": name}):
        out.print(table)
    out.print(f"took {result['seconds'] / 60:.1f} min; wrote " + ", ".join(str(p) for p in paths))
    return 0


def _quiet_transformers() -> None:
    """Hide transformers' "falling back to the PyTorch implementation" notices (one per kernel and process)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _rank_memory(argv: Sequence[str]) -> int:
    from overflow_core.bench.scaling import run_point

    p = argparse.ArgumentParser(
        prog="oprm bench rank-memory",
        description="Peak RSS of OPRM.rank over a long input vs the RSS before the call, for several max_batch_tokens; "
        "next to each, the same for an input that fills one micro-batch. Each point runs in a fresh process.",
    )
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=200_000, help="length of the long input")
    p.add_argument("--budgets", type=_ints, default=(4096, 16384, 65536), help="max_batch_tokens values")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--allocator", choices=("glibc", "mmap"), default="glibc",
                   help="glibc defaults, or MALLOC_MMAP_THRESHOLD_=131072 (RSS then tracks the memory held)")
    p.add_argument("--json", action="store_true", help="print the points as JSON")
    args = p.parse_args(list(argv))
    points = []
    print(f"{'max_batch_tokens':>16}  {'input tokens':>12}  {'chunks':>6}  {'rank s':>7}  {'RSS before':>11}  "
          f"{'peak RSS':>10}  {'peak - before':>13}", flush=True)
    for budget in args.budgets:
        for tokens in (budget, args.tokens):
            pt = run_point({"model": args.model, "tokens": tokens, "threads": args.threads, "max_batch_tokens": budget,
                            "allocator": args.allocator})
            points.append(pt)
            print(f"{budget:>16,}  {pt['context_tokens']:>12,}  {pt['chunks']:>6}  {pt['rank_s']:>7.2f}  "
                  f"{pt['rss_before'] / MiB:>7,.0f} MiB  {pt['rss_peak'] / MiB:>6,.0f} MiB  "
                  f"{pt['rss_delta'] / MiB:>9,.0f} MiB", flush=True)
    if args.json:
        print(json.dumps(points, indent=1))
    return 0


def _throughput(argv: Sequence[str]) -> int:
    import torch

    from overflow_core.bench import metrics
    from overflow_core.bench.scaling import throughput
    from overflow_core.engine import OPRM

    p = argparse.ArgumentParser(
        prog="oprm bench throughput",
        description="Prefill tokens/s of batched OPRM (every chunk + question, micro-batched) vs vanilla (the whole "
        "input as one sequence) on the same input, and both as a fraction of a GEMM peak measured now.",
    )
    p.add_argument("--model", default=None)
    p.add_argument("--tokens", type=int, default=65536, help="input length")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-batch-tokens", type=int, default=None)
    p.add_argument("--chunk-tokens", type=int, default=None, help="chunk size (default: the model's)")
    p.add_argument("--one-document", action="store_true", help="the input as one document, not ~220-token documents")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-baseline", action="store_true", help="skip the side-by-side run of the prefill before #26")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(list(argv))
    _quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"max_batch_tokens": args.max_batch_tokens, "chunk_tokens": args.chunk_tokens}
    oprm = OPRM.from_pretrained(args.model, **{k: v for k, v in settings.items() if v})
    gemm = metrics.gemm_peak()
    tp = throughput(oprm, args.tokens, reps=args.reps, baseline=not args.no_baseline, one_document=args.one_document)
    fpt = metrics.flops_per_token(oprm.model)
    tp["gemm_flops"] = gemm["flops"]
    tp["flops_per_token"] = fpt
    tp["oprm_roofline"] = metrics.roofline_fraction(fpt, tp["oprm_prefill_tokens_per_s"], gemm["flops"])
    tp["vanilla_roofline"] = metrics.roofline_fraction(fpt, tp["vanilla_prefill_tokens_per_s"], gemm["flops"])
    if args.json:
        print(json.dumps(tp, indent=1))
        return 0
    print(f"model {oprm.name}: {fpt / 1e6:.2f} MFLOP/token (2 x non-embedding params); max_batch_tokens "
          f"{oprm.config.batch_tokens:,}; chunk_tokens {oprm.config.chunk_tokens}; {torch.get_num_threads()} threads; "
          f"GEMM peak {gemm['flops'] / 1e9:.1f} GFLOP/s")
    print(f"input: {tp['context_tokens']:,} tokens; median of {args.reps} runs")
    for label, key in (("oprm (batched)", "oprm"), ("vanilla (1 sequence)", "vanilla")):
        print(f"  {label:<22} {tp[f'{key}_prompt_tokens']:>9,} tokens  {tp[f'{key}_prefill_s']:>7.3f} s  "
              f"{tp[f'{key}_prefill_tokens_per_s']:>9,.0f} tok/s  roofline {100 * tp[f'{key}_roofline']:.1f}%")
    print(f"OPRM prefill time / vanilla prefill time: {tp['oprm_vs_vanilla_prefill_time']:.2f}; "
          f"tokens/s ratio {tp['oprm_vs_vanilla_tokens_per_s']:.2f}")
    if "baseline" in tp:
        print(f"baseline ({tp['baseline']}), interleaved run by run:")
        for label, key in (("oprm (batched)", "oprm"), ("vanilla (1 sequence)", "vanilla")):
            print(f"  {label:<22} {tp[f'baseline_{key}_prefill_s']:>7.3f} s  "
                  f"{tp[f'baseline_{key}_prefill_tokens_per_s']:>9,.0f} tok/s  now x{tp[f'speedup_{key}_prefill']:.2f}")
        print(f"  baseline OPRM prefill time / vanilla prefill time: {tp['baseline_oprm_vs_vanilla_prefill_time']:.2f}")
    return 0


def _gpu(argv: Sequence[str]) -> int:
    from overflow_core.bench.gpu import main as gpu_main

    return gpu_main(argv)


def _ray(argv: Sequence[str]) -> int:
    from overflow_core.distributed.bench import main as ray_main

    return ray_main(argv)


COMMANDS = {"rank-memory": _rank_memory, "throughput": _throughput, "gpu": _gpu, "run": _run, "ray": _ray}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``oprm bench ARGS...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = _run
    if args and args[0] in COMMANDS:
        command = COMMANDS[args.pop(0)]
    try:
        return command(args)
    except ImportError as exc:
        sys.stderr.write(f"oprm bench: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
