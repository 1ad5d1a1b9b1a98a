"""The ``oprm`` command: argument parsing and printing only; every decision is the engine's.

    oprm ask -q QUESTION FILE... [--model NAME_OR_PATH] [--chunk-tokens N] [--mode oprm|summarize|vanilla] [--json]
    oprm ask -q QUESTION --index PATH [--ray [ADDRESS] --workers N]
    oprm index FILE... --out PATH [--ray [ADDRESS] --workers N]  (--ray: on a Ray cluster, see docs/scale-out.md)
    oprm demo
    oprm models [PATH]  (the supported families; with PATH, whether and how that model folder would run)
    (ask, index and demo load the model with --model NAME_OR_PATH --revision R --device D --dtype T
     --trust-remote-code --preset P; see docs/own-model.md)
    oprm bench ...     (the benchmark harness, see overflow_core.bench)
    oprm longbench ... (LongBench v1/E/v2, OPRM vs vanilla, see overflow_core.longbench)

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
from overflow_core.types import Answer, Document, Ranking, check_text

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
            stream = stdin or sys.stdin
            raw_in = getattr(stream, "buffer", None)  # the bytes, so that bad UTF-8 is an error, not a traceback
            text = _decode(raw_in.read(), "<stdin>") if raw_in is not None else stream.read()
            check_text("<stdin>", text)
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
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise InputError(f"{name}: could not read the file ({exc.strerror or exc})") from None
            text = _decode(raw, name)
            source = name
        if not text.strip():
            raise InputError(f"{source}: expected text, got an empty file")
        docs.append(Document(text, {"source": source}))
    return docs


def _decode(raw: bytes, name: str) -> str:
    """``raw`` as UTF-8 text (a BOM is dropped); binary data or bad UTF-8 is an InputError naming ``name``."""
    from overflow_core.errors import InputError

    nul = raw.find(b"\x00")
    if nul >= 0:
        raise InputError(f"{name}: expected a text file, got binary data (a NUL byte at {nul})")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: expected UTF-8 text, could not decode byte {exc.start} ({exc.reason})") from None


def _index_modes() -> tuple[str, ...]:
    """The ``--mode`` values a state index answers in: its ``MODES`` when it says, else the choices of its
    ``answer(mode=...)``, else ``oprm`` only. The one place ``oprm ask --index`` decides which modes it refuses."""
    import inspect
    import typing

    from overflow_core.index import StateIndex

    declared = getattr(StateIndex, "MODES", None)
    if declared:
        return tuple(declared)
    if "mode" not in inspect.signature(StateIndex.answer).parameters:
        return ("oprm",)
    try:
        modes = typing.get_args(typing.get_type_hints(StateIndex.answer).get("mode"))
    except Exception:  # annotations that cannot be resolved here: claim nothing beyond oprm
        return ("oprm",)
    return tuple(m for m in modes if isinstance(m, str)) or ("oprm",)


def _engine(args: argparse.Namespace) -> Any:
    from overflow_core.engine import OPRM

    settings: dict[str, Any] = {}
    for name in ("chunk_tokens", "max_batch_tokens"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    return OPRM.from_pretrained(args.model, **_load_options(args), **settings)


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    """How to load the model: ``--revision --device --dtype --trust-remote-code --preset`` as ``from_pretrained`` takes them."""
    options: dict[str, Any] = {
        "revision": args.revision,
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": args.trust_remote_code,
    }
    if args.preset is not None:
        options["preset"] = args.preset
    return options


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

    decoding: dict[str, Any] = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    if args.index:  # checked before the model loads
        if args.files:
            raise InputError("ask: give either FILE... or --index PATH, not both")
        modes = _index_modes()
        if args.mode not in modes:
            raise InputError(
                f"--mode {args.mode}: an index answers in {' or '.join(modes)} mode only; give the files instead of "
                f"--index for {args.mode} mode"
            )
        if modes != ("oprm",):
            decoding["mode"] = args.mode
    docs = None if args.index else read_documents(args.files)  # bad files are refused before the model loads
    if args.ray is not None:
        answer = _ray_ask(args, decoding)
        return _print_result(args, answer)
    engine = _engine(args)
    if docs is None:
        from overflow_core.index import StateIndex

        answer = StateIndex.load(args.index, engine).answer(args.question, **decoding)
    else:
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
    from overflow_core.errors import DuplicateSourceError, InputError
    from overflow_core.index import StateIndex, storage

    out = Path(args.out)
    storage.check_target(out)  # a file, a folder under a file, a folder of the user's: refused before the model loads
    append = args.append and storage.is_index(out)
    if args.append and not append and out.is_dir() and any(out.iterdir()):
        raise InputError(
            f"--append: expected an existing state index at {args.out!r}, found an unfinished one (its first save "
            "was interrupted); run without --append"
        )
    if args.append and not out.exists():
        raise InputError(f"--append: expected an existing state index at {args.out}, found nothing; run without --append")
    if args.replace and not args.append:
        raise InputError("--replace: re-indexes files of an existing index; use it with --append")
    docs = read_documents(args.files)
    if args.ray is not None:
        return _ray_index(args, docs, append)
    engine = _engine(args)
    if append:
        index = StateIndex.load(out, engine)
        try:
            index.add(docs, replace_sources=args.replace)
        except DuplicateSourceError as exc:
            more = f" (and {len(exc.sources) - 1} more)" if len(exc.sources) > 1 else ""
            raise InputError(
                f"{exc.sources[0]}{more}: already in the index at {args.out}; add --replace to re-index it"
            ) from None
        index.save(out)
        sources = {d.source for d in docs}
        added = sum(1 for c in index.chunks if c.source in sources)  # with --replace, the re-indexed ones too
        sys.stdout.write(f"indexed {added} chunks from {len(docs)} files into {args.out} ({len(index)} chunks in all)\n")
        return 0
    index = engine.index(docs, progress=sys.stderr.isatty())
    index.save(out)
    sys.stdout.write(f"indexed {len(index)} chunks from {len(docs)} files into {args.out}\n")
    return 0


def _ray_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What each Ray worker passes to ``OPRM.from_pretrained`` (as :func:`_engine` does here)."""
    settings = {k: getattr(args, k) for k in ("chunk_tokens", "max_batch_tokens") if getattr(args, k, None) is not None}
    return {**_load_options(args), **settings}


