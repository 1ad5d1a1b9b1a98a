"""Distributed build of a state index: Ray Data actors prefill the chunks and write shards, the driver commits once.

The steps:

1. **plan** (one Ray task): load the engine, chunk the documents (:meth:`OPRM.chunk`, so chunks are numbered exactly
   as on one machine) and make each chunk's ``prefix + chunk + infix`` prompt.
2. **prefill** (a Ray Data ``map_batches`` over an actor pool): each actor loads the engine once; each batch of rows
   is prefilled in micro-batches under the engine's token budget (:meth:`OPRM.prefill_batches`) and written as one
   shard (:func:`overflow_core.index.storage.write_shard`) under a fresh name into the shared index folder. A batch
   returns only the shard's record (name, sha256, each row's CRC-32) and the chunk numbers it holds: no state crosses
   the network.
3. **commit** (the driver): dedupe by chunk number (a shard is taken whole or not at all; chunks no shard holds are
   prefilled again), check every shard is visible and of its recorded size, write ONE manifest
   (:func:`~overflow_core.index.storage.commit`: the atomic ``os.replace``) and delete what no generation needs
   (:func:`~overflow_core.index.storage.collect_garbage`: shards of attempts that died, an older generation).

A worker that dies is restarted and its batch retried by Ray (Ray Data gives pool actors ``max_restarts=-1,
max_task_retries=-1``); the shard it was writing is never named by the manifest. The driver holds the folder's writer
lock for the whole build, so no other save collects the shards before the commit names them. The result is an
ordinary :class:`~overflow_core.index.StateIndex`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overflow_core.distributed.cluster import EngineSpec, check_capacity, connect, local_folder, unwrap
from overflow_core.errors import ConfigError, InputError, StateIndexError
from overflow_core.index import storage
from overflow_core.index.storage import DEFAULT_SHARD_BYTES, FORMAT, FORMAT_VERSION, ShardInfo, jsonable_metadata
from overflow_core.types import Chunk

__all__ = ["BuildReport", "build_index"]

logger = logging.getLogger(__name__)

FINGERPRINT_FIELDS = ("model", "tokenizer", "settings")


@dataclass(frozen=True)
class BuildReport:
    """What a distributed build did: chunks and shards committed, workers, passes over missing chunks, seconds."""

    path: Path
    chunks: int
    documents: int
    shards: int
    workers: int
    prompt_tokens: int
    passes: int
    seconds: float
    discarded_shards: tuple[str, ...] = field(default_factory=tuple)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.prompt_tokens / self.seconds if self.seconds > 0 else 0.0


def _plan(spec: EngineSpec, documents: Any) -> dict[str, Any]:
    """Chunk ``documents`` with the engine ``spec`` describes: chunks, their context prompts, the engine's fingerprint."""
    from overflow_core.index.fingerprint import model_info, settings_info, tokenizer_info

    engine = spec.load()
    chunks = engine.chunk(documents)
    return {
        "chunks": chunks,
        "prompts": [engine.context_prompt(c.ids) for c in chunks],
        "fingerprint": {
            "model": model_info(engine),
            "tokenizer": tokenizer_info(engine.tokenizer),
            "settings": settings_info(engine),
        },
    }


