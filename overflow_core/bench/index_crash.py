"""Crash safety and concurrent readers of the state index, with real processes.

    python -m overflow_core.bench.index_crash [--model PATH] [--runs 20] [--saves 20] [--readers 2] [--seed 0]

**Crash runs** (``--runs``): a saved index holds documents A. Each run copies it, starts a process that loads it, changes
it (adds documents B, or removes a document, or rebuilds it from B and saves over it) and saves; the parent kills that
process with SIGKILL at a random moment of its save (uniform over 0 to 1.3 times a measured save), then loads the folder.
The index must load, hold exactly the old or the new chunks, answer a question with exactly the old or the new ranking,
and take one more save, after which no file of the killed save is left.

**Concurrent readers** (``--saves``, ``--readers``): one process saves A and B alternately over one folder, ``--saves``
times; ``--readers`` other processes meanwhile load the folder and rank a question again and again, and each keeps one
index open across all the saves and queries it too. Every result must equal A's ranking or B's exactly (chunks and
entropies), with no error.

Prints each run and the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("add", "remove", "rebuild")
QUESTION = "What is the locker number of Alice Baker?"


def _engine(model: str | None) -> Any:
    import torch

    from overflow_core import OPRM

    torch.set_num_threads(1)
    return OPRM.from_pretrained(model, max_batch_tokens=4096)


def _documents() -> tuple[list[Any], list[Any]]:
    from overflow_core.testing import sample_documents

    docs = sample_documents(4, seed=7)
    return docs[:2], docs[2:]


def signature(index: Any, question: str = QUESTION) -> list[tuple[str, int, int, float]]:
    """What a reader sees: every chunk's source, span and entropy (rounded to 1e-5), in rank order."""
    ranking = index.rank(question)
    return [(str(s.chunk.source), s.chunk.start, s.chunk.end, round(float(s.entropy), 5)) for s in ranking.scores]


def _changed(index: Any, variant: str, engine: Any, a: list[Any], b: list[Any]) -> Any:
    from overflow_core.index import StateIndex

    if variant == "add":
        index.add(b)
        return index
    if variant == "remove":
        index.remove(str(a[0][1]["source"]))
        return index
    return StateIndex.build(engine, b)


def expected_chunks(engine: Any, variant: str, a: list[Any], b: list[Any]) -> list[str]:
    docs = {"add": a + b, "remove": a[1:], "rebuild": b}[variant]
    return [c.text for c in engine.chunk(docs)]


def _child_save(model: str | None, folder: str, variant: str) -> None:
    """The process that is killed: load, change, say "ready", save with one chunk per shard (many fsyncs)."""
    from overflow_core.index import StateIndex

    engine = _engine(model)
    a, b = _documents()
    index = _changed(StateIndex.load(folder, engine), variant, engine, a, b)
    print("ready", flush=True)
    t0 = time.perf_counter()
    index.save(folder, shard_bytes=1)
    print(f"saved {time.perf_counter() - t0:.4f}", flush=True)


def _writer(model: str | None, folder: str, saves: int) -> None:
    """Save A and B alternately over ``folder`` (each a fresh build, so every save replaces every shard)."""
    from overflow_core.index import StateIndex

    engine = _engine(model)
    a, b = _documents()
    built = [StateIndex.build(engine, a), StateIndex.build(engine, b)]
    print("ready", flush=True)
    for n in range(saves):
        index = StateIndex.build(engine, [a, b][n % 2]) if n >= 2 else built[n % 2]
        index.save(folder, shard_bytes=1)
        index.close()
    print("done", flush=True)