def _ray_check(args: argparse.Namespace) -> None:
    from overflow_core.distributed.cluster import require_ray
    from overflow_core.errors import InputError

    if args.workers < 1:
        raise InputError(f"--workers: expected a positive number, got {args.workers}")
    if args.gpus_per_worker < 0:
        raise InputError(f"--gpus-per-worker: expected a number >= 0, got {args.gpus_per_worker}")
    require_ray(data=True)  # one line naming the extra when ray is missing


def _ray_index(args: argparse.Namespace, docs: list[Document], append: bool) -> int:
    from overflow_core.distributed import build_index, connect
    from overflow_core.errors import InputError

    if args.append:
        raise InputError("--append: not supported with --ray; rebuild the index from all the files")
    _ray_check(args)
    connect(args.ray or None)
    report = build_index(
        docs, args.out, args.model, settings=_ray_settings(args), workers=args.workers, num_gpus=args.gpus_per_worker,
        progress=sys.stderr.isatty(),
    )
    sys.stdout.write(
        f"indexed {report.chunks} chunks from {len(docs)} files into {args.out} with {report.workers} Ray workers "
        f"({report.shards} shards, {report.seconds:.1f}s, {report.chunks_per_s:.1f} chunks/s)\n"
    )
    return 0


def _ray_ask(args: argparse.Namespace, decoding: dict[str, Any]) -> Answer:
    from overflow_core.distributed import DistributedIndex, connect
    from overflow_core.errors import InputError

    if not args.index:
        raise InputError("--ray: answers from a saved index only; give --index PATH (build it with oprm index --ray)")
    _ray_check(args)
    connect(args.ray or None)
    with DistributedIndex(
        args.index, args.model, settings=_ray_settings(args), shard_actors=args.workers, num_gpus=args.gpus_per_worker
    ) as index:
        return index.answer(args.question, **decoding)


def _print_result(args: argparse.Namespace, answer: Answer) -> int:
    if args.json:
        sys.stdout.write(json.dumps(answer.to_dict(), indent=2) + "\n")
    else:
        _print_answer(answer, sys.stdout)
    return 0


