"""What hashing every weight costs (the model fingerprint of a state index), measured on a 7B-sized folder.

    python -m overflow_core.bench.fingerprint_cost [--gb 14] [--folder DIR] [--threads N] [--keep]

Steps:

1. sha256 of 1 GiB in memory, one thread, then ``--threads`` threads on separate buffers: this machine's hashing speed.
2. Writes ``--gb`` GB of random bf16 tensors, shaped like a 7B model's layers (4096 x 4096 and 4096 x 11008 blocks),
   into safetensors files under ``--folder`` (default: a new temporary folder; refused when the disk has less than
   ``--gb`` + 2 GB free), then computes :func:`overflow_core.index.fingerprint.weights_digest` over all of them, reading
   the tensors through safetensors as ``from_pretrained`` does, twice (the second read mostly from the page cache when
   it fits in memory). The folder is deleted afterwards unless ``--keep``.
3. The cost of a repeated fingerprint in one process (the per-tensor digest memory): every tensor held, hashed again.

Prints each figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from overflow_core.index.fingerprint import weights_digest

_SHAPES = [(4096, 4096)] * 4 + [(11008, 4096)] * 3  # one 7B decoder layer: attention-sized and MLP-sized blocks


def hash_speed(threads: int) -> tuple[float, float]:
    """GB/s of sha256 over 1 GiB: one thread, then ``threads`` threads on a buffer each."""
    import hashlib

    data = os.urandom(2**30)
    t0 = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    one = 2**30 / 1e9 / (time.perf_counter() - t0)
    parts = [data[i * (2**30 // threads) : (i + 1) * (2**30 // threads)] for i in range(threads)]
    workers = [threading.Thread(target=lambda p=p: hashlib.sha256(p).hexdigest()) for p in parts]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    many = 2**30 / 1e9 / (time.perf_counter() - t0)
    return one, many


def write_folder(folder: Path, gb: float) -> tuple[int, int]:
    """Random bf16 tensors in files of about 2 GB until ``gb`` GB. Returns (bytes, tensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    total = count = n_file = 0
    target = int(gb * 1e9)
    noise = {shape: os.urandom(shape[0] * shape[1] * 2) for shape in set(_SHAPES)}  # random bytes, reused per shape
    while total < target:
        tensors: dict[str, torch.Tensor] = {}
        size = 0
        while size < 2e9 and total + size < target:
            shape = _SHAPES[count % len(_SHAPES)]
            # each tensor starts with its own number, so no two are alike
            data = bytearray(noise[shape])
            data[:8] = count.to_bytes(8, "little")
            tensors[f"model.layers.{count // len(_SHAPES)}.w{count % len(_SHAPES)}"] = torch.frombuffer(
                data, dtype=torch.bfloat16
            ).view(shape)
            size += shape[0] * shape[1] * 2
            count += 1
        save_file(tensors, str(folder / f"model-{n_file:05d}.safetensors"))
        total += size
        n_file += 1
        del tensors
    return total, count


def digest_folder(folder: Path, threads: int) -> float:
    """Seconds for weights_digest over every tensor of every safetensors file in ``folder``, read lazily."""
    from safetensors import safe_open

    handles = [safe_open(str(p), framework="pt", device="cpu") for p in sorted(folder.glob("*.safetensors"))]
    named = [(k, (lambda h=h, k=k: h.get_tensor(k))) for h in handles for k in h.keys()]  # noqa: SIM118
    t0 = time.perf_counter()
    weights_digest(named, threads=threads)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m overflow_core.bench.fingerprint_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--gb", type=float, default=14.0, help="size of the folder of weights (7B in bf16: about 14)")
    parser.add_argument("--folder", default=None, help="where to write it (default: a new temporary folder)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    args = parser.parse_args(argv)
    print(f"cpu cores {os.cpu_count()}, threads {args.threads}")
    one, many = hash_speed(args.threads)
    print(f"sha256 in memory: {one:.2f} GB/s on 1 thread, {many:.2f} GB/s on {args.threads} threads")
    base = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="oprm-fingerprint-"))
    free = shutil.disk_usage(base if base.exists() else base.parent).free / 1e9
    if free < args.gb + 2:
        print(f"refused: {free:.1f} GB free at {base}, {args.gb + 2:.1f} GB needed; pass a smaller --gb")
        return 2
    folder = base / "weights"
    try:
        t0 = time.perf_counter()
        size, count = write_folder(folder, args.gb)
        print(f"wrote {size / 1e9:.2f} GB in {count} tensors in {time.perf_counter() - t0:.1f} s to {folder}")
        for attempt in ("first", "second"):
            seconds = digest_folder(folder, args.threads)
            print(
                f"weights_digest, {attempt} read: {seconds:.1f} s ({size / 1e9 / seconds:.2f} GB/s; read from disk or "
                "page cache, then hashed)"
            )
        held = [(f"t{i}", torch.randint(-32768, 32767, (4096, 4096), dtype=torch.int16).view(torch.bfloat16))
                for i in range(16)]  # fmt: skip
        held_bytes = sum(t.numel() * 2 for _, t in held)
        t0 = time.perf_counter()
        weights_digest(held, threads=args.threads)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        weights_digest(held, threads=args.threads)
        again = time.perf_counter() - t0
        print(
            f"same tensors held in memory ({held_bytes / 1e9:.2f} GB): first fingerprint {first:.2f} s, again "
            f"{again * 1000:.1f} ms (digests remembered per unchanged tensor); for {size / 1e9:.0f} GB: "
            f"{again * size / held_bytes * 1000:.0f} ms"
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            if not args.folder:
                shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
