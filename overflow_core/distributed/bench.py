"""``oprm bench ray``: build throughput of the distributed build with 1 and 2 (or more) workers next to the one-process
build, and the overhead of a distributed query over shard actors against the same index queried locally.

    oprm bench ray [--model PATH] [--docs 96] [--workers 1,2] [--reps 5] [--num-cpus N] [--address ADDR] [--json]

Every build writes the same corpus into a fresh folder under a temporary directory; times are wall-clock seconds from
the call to the committed manifest (the plan task, actor start-up and model loads included: what a user waits for).
On a machine with as many cores as workers, 2 workers measure the pipeline's overhead, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

QUESTIONS = ("What is the locker number of Alice Baker?", "Where does the ship Orbit dock?")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _median_time(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(model: str | None, docs: int, workers: Sequence[int], reps: int, num_cpus: int | None,
        address: str | None, threads: int = 1) -> dict[str, Any]:  # fmt: skip
    import torch

    torch.set_num_threads(threads)  # the one-process figures with as many threads as one Ray worker has (1 CPU each)

    from overflow_core.distributed import DistributedIndex, build_index, connect
    from overflow_core.engine import OPRM
    from overflow_core.index import StateIndex
    from overflow_core.testing import sample_documents

    corpus = sample_documents(docs, seed=7)
    engine = OPRM.from_pretrained(model)
    ray = connect(address, num_cpus=num_cpus)
    out: dict[str, Any] = {
        "model": engine.name,
        "documents": docs,
        "cpus": os.cpu_count(),
        "ray_cpus": ray.cluster_resources().get("CPU"),
        "torch_threads_driver": torch.get_num_threads(),
        "load_1min": os.getloadavg()[0],
        "builds": [],
    }
    with tempfile.TemporaryDirectory(prefix="oprm-bench-ray-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        local = StateIndex.build(engine, corpus)
        local.save(root / "local")
        local_s = time.perf_counter() - t0
        tokens = sum(len(engine.context_prompt(c.ids)) for c in local.chunks)
        out.update(chunks=len(local), prompt_tokens=tokens, bytes_per_chunk=local.bytes_per_chunk)
        out["builds"].append({"how": "one process (StateIndex.build + save)", "workers": 0, "seconds": local_s,
                              "chunks_per_s": len(local) / local_s, "tokens_per_s": tokens / local_s})  # fmt: skip
        for w in workers:
            report = build_index(corpus, root / f"ray{w}", model, workers=w)
            out["builds"].append({"how": f"Ray Data, {w} worker{'s' if w > 1 else ''}", "workers": w,
                                  "seconds": report.seconds, "shards": report.shards,
                                  "chunks_per_s": report.chunks_per_s, "tokens_per_s": report.tokens_per_s})  # fmt: skip
        loaded = StateIndex.load(root / "local", engine)
        shards = max(workers)
        query: dict[str, Any] = {"reps": reps, "shard_actors": shards}
        for q in QUESTIONS:  # warm both paths once
            loaded.answer(q)
        query["local_answer_s"] = _median_time(lambda: [loaded.answer(q) for q in QUESTIONS], reps) / len(QUESTIONS)
        query["local_rank_s"] = _median_time(lambda: [loaded.rank(q) for q in QUESTIONS], reps) / len(QUESTIONS)
        with DistributedIndex(root / f"ray{shards}", model, shard_actors=shards) as dist:
            for q in QUESTIONS:
                dist.answer(q)
            query["ray_answer_s"] = _median_time(lambda: [dist.answer(q) for q in QUESTIONS], reps) / len(QUESTIONS)
            query["ray_rank_s"] = _median_time(lambda: [dist.rank(q) for q in QUESTIONS], reps) / len(QUESTIONS)
            query["ray_answer_many_s"] = _median_time(lambda: dist.answer_many(list(QUESTIONS)), reps) / len(QUESTIONS)
        loaded.close()
        out["query"] = query
    out["load_1min_after"] = os.getloadavg()[0]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="oprm bench ray", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default=None, help="model folder or hub id (default: the bundled model)")
    p.add_argument("--docs", type=int, default=96, help="synthetic documents in the corpus (about 220 tokens each)")
    p.add_argument("--workers", type=_ints, default=(1, 2), help="worker counts to build with, comma-separated")
    p.add_argument("--reps", type=int, default=5, help="repetitions of each query timing (median)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--address", default=None, help="a running Ray cluster instead of a local one")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the one-process runs (a worker has 1 CPU)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(list(argv or ()))
    from overflow_core.distributed.cluster import require_ray

    require_ray(data=True)
    r = run(args.model, args.docs, args.workers, args.reps, args.num_cpus, args.address, args.threads)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"model {r['model']}; {r['documents']} documents, {r['chunks']} chunks, {r['prompt_tokens']:,} prompt tokens; "
          f"{r['bytes_per_chunk'] / 1024:.0f} KiB of state a chunk; {r['cpus']} cores, Ray CPUs {r['ray_cpus']}, "
          f"{r['torch_threads_driver']} torch thread(s) in one process; "
          f"load {r['load_1min']:.1f} before, {r['load_1min_after']:.1f} after")
    print(f"{'build':<40} {'seconds':>8} {'chunks/s':>9} {'tokens/s':>9}")
    for b in r["builds"]:
        print(f"{b['how']:<40} {b['seconds']:>8.1f} {b['chunks_per_s']:>9.1f} {b['tokens_per_s']:>9,.0f}")
    q = r["query"]
    print(f"query (median of {q['reps']}, per question), {q['shard_actors']} shard actors vs one process:")
    print(f"  answer: local {1000 * q['local_answer_s']:.0f} ms, Ray {1000 * q['ray_answer_s']:.0f} ms "
          f"(+{1000 * (q['ray_answer_s'] - q['local_answer_s']):.0f} ms); "
          f"answer_many {1000 * q['ray_answer_many_s']:.0f} ms")
    print(f"  rank:   local {1000 * q['local_rank_s']:.0f} ms, Ray {1000 * q['ray_rank_s']:.0f} ms "
          f"(+{1000 * (q['ray_rank_s'] - q['local_rank_s']):.0f} ms)")
    return 0
