"""The ``oprm`` command: argument parsing and printing only; every decision is the engine's.

    oprm ask -q QUESTION FILE... [--model PATH] [--chunk-tokens N] [--mode oprm|summarize|vanilla] [--json]
    oprm ask -q QUESTION --index PATH
    oprm index FILE... --out PATH
    oprm demo
    oprm bench ...     (the benchmark harness, see overflow_core.bench)

User mistakes (a missing file, an empty question, an unsupported model...) print one line on stderr and exit with 2;
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from overflow_core.errors import OverflowCoreError
from overflow_core.types import Answer, Document, Ranking

__all__ = ["main", "read_documents"]

_MAX_FILE_BYTES = 512 * 2**20


def read_documents(paths: Sequence[str], stdin: TextIO | None = None) -> list[Document]:
    """Read text files (``-`` is standard input) as documents with ``metadata["source"]`` set to the path.

    Raises:
        InputError: a missing, empty, binary or undecodable file, or one too large to read.
    """
    from overflow_core.errors import InputError

    if not paths:
        raise InputError("FILE: expected at least one file (or - for standard input), got none")
    docs: list[Document] = []
    for name in paths:
        if name == "-":
            text = (stdin or sys.stdin).read()
            source = "<stdin>"
        else:
            path = Path(name)
            if not path.exists():
                raise InputError(f"{name}: no such file")
            if not path.is_file():
                raise InputError(f"{name}: expected a text file, got a directory or special file")
            size = path.stat().st_size
            if size > _MAX_FILE_BYTES:
                raise InputError(
                    f"{name}: expected at most {_MAX_FILE_BYTES // 2**20} MiB of text, got {size // 2**20} MiB"
                )
            raw = path.read_bytes()
            if b"\x00" in raw[:8192]:
                raise InputError(f"{name}: expected a text file, got binary data (NUL bytes)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{name}: expected UTF-8 text, could not decode byte {exc.start} ({exc.reason})"
                ) from exc
            source = name
        if not text.strip():
            raise InputError(f"{source}: expected text, got an empty file")
        docs.append(Document(text, {"source": source}))
    return docs


def _engine(args: argparse.Namespace) -> Any:
    from overflow_core.engine import OPRM

    settings: dict[str, Any] = {}
    for name in ("chunk_tokens", "max_batch_tokens"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return OPRM.from_pretrained(args.model, device=args.device, **settings)


def _progress_bar(enabled: bool) -> tuple[Any, Any]:
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="tok", desc="prefill", file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _print_scores(ranking: Ranking, out: TextIO, limit: int = 10) -> None:
    out.write(f"\n{'rank':>4}  {'entropy':>8}  {'idk':>3}  source [span]\n")
    for s in ranking.scores[:limit]:
        where = s.chunk.source or f"doc {s.chunk.doc_index}"
        out.write(
            f"{s.rank:>4}  {s.entropy:>8.4f}  {'yes' if s.idk else 'no':>3}  {where} [{s.chunk.start}:{s.chunk.end}]\n"
        )
    if len(ranking.scores) > limit:
        out.write(f"... {len(ranking.scores) - limit} more chunks\n")


def _print_answer(answer: Answer, out: TextIO) -> None:
    out.write(f"answer: {answer.text}\n")
    if answer.not_found:
        out.write("(not found: every chunk abstained or the model said it does not know)\n")
    if answer.chunk is not None:
        c = answer.chunk.chunk
        out.write(f"\nsource: {c.source or f'doc {c.doc_index}'} [{c.start}:{c.end}]\n")
        snippet = c.text if len(c.text) <= 400 else c.text[:400] + " ..."
        out.write("  " + snippet.replace("\n", "\n  ") + "\n")
    if answer.ranking is not None:
        _print_scores(answer.ranking, out)
    t, u = answer.timings, answer.usage
    out.write(
        f"\nprefill {t.prefill_s:.2f}s, select {t.select_s:.3f}s, decode {t.decode_s:.2f}s; "
        f"{u.prompt_tokens} prompt tokens ({u.padded_tokens} with padding), {u.generated_tokens} generated"
        + (f", {u.reused_tokens} reused from the index" if u.reused_tokens else "")
        + "\n"
    )


def _cmd_ask(args: argparse.Namespace) -> int:
    from overflow_core.errors import InputError

    engine = _engine(args)
    decoding = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    if args.index:
        if args.files:
            raise InputError("ask: give either FILE... or --index PATH, not both")
        from overflow_core.index import StateIndex

        answer = StateIndex.load(args.index, engine).answer(args.question, **decoding)
    else:
        docs = read_documents(args.files)
        bar, update = _progress_bar(not args.json and sys.stderr.isatty())
        try:
            answer = engine.answer(args.question, docs, mode=args.mode, progress=update, **decoding)
        finally:
            if bar is not None:
                bar.close()
    if args.json:
        sys.stdout.write(json.dumps(answer.to_dict(), indent=2) + "\n")
    else:
        _print_answer(answer, sys.stdout)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    engine = _engine(args)
    docs = read_documents(args.files)
    from overflow_core.index import StateIndex

    if args.append and Path(args.out).exists():
        index = StateIndex.load(args.out, engine)
        index.add(docs)
    else:
        index = engine.index(docs, progress=sys.stderr.isatty())
    index.save(args.out)
    sys.stdout.write(f"indexed {len(index)} chunks from {len(docs)} files into {args.out}\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from overflow_core.demo import run_demo

    return run_demo(model=args.model, out=sys.stdout)


def _cmd_eval_moved(args: argparse.Namespace) -> int:
    sys.stderr.write(
        "oprm eval: error: the bundled model's evaluation moved with its training recipe; from a clone of the "
        "repository run: python -m training.evaluate --help\n"
    )
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oprm", description="Overflow: model-native retrieval for recurrent LLMs (OPRM)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
        p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
        p.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk (default: the model's setting)")
        p.add_argument("--max-batch-tokens", type=int, default=None, help="token budget of one prefill micro-batch")

    ask = sub.add_parser("ask", help="answer a question over text files")
    ask.add_argument("-q", "--question", required=True)
    ask.add_argument("files", nargs="*", metavar="FILE", help="text files; - reads standard input")
    ask.add_argument("--index", default=None, metavar="PATH", help="answer from a saved state index instead of files")
    ask.add_argument("--mode", choices=["oprm", "summarize", "vanilla"], default="oprm")
    ask.add_argument("--max-new-tokens", type=int, default=None)
    ask.add_argument("--json", action="store_true", help="machine-readable output")
    model_options(ask)
    ask.set_defaults(func=_cmd_ask)

    index = sub.add_parser("index", help="build a state index over text files and save it")
    index.add_argument("files", nargs="+", metavar="FILE")
    index.add_argument("--out", required=True, metavar="PATH")
    index.add_argument("--append", action="store_true", help="add the files to an existing index at --out")
    model_options(index)
    index.set_defaults(func=_cmd_index)

    demo = sub.add_parser("demo", help="OPRM vs whole-context inference on the bundled demo corpus")
    demo.add_argument("--model", default=None)
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="run overflow_core.bench.cli (see its --help)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=None, target="overflow_core.bench.cli")

    evaluate = sub.add_parser("eval", help="moved: the bundled model's evaluation is python -m training.evaluate")
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(func=_cmd_eval_moved)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # their options (--quick...) are the module's: "--" stops oprm parsing them
        argv = [argv[0], "--", *argv[1:]]
    args = _parser().parse_args(argv)
    try:
        if args.func is None:  # bench: hand the rest of the command line to the module
            import importlib

            rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
            return int(importlib.import_module(args.target).main(rest) or 0)
        return int(args.func(args))
    except OverflowCoreError as exc:
        sys.stderr.write(f"oprm {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