def _reader(model: str | None, folder: str, expected_path: str, stop_path: str) -> None:
    """Load and rank until ``stop_path`` exists; query one index held open all along too. Prints a JSON tally."""
    from overflow_core.index import StateIndex

    engine = _engine(model)
    expected = [[tuple(x) for x in sig] for sig in json.loads(Path(expected_path).read_text())]
    tally: dict[str, Any] = {"loads": 0, "held_queries": 0, "old": 0, "new": 0, "mixed": 0, "errors": 0, "messages": []}
    held = StateIndex.load(folder, engine)
    held_sig = signature(held)
    print("ready", flush=True)
    while not Path(stop_path).exists():
        try:
            sig = signature(StateIndex.load(folder, engine))
            tally["loads"] += 1
            if sig == expected[0]:
                tally["old"] += 1
            elif sig == expected[1]:
                tally["new"] += 1
            else:
                tally["mixed"] += 1
            tally["held_queries"] += 1
            if signature(held) != held_sig:
                tally["mixed"] += 1
        except Exception as exc:  # every error is a failure of the guarantee: counted and shown
            tally["errors"] += 1
            tally["messages"].append(f"{type(exc).__name__}: {exc}"[:300])
    print(json.dumps(tally), flush=True)


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "overflow_core.bench.index_crash", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _wait_line(proc: subprocess.Popen[str], word: str, timeout_s: float = 300.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited (code {proc.wait()}) before printing {word!r}")
        if line.startswith(word):
            return line.strip()
    raise RuntimeError(f"child did not print {word!r} within {timeout_s:g} s")


def crash_runs(
    model: str | None, runs: int, seed: int = 0, *, verbose: bool = True, kill_within_s: float | None = None
) -> dict[str, Any]:
    """``runs`` kill -9 runs (see the module docstring). Returns the tally: runs, killed mid-save, outcomes old / new,
    failures (with messages). ``kill_within_s`` skips the calibration saves: kills land uniformly in 0 to that."""
    from overflow_core.index import StateIndex, storage
    from overflow_core.index.storage import LEASE_NAME, SHARD_NAME

    rng = random.Random(seed)
    engine = _engine(model)
    a, b = _documents()
    tally: dict[str, Any] = {"runs": 0, "killed_mid_save": 0, "old": 0, "new": 0, "failed": 0, "messages": []}
    with tempfile.TemporaryDirectory(prefix="oprm-crash-") as tmp:
        template = Path(tmp) / "template"
        StateIndex.build(engine, a).save(template, shard_bytes=1)
        old_chunks = [c.text for c in engine.chunk(a)]
        old_sig = signature(StateIndex.load(template, engine))
        # calibrate: one save of each variant, not killed
        durations = dict.fromkeys(VARIANTS, (kill_within_s or 0.0) / 1.3)
        for variant in VARIANTS if kill_within_s is None else ():
            folder = Path(tmp) / f"calibrate-{variant}"
            shutil.copytree(template, folder)
            proc = _spawn("--child-save", str(folder), variant, *(["--model", model] if model else []))
            _wait_line(proc, "ready")
            durations[variant] = float(_wait_line(proc, "saved").split()[1])
            proc.wait()
        new_sigs = {}  # what a reader of the finished save sees: the same change, saved alike, loaded
        for variant in VARIANTS:
            folder = Path(tmp) / f"expected-{variant}"
            shutil.copytree(template, folder)
            changed = _changed(StateIndex.load(folder, engine), variant, engine, a, b)
            changed.save(folder, shard_bytes=1)
            new_sigs[variant] = signature(StateIndex.load(folder, engine))
        if verbose:
            shown = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in durations.items())
            print(f"save durations (not killed): {shown}")
        for run in range(runs):
            variant = VARIANTS[run % len(VARIANTS)]
            folder = Path(tmp) / f"run-{run:03d}"
            shutil.copytree(template, folder)
            proc = _spawn("--child-save", str(folder), variant, *(["--model", model] if model else []))
            _wait_line(proc, "ready")
            delay = rng.uniform(0.0, 1.3 * durations[variant])
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.stdout is not None
            finished = "saved" in proc.stdout.read()
            tally["runs"] += 1
            tally["killed_mid_save"] += not finished
            try:
                loaded = StateIndex.load(folder, engine)
                chunks = [c.text for c in loaded.chunks]
                sig = signature(loaded)
                if chunks == old_chunks and sig == old_sig:
                    outcome = "old"
                elif chunks == expected_chunks(engine, variant, a, b) and sig == new_sigs[variant]:
                    outcome = "new"
                else:
                    raise AssertionError("the index holds neither the old nor the new chunks and ranking")
                # the folder takes another save, and the killed save leaves nothing behind
                loaded.add([(a[0][0], {"source": "another.txt"})])
                loaded.save(folder, shard_bytes=1)
                loaded.close()
                again = StateIndex.load(folder, engine)
                names = {p.name for p in folder.iterdir()}
                live = set(again._shards)
                stray = {n for n in names if (SHARD_NAME.match(n) and n not in live) or ".tmp-" in n}
                current = f"generation-{storage.current_generation(folder)}.lease"
                stray |= {n for n in names if LEASE_NAME.match(n) and n != current}
                if stray:
                    raise AssertionError(f"files of the killed save left after the next save: {sorted(stray)[:3]}")
                again.close()
                tally[outcome] += 1
            except Exception as exc:
                outcome = "FAILED"
                tally["failed"] += 1
                tally["messages"].append(f"run {run}: {type(exc).__name__}: {exc}"[:300])
            if verbose:
                when = "during the save" if not finished else "after the save finished"
                print(f"run {run:3d}  {variant:<8} killed at {delay * 1000:6.1f} ms ({when:<23}) -> {outcome}")
            shutil.rmtree(folder, ignore_errors=True)
    return tally


