"""``oprm longbench``: LongBench (v1, LongBench-E, v2) with OPRM and with vanilla inference, scored as LongBench scores.

    oprm longbench --data DIR [--model NAME_OR_PATH] [--datasets paper,v2,...] [--mode oprm,vanilla]
                   [--chunk-tokens 1000,2000,3000] [--limit N] --out FILE.jsonl

``FILE.jsonl`` gets one scored record per item and run, as each is done; running the same command again resumes (items
already there are skipped). Beside it go ``FILE.summary.json`` (every figure), ``FILE.md`` (the table, also printed)
and ``FILE.png`` (OPRM vs vanilla per dataset). ``--report-only`` rebuilds those from ``FILE.jsonl`` without a model.
See docs/longbench.md.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
from collections.abc import Sequence
from typing import Any

from overflow_core.errors import ConfigError, OverflowCoreError, install_extra
from overflow_core.longbench.data import PRESETS, find_sources
from overflow_core.longbench.report import output_paths, write
from overflow_core.longbench.runner import Runner, RunSettings, load_records

__all__ = ["main"]


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in _list(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="oprm longbench",
        description="LongBench (v1, LongBench-E, v2) with OPRM vs vanilla inference, scored with LongBench's metrics.",
        epilog="Presets for --datasets: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()),
    )
    p.add_argument("--data", required=True, metavar="DIR",
                   help="folder with LongBench's files (hotpotqa.jsonl, hotpotqa_e.jsonl, ..., v2's data.json)")
    p.add_argument("--out", required=True, metavar="FILE", help="results, one JSON line per item and run (resumable)")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                   help="what OPRM.from_pretrained takes (default: the bundled model)")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="dataset names (hotpotqa), NAME_e (LongBench-E), v2, or presets; comma or space separated "
                   "(default: every file in --data)")
    p.add_argument("--mode", type=_list, default=("oprm", "vanilla"), help="oprm, vanilla or both (default both)")
    p.add_argument("--chunk-tokens", type=_ints, default=(), metavar="L[,L...]",
                   help="OPRM chunk sizes, one run each (the paper: 2000, also 1000 and 3000; default: the model's)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N items of each dataset")
    p.add_argument("--budget", choices=("longbench", "paper"), default="longbench",
                   help="max new tokens per dataset: LongBench's (default) or the paper script's (20 for QA)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="cap every dataset's budget at N (quick runs)")
    p.add_argument("--chat-template", dest="chat", choices=("paper", "longbench", "none"), default="paper",
                   help="paper: every prompt in the chat template (default); longbench: not for few-shot and code; none")
    p.add_argument("--not-found", default=None, metavar="PHRASE",
                   help="the not-found phrase of the OPRM sentence (the paper: Error; default: the model's)")
    idk = p.add_mutually_exclusive_group()
    idk.add_argument("--idk-filter", dest="idk", action="store_true", default=None,
                     help="add the not-found sentence in OPRM mode and drop chunks that answer with it")
    idk.add_argument("--no-idk-filter", dest="idk", action="store_false",
                     help="no not-found sentence or filter (the paper's setting for Falcon3-Mamba)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: the loader's)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the loader's)")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a hub id")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's own code (RWKV6)")
    p.add_argument("--preset", default=None, help="settings preset (auto, paper, none, or a model's; docs/own-model.md)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="token budget of one prefill micro-batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true", help="rebuild the table, JSON and plot from --out; no model")
    return p


def _load(args: argparse.Namespace) -> Any:
    from overflow_core.engine import OPRM

    accepted = inspect.signature(OPRM.from_pretrained).parameters
    kwargs: dict[str, Any] = {}
    for name in ("device", "dtype", "revision", "trust_remote_code", "preset"):
        value = getattr(args, name)
        if value is None or value is False:
            continue
        if name not in accepted and name != "preset":  # preset goes through from_pretrained's settings
            raise ConfigError(f"--{name.replace('_', '-')}: this version of OPRM.from_pretrained does not take {name}")
        kwargs[name] = value
    if args.max_batch_tokens is not None:
        kwargs["max_batch_tokens"] = args.max_batch_tokens
    return OPRM.from_pretrained(args.model, **kwargs)


def _check_plot(args: argparse.Namespace) -> None:
    if args.no_plot:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the bar plot needs matplotlib: {install_extra('longbench')}, or pass --no-plot"
        ) from exc


def _check_out(out: str) -> None:
    """Refuse an unusable ``--out`` before the model loads: a folder, a path under a file, a file that holds no results."""
    from pathlib import Path

    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out}: expected a results file (e.g. {path / 'results.jsonl'}), got a folder")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    load_records(path)  # a file that is not a results file is refused here, untouched


def run(args: argparse.Namespace) -> int:
    _check_plot(args)
    _check_out(args.out)
    if args.report_only:
        records = load_records(args.out)
        if not records:
            raise ConfigError(f"--report-only: {args.out} holds no results")
    else:
        names = [n for chunk in (args.datasets or []) for n in chunk.split(",") if n.strip()] or None
        sources = find_sources(args.data, names)
        settings = RunSettings(
            modes=tuple(args.mode),
            chunk_tokens=tuple(args.chunk_tokens),
            budget=args.budget,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            chat=args.chat,
            idk=args.idk,
            not_found=args.not_found,
        )
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads: expected a positive number of threads, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        engine = _load(args)
        runner = Runner(engine, settings, args.out, progress=False if args.no_progress else None)
        sys.stderr.write(
            f"oprm longbench: {engine.name} on {', '.join(s.name for s in sources)}; runs "
            f"{', '.join(label for label in _labels(runner))}; results -> {args.out}\n"
        )
        records = runner.run(sources)
    from overflow_core.longbench.report import markdown

    summary = write(records, args.out, with_plot=not args.no_plot)
    sys.stdout.write(markdown(summary))
    paths = output_paths(args.out)
    written = [paths["summary"], paths["table"], *([] if args.no_plot else [paths["plot"]])]
    sys.stdout.write("\nwrote " + ", ".join(str(p) for p in written) + "\n")
    return 0


def _labels(runner: Runner) -> list[str]:
    from overflow_core.longbench.runner import run_label

    return [run_label(m, c) for m, c in runner.runs()]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``oprm longbench`` (also ``python -m overflow_core.longbench``)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return run(args)
    except OverflowCoreError as exc:
        sys.stderr.write(f"oprm longbench: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted; the results so far are in {args.out}, run the same command to resume\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