class Prefiller:
    """The Ray Data actor: loads the engine once, then prefills one batch of chunk prompts into one new shard per call.

    ``fail_once`` (tests only): a flag file; the first actor to reach its second batch while the file is missing
    creates it, leaves a partly written shard behind and kills its own process, as a worker dying mid-write would.
    """

    def __init__(
        self, spec: EngineSpec, folder: str, shard_bytes: int = DEFAULT_SHARD_BYTES, fail_once: str | None = None
    ) -> None:
        from overflow_core.index.fingerprint import model_info, settings_info, tokenizer_info

        self.engine = spec.load()
        self.folder = Path(folder)
        self.fail_once = fail_once
        self.shard_bytes = shard_bytes
        self.calls = 0
        e = self.engine
        fingerprint = {"model": model_info(e), "tokenizer": tokenizer_info(e.tokenizer), "settings": settings_info(e)}
        self.fingerprint = json.dumps(fingerprint, sort_keys=True)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Prefill the batch's prompts; every ``shard_bytes`` of finished rows go to a new shard (so a worker holds at
        most about that much state besides the micro-batch in flight). One output row per shard written."""
        import torch

        from overflow_core.index.storage import shard_name, state_to_tensors, write_shard

        e = self.engine
        indices = [int(i) for i in batch["index"]]
        prompts = [[int(t) for t in ids] for ids in batch["ids"]]
        out: dict[str, list[Any]] = {k: [] for k in ("shard", "indices", "tokens", "nbytes", "fingerprint", "pid")}
        pending: list[tuple[int, dict[str, torch.Tensor], int]] = []
        self.calls += 1

        def flush() -> None:
            if not pending:
                return
            name = shard_name(uuid.uuid4().hex[:12], 0)  # a fresh name per attempt: a retried batch never collides
            if self.fail_once and self.calls >= 2 and _claim(self.fail_once):
                with open(self.folder / name, "xb") as f:  # part of a shard, as a process killed mid-write leaves it
                    f.write(b"\0" * 64)
                os._exit(1)
            info = write_shard(self.folder, name, [row for _, row, _ in pending])
            out["shard"].append(json.dumps(info.to_dict()))
            out["indices"].append([indices[i] for i, _, _ in pending])
            out["tokens"].append([len(prompts[i]) for i, _, _ in pending])
            out["nbytes"].append([n for _, _, n in pending])
            out["fingerprint"].append(self.fingerprint)
            out["pid"].append(os.getpid())
            pending.clear()

        with torch.inference_mode():
            for b in e.prefill_batches(prompts):
                for j, i in enumerate(b.rows):
                    state = e.backend.select(b.state, [j])
                    pending.append((i, state_to_tensors(state), int(state.nbytes)))
                if sum(n for _, _, n in pending) >= self.shard_bytes:
                    flush()
        flush()
        done = sum(len(x) for x in out["indices"])
        assert done == len(prompts), f"prefill must yield every row once, got {done} of {len(prompts)}"
        return out


def _claim(flag: str) -> bool:
    try:
        os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def build_index(
    documents: Any,
    out: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    workers: int = 2,
    rows_per_shard: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    address: str | None = None,
    progress: bool | Callable[[int, int], None] = False,
    lock_timeout_s: float = 60.0,
    max_passes: int = 3,
    fail_once: str | None = None,
) -> BuildReport:
    """Build a state index over ``documents`` on a Ray cluster and commit it to the folder ``out``.

    Args:
        documents: anything :meth:`OPRM.answer` accepts (strings, ``(text, metadata)`` pairs, dicts, Documents).
        out: a folder every worker and the driver see at the same path (local disk on one machine; NFS, Lustre, EFS or
            a FUSE mount of an object store on a cluster). A new or empty folder, or an existing index (replaced).
        model: hub id or folder of the model (None: the bundled one); ``settings``: ``from_pretrained`` keywords.
        workers: actors in the pool, each with its own engine, ``num_cpus`` and ``num_gpus``.
        rows_per_shard: chunks per Ray Data batch: the unit a worker is handed and retried (default: about four
            batches per worker, at most 256). A batch is written as one shard, or several when its states pass
            ``shard_bytes`` (what a worker holds in memory besides the micro-batch it is prefilling).
        address: the cluster to join (None: the one this process is connected to, else a new local one).
        progress: True shows a tqdm bar of chunks done across workers; a callable gets ``(done, total)``.
        fail_once: tests only, see :class:`Prefiller`.

    Returns:
        A :class:`BuildReport`. ``StateIndex.load(out, engine)`` opens the result.

    Example:
        >>> from overflow_core.distributed import build_index
        >>> report = build_index(["... Alice Baker's locker number is 4412. ..."], "corpus.idx", workers=2)  # doctest: +SKIP
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected a positive number of actors, got {workers!r}")
    if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
        raise ConfigError(f"shard_bytes: expected a positive number of bytes, got {shard_bytes!r}")
    if rows_per_shard is not None and (isinstance(rows_per_shard, bool) or not isinstance(rows_per_shard, int)
                                       or not 1 <= rows_per_shard <= 99_999):  # fmt: skip
        raise ConfigError(f"rows_per_shard: expected a number of chunks from 1 to 99999, got {rows_per_shard!r}")
    folder = local_folder(out, "out")
    spec = EngineSpec.of(model, settings)
    storage.check_target(folder)  # refused before any worker starts
    ray = connect(address)
    # a pool larger than the cluster still builds (measured: --workers 4 on a 2-CPU local cluster), one of none hangs
    check_capacity(ray, 1, num_cpus, num_gpus, what="a build worker (num_cpus, num_gpus; oprm index --gpus-per-worker)")
    t0 = time.perf_counter()
    plan = _get(ray, ray.remote(_plan).options(num_cpus=num_cpus, num_gpus=num_gpus).remote(spec, documents))
    chunks: list[Chunk] = plan["chunks"]
    prompts: list[list[int]] = plan["prompts"]
    if not chunks:
        raise InputError("documents: expected at least one chunk of text, got none")
    per = rows_per_shard or max(1, min(256, -(-len(chunks) // (4 * workers))))
    storage.prepare_target(folder)
    with storage.writer_lock(folder, lock_timeout_s):
        storage.check_target(folder)  # again, under the lock
        placed, shards, discarded, passes = _prefill_all(
            ray, spec, folder, prompts, per, workers, num_cpus, num_gpus, plan["fingerprint"], progress, max_passes,
            shard_bytes, fail_once,
        )  # fmt: skip
        _check_visible(folder, shards)
        tag = uuid.uuid4().hex[:12]
        manifest = _manifest(plan["fingerprint"], chunks, prompts, placed, shards)
        storage.commit(folder, manifest, tag)
        storage.collect_garbage(folder, tag, [s.file for s in shards])
    return BuildReport(
        path=folder,
        chunks=len(chunks),
        documents=len({c.doc_index for c in chunks}),
        shards=len(shards),
        workers=workers,
        prompt_tokens=sum(len(p) for p in prompts),
        passes=passes,
        seconds=time.perf_counter() - t0,
        discarded_shards=tuple(discarded),
    )


def _get(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except Exception as exc:
        err = unwrap(exc)
        if err is exc:
            raise
        raise err from None


def _prefill_all(
    ray: Any,
    spec: EngineSpec,
    folder: Path,
    prompts: Sequence[Sequence[int]],
    per: int,
    workers: int,
    num_cpus: float,
    num_gpus: float,
    fingerprint: Mapping[str, Any],
    progress: bool | Callable[[int, int], None],
    max_passes: int,
    shard_bytes: int,
    fail_once: str | None,
) -> tuple[dict[int, tuple[str, int, int, int]], list[ShardInfo], list[str], int]:
    """Run the pipeline until every chunk is in exactly one accepted shard: chunk -> (shard, row, tokens, bytes)."""
    import ray.data
    from tqdm.auto import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled": ours is the chunk bar below
    expected = json.dumps(dict(fingerprint), sort_keys=True)
    placed: dict[int, tuple[str, int, int, int]] = {}
    shards: list[ShardInfo] = []
    discarded: list[str] = []
    total = len(prompts)
    bar = tqdm(total=total, unit="chunk", desc=f"indexing ({workers} workers)", disable=progress is not True)
    passes = 0
    try:
        while len(placed) < total and passes < max_passes:
            passes += 1
            todo = [i for i in range(total) if i not in placed]
            items = [{"index": i, "ids": list(prompts[i])} for i in todo]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), -(-len(items) // per))))
            out = ds.map_batches(
                Prefiller,
                fn_constructor_args=(spec, str(folder), shard_bytes, fail_once),
                batch_size=per,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(workers, -(-len(items) // per))),
                num_cpus=num_cpus,
                num_gpus=num_gpus,
            )  # Ray Data starts pool actors with max_restarts=-1, max_task_retries=-1: a dead worker's batch is retried
            try:
                for row in out.iter_rows():
                    if str(row["fingerprint"]) != expected:
                        raise StateIndexError(
                            "a worker loaded another model, tokenizer or settings than the plan (a node with another "
                            "dtype, device or model version?); every worker must load the same engine; nothing was "
                            "committed"
                        )
                    info = _shard_info(json.loads(str(row["shard"])))
                    indices = [int(i) for i in row["indices"]]
                    if any(i in placed for i in indices) or len(indices) != info.rows:
                        discarded.append(info.file)  # a retried batch whose first attempt also finished: keep one
                        continue
                    for r, (i, tok, nb) in enumerate(zip(indices, row["tokens"], row["nbytes"], strict=True)):
                        placed[i] = (info.file, r, int(tok), int(nb))
                    shards.append(info)
                    bar.update(len(indices))
                    if callable(progress):
                        progress(len(placed), total)
            except Exception as exc:
                err = unwrap(exc)
                if err is exc:
                    raise
                raise err from None
    finally:
        bar.close()
    if len(placed) < total:
        missing = sorted(set(range(total)) - set(placed))
        raise StateIndexError(
            f"{len(missing)} chunks (first: {missing[:5]}) were not prefilled after {passes} passes; nothing was committed"
        )
    return placed, shards, discarded, passes


def _shard_info(d: Mapping[str, Any]) -> ShardInfo:
    return ShardInfo(str(d["file"]), str(d["sha256"]), int(d["bytes"]), int(d["rows"]), tuple(d["row_crc32"]))


def _check_visible(folder: Path, shards: Sequence[ShardInfo]) -> None:
    """Every shard a worker reported is here, at its recorded size (a worker writing to its own local disk is caught)."""
    for s in shards:
        try:
            size = (folder / s.file).stat().st_size
        except FileNotFoundError:
            raise StateIndexError(
                f"out: shard {s.file}, written by a worker, is not visible at {str(folder)!r} from the driver: the "
                "folder must be one that every worker and the driver share (NFS, Lustre, EFS, a FUSE mount); nothing "
                "was committed"
            ) from None
        if size != s.bytes:
            raise StateIndexError(
                f"out: shard {s.file} has {size} bytes at {str(folder)!r}, its worker wrote {s.bytes}; nothing was committed"
            )


def _manifest(
    fingerprint: Mapping[str, Any],
    chunks: Sequence[Chunk],
    prompts: Sequence[Sequence[int]],
    placed: Mapping[int, tuple[str, int, int, int]],
    shards: Sequence[ShardInfo],
) -> dict[str, Any]:
    """The manifest :meth:`StateIndex.save` would write for these chunks (same fields, same order)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **{k: fingerprint[k] for k in FINGERPRINT_FIELDS},
        "documents": len({c.doc_index for c in chunks}),
        "chunks": [
            {
                "doc_index": c.doc_index,
                "source": c.source,
                "start": c.start,
                "end": c.end,
                "text": c.text,
                "ids": list(c.ids),
                "metadata": jsonable_metadata(c.metadata),
                "tokens": placed[i][2],
                "bytes": placed[i][3],
                "shard": placed[i][0],
                "row": placed[i][1],
            }
            for i, c in enumerate(chunks)
        ],
        "shards": [s.to_dict() for s in sorted(shards, key=lambda s: s.file)],
    }