def concurrent_readers(model: str | None, saves: int, readers: int, *, verbose: bool = True) -> dict[str, Any]:
    """One writer process, ``readers`` reader processes (see the module docstring). Returns the summed tally."""
    from overflow_core.index import StateIndex

    engine = _engine(model)
    a, b = _documents()
    with tempfile.TemporaryDirectory(prefix="oprm-readers-") as tmp:
        folder = Path(tmp) / "idx"
        first = StateIndex.build(engine, a)
        first.save(folder, shard_bytes=1)
        first.close()
        expected = []  # what a reader sees: each saved as the writer saves it, then loaded
        for name, docs in (("a", a), ("b", b)):
            StateIndex.build(engine, docs).save(Path(tmp) / name, shard_bytes=1)
            expected.append(signature(StateIndex.load(Path(tmp) / name, engine)))
        (Path(tmp) / "expected.json").write_text(json.dumps(expected))
        stop = Path(tmp) / "stop"
        extra = ["--model", model] if model else []
        procs = [
            _spawn("--reader", str(folder), str(Path(tmp) / "expected.json"), str(stop), *extra) for _ in range(readers)
        ]
        for proc in procs:
            _wait_line(proc, "ready")
        writer = _spawn("--writer", str(folder), str(saves), *extra)
        _wait_line(writer, "ready")
        t0 = time.perf_counter()
        _wait_line(writer, "done", timeout_s=1800)
        writer.wait()
        elapsed = time.perf_counter() - t0
        stop.touch()
        total: dict[str, Any] = {"saves": saves, "readers": readers, "seconds": round(elapsed, 2)}
        for proc in procs:
            assert proc.stdout is not None
            tally = json.loads(proc.stdout.read().strip().splitlines()[-1])
            proc.wait()
            for key, value in tally.items():
                total[key] = total.get(key, [] if isinstance(value, list) else 0) + value
    if verbose:
        print(
            f"{saves} saves in {elapsed:.1f} s while {readers} reader processes loaded and ranked: "
            f"{total['loads']} loads ({total['old']} saw A, {total['new']} saw B), {total['held_queries']} queries of "
            f"an index held open across every save, {total['mixed']} mixed results, {total['errors']} errors"
        )
        for message in total["messages"][:5]:
            print("  " + message)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m overflow_core.bench.index_crash", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--runs", type=int, default=20, help="kill -9 runs")
    parser.add_argument("--saves", type=int, default=20, help="saves by the writer while readers read")
    parser.add_argument("--readers", type=int, default=2, help="reader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-save", nargs=2, metavar=("FOLDER", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--writer", nargs=2, metavar=("FOLDER", "SAVES"), help=argparse.SUPPRESS)
    parser.add_argument("--reader", nargs=3, metavar=("FOLDER", "EXPECTED", "STOP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_save:
        _child_save(args.model, *args.child_save)
        return 0
    if args.writer:
        _writer(args.model, args.writer[0], int(args.writer[1]))
        return 0
    if args.reader:
        _reader(args.model, *args.reader)
        return 0
    failed = 0
    if args.runs:
        tally = crash_runs(args.model, args.runs, args.seed)
        print(
            f"crash runs: {tally['runs']} ({tally['killed_mid_save']} killed during the save); loaded the old index "
            f"{tally['old']}, the new {tally['new']}, failed {tally['failed']}"
        )
        for message in tally["messages"]:
            print("  " + message)
        failed += tally["failed"]
    if args.saves and args.readers:
        total = concurrent_readers(args.model, args.saves, args.readers)
        failed += total["errors"] + total["mixed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