def _ray_options(p: argparse.ArgumentParser, workers: str) -> None:
    p.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="run on Ray: the cluster at ADDRESS (auto, ray://host:10001), or a local one without it "
        "(needs the ray extra: pip install -e '.[ray]')",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help=f"with --ray: {workers} (default 2)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --ray: GPUs each worker reserves (default 0)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from overflow_core.demo import run_demo

    return run_demo(model=args.model, out=sys.stdout, **_load_options(args))


def _cmd_models(args: argparse.Namespace) -> int:
    """Without PATH: the supported families. With PATH: whether and how that model folder would run (exit 1 if not)."""
    from overflow_core.backends import UNSUPPORTED, describe_checkpoint, family_table

    if args.path is None:
        rows = [("model_type", "family", "backend", "continuation", "public checkpoints"), *family_table()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + f"  {r[4]}\n")
        sys.stdout.write("\nrefused:\n")
        for model_type, why in UNSUPPORTED.items():
            sys.stdout.write(f"  {model_type}: {why}\n")
        return 0
    report = describe_checkpoint(args.path)
    sys.stdout.write("\n".join(report.lines()) + "\n")
    return 0 if report.runs else 1


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

    def load_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default=None, metavar="NAME_OR_PATH", help="model folder or hub id (default: the bundled model)"
        )
        p.add_argument("--revision", default=None, help="branch, tag or commit of a hub id (default: its main branch)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda or cuda:N")
        p.add_argument(
            "--dtype",
            default="auto",
            choices=["auto", "float32", "bfloat16", "float16"],
            help="auto: bfloat16 on CUDA, float32 on cpu",
        )
        p.add_argument(
            "--trust-remote-code", action="store_true", help="allow a checkpoint that ships its own Python code to run it"
        )
        p.add_argument(
            "--preset", default=None, help="settings preset: auto (default), paper, none, or a name from docs/own-model.md"
        )

    def model_options(p: argparse.ArgumentParser) -> None:
        load_options(p)
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
    _ray_options(ask, "shard actors the index is spread over")
    ask.set_defaults(func=_cmd_ask)

    index = sub.add_parser("index", help="build a state index over text files and save it")
    index.add_argument("files", nargs="+", metavar="FILE")
    index.add_argument("--out", required=True, metavar="PATH")
    index.add_argument("--append", action="store_true", help="add the files to an existing index at --out")
    index.add_argument(
        "--replace", action="store_true",
        help="with --append: re-index files the index already holds (without it they are refused)",
    )
    model_options(index)
    _ray_options(index, "workers that prefill the chunks, each with its own engine")
    index.set_defaults(func=_cmd_index)

    demo = sub.add_parser("demo", help="OPRM vs whole-context inference on the bundled demo corpus")
    load_options(demo)
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="run overflow_core.bench.cli (see its --help)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=None, target="overflow_core.bench.cli")

    longbench = sub.add_parser(
        "longbench", help="LongBench v1/E/v2, OPRM vs vanilla (see overflow_core.longbench.cli, --help)", add_help=False
    )
    longbench.add_argument("rest", nargs=argparse.REMAINDER)
    longbench.set_defaults(func=None, target="overflow_core.longbench.cli")

    models = sub.add_parser("models", help="the supported model families; with PATH, whether a model folder would run")
    models.add_argument("path", nargs="?", default=None, metavar="PATH", help="a model folder (config.json is read)")
    models.set_defaults(func=_cmd_models)

    evaluate = sub.add_parser("eval", help="moved: the bundled model's evaluation is python -m training.evaluate")
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(func=_cmd_eval_moved)
    return parser


def _no_weight_bars() -> None:
    """transformers draws a "Loading weights" bar on stderr for every model it loads; the command line's output is its
    answer and its own progress (``--progress``), so the bar is off in this process (the library API leaves it on)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["bench"], ["longbench"]):  # their options (--quick...) are the module's: "--" stops oprm parsing them
        argv = [argv[0], "--", *argv[1:]]
    args = _parser().parse_args(argv)
    _no_weight_bars()
    try:
        if args.func is None:  # bench: hand the rest of the command line to the module
            import importlib

            rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
            return int(importlib.import_module(args.target).main(rest) or 0)
        return int(args.func(args))
    except OverflowCoreError as exc:
        sys.stderr.write(f"oprm {args.command}: error: {exc}\n")
        return 2
    except OSError as exc:  # the system refused: disk full, I/O error, a device gone (an index save left nothing behind)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"oprm {args.command}: error: {exc.strerror or exc}{where}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
