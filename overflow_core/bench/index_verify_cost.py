"""What checking every row of state as it is read costs a state-index query, at a few index sizes.

    python -m overflow_core.bench.index_verify_cost [--model PATH] [--chunks 64,256,1024] [--repeats 5] [--threads 1]

For each size: builds an index of that many chunks (short chunks: a recurrent state has the same size whatever the
chunk's length, and a query feeds only the question, so the query's cost per chunk does not depend on it), saves and
loads it twice, with ``verify=True`` (the default: each row's CRC-32 checked as it is read) and ``verify=False``, and
times ``rank`` on each, alternating, ``--repeats`` times (the median is printed). Also times reading every row alone,
without the model, and the CRC-32 of what was read: the checksum's own speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from overflow_core import OPRM
from overflow_core.index import StateIndex

QUESTION = "What is the locker number of Alice Baker?"


def _documents(chunks: int, chunk_tokens: int, engine: OPRM) -> list[str]:
    from overflow_core.testing import sample_documents

    docs: list[str] = []
    seed = 0
    while sum(len(engine.chunk(d)) for d in docs) < chunks:
        docs.extend(text for text, _ in sample_documents(8, seed=seed))
        seed += 1
    out: list[str] = []
    total = 0
    for d in docs:
        n = len(engine.chunk(d))
        if total + n > chunks:
            continue
        out.append(d)
        total += n
    return out


def read_all(index: StateIndex) -> tuple[float, float]:
    """Seconds to read every stored row without the model, and seconds of CRC-32 over what was read."""
    from overflow_core.index.storage import row_checksum

    by_shard: dict[str, list[int]] = {}
    for slot in index._slots:
        assert slot.shard is not None
        by_shard.setdefault(slot.shard, []).append(slot.row)
    read = crc = 0.0
    for shard, rows in by_shard.items():
        t0 = time.perf_counter()
        with index._open_shard(shard) as reader:
            got = [reader.tensors(row) for row in rows]
        t1 = time.perf_counter()
        for tensors in got:
            row_checksum(tensors)
        read, crc = read + t1 - t0, crc + time.perf_counter() - t1
    return read, crc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m overflow_core.bench.index_verify_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--chunks", default="64,256,1024", help="index sizes, in chunks")
    parser.add_argument("--chunk-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device of the model (cpu, cuda)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    engine = OPRM.from_pretrained(args.model, chunk_tokens=args.chunk_tokens, device=args.device)
    dtype = next(engine.model.parameters()).dtype
    print(
        f"model {engine.name} ({engine.backend.name}, {dtype}, {args.device}), threads {args.threads}, "
        f"chunk_tokens {args.chunk_tokens}"
    )
    print(f"{'chunks':>7} {'MiB':>8} {'query s, checked':>17} {'unchecked':>10} {'overhead':>9} {'read s':>8} "
          f"{'CRC-32 s':>9} {'CRC GB/s':>9}")  # fmt: skip
    for chunks in [int(c) for c in args.chunks.split(",")]:
        docs = _documents(chunks, args.chunk_tokens, engine)
        with tempfile.TemporaryDirectory(prefix="oprm-verify-") as tmp:
            index = StateIndex.build(engine, docs)
            index.save(Path(tmp) / "idx")
            checked = StateIndex.load(Path(tmp) / "idx", engine)
            unchecked = StateIndex.load(Path(tmp) / "idx", engine, verify=False)
            checked.rank(QUESTION)  # warm the page cache and the model
            unchecked.rank(QUESTION)
            times: dict[str, list[float]] = {"checked": [], "unchecked": [], "read": [], "crc": []}
            for _ in range(args.repeats):
                for name, idx in (("checked", checked), ("unchecked", unchecked)):
                    t0 = time.perf_counter()
                    idx.rank(QUESTION)
                    if engine.device.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t0)
                read, crc = read_all(unchecked)
                times["read"].append(read)
                times["crc"].append(crc)
            med = {k: statistics.median(v) for k, v in times.items()}
            mib = checked.nbytes / 2**20
            crc = checked.nbytes / 1e9 / med["crc"]
            print(
                f"{len(checked):>7} {mib:>8.1f} {med['checked']:>17.3f} {med['unchecked']:>10.3f} "
                f"{100 * (med['checked'] / med['unchecked'] - 1):>8.1f}% {med['read']:>8.3f} {med['crc']:>9.3f} {crc:>9.2f}"
            )
            checked.close()
            unchecked.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
