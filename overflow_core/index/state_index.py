"""StateIndex: each chunk's recurrent state after ``prefix + chunk + infix``, computed once, reused for any question.

Building, adding, removing, ranking and answering live here; the folder format (manifest, shards, verification,
locking) is :mod:`overflow_core.index.storage`, the identity checks :mod:`overflow_core.index.fingerprint`. Scoring
and answering are the same functions the engine uses (:mod:`overflow_core.selection`, :mod:`overflow_core.answering`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from overflow_core import scoring
from overflow_core.answering import AnswerStream
from overflow_core.backends.base import Session, State
from overflow_core.config import check_k, check_seed
from overflow_core.errors import (
    ConfigError,
    DuplicateSourceError,
    IndexConflictError,
    IndexCorruptError,
    IndexMismatchError,
    InputError,
    StateIndexError,
)
from overflow_core.index import storage
from overflow_core.index.engine_api import Engine
from overflow_core.index.fingerprint import differences, model_info, settings_info, tokenizer_info
from overflow_core.index.storage import (
    DEFAULT_SHARD_BYTES,
    FORMAT,
    FORMAT_VERSION,
    Lease,
    ShardInfo,
    ShardReader,
    jsonable_metadata,
    state_to_tensors,
)
from overflow_core.prefill import plan_batches
from overflow_core.selection import Kept, Scored, batch_signals, enters_top, keep_best
from overflow_core.types import Answer, Chunk, Ranking, Timings, Usage

__all__ = ["StateIndex"]

_T = TypeVar("_T")


def _to_device(state: State, device: torch.device) -> State:
    return State(
        tensors={k: t.to(device) for k, t in state.tensors.items()},
        lengths=state.lengths.cpu(),
        mask=None if state.mask is None else state.mask.to(device),
        backend=state.backend,
    )


class _Snapshot:
    """The session's state, copied at most once and only when asked for."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._state: State | None = None

    def __call__(self) -> State:
        if self._state is None:
            self._state = self._session.state()
        return self._state


_DONE = object()


def _read_ahead(items: Iterator[_T]) -> Iterator[_T]:
    """The items of ``items``, each next one produced in a background thread while the caller works on the current one
    (reading and checking a shard's rows overlaps the forward of the batch before). Errors surface where the item would
    have; an abandoned iteration closes ``items`` (and so its open shard) before returning."""
    with ThreadPoolExecutor(1, thread_name_prefix="overflow-index-read") as pool:
        pending = pool.submit(next, items, _DONE)
        try:
            while (item := pending.result()) is not _DONE:
                pending = pool.submit(next, items, _DONE)
                yield item  # type: ignore[misc]
        finally:
            pending.cancel()
            with contextlib.suppress(Exception):  # an in-flight read after the caller stopped: nobody wants it
                pending.result()
            close = getattr(items, "close", None)
            if close is not None:
                pool.submit(close).result()


@dataclass
class _Slot:
    """One chunk of the index and where its state is: in memory, in a shard on disk, or both."""

    chunk: Chunk
    tokens: int  # length of prefix + chunk + infix: the tokens its state stands for
    nbytes: int  # bytes of its state tensors
    state: State | None = None  # one row, on the CPU
    shard: str | None = None  # file name in the index folder
    row: int = -1


class StateIndex:
    """Chunks of a corpus with the recurrent state after each chunk's ``prefix + chunk + infix``: ask questions by feeding
    only the question.

    Build one with :meth:`build` (or ``oprm.index(documents)``), persist it with :meth:`save`, reopen it with :meth:`load`.

    Example:
        >>> from overflow_core import OPRM
        >>> from overflow_core.index import StateIndex
        >>> oprm = OPRM.from_pretrained()
        >>> index = StateIndex.build(oprm, [("... Alice Baker's locker number is 4412. ...", {"source": "a.txt"})])
        >>> index.answer("What is the locker number of Alice Baker?").text  # doctest: +SKIP
        '4412'
        >>> index.save("corpus.oprm-index")
        >>> index = StateIndex.load("corpus.oprm-index", oprm)
    """

    MODES = ("oprm", "summarize")  # the answer modes an index supports (vanilla needs the documents themselves)

    def __init__(self, engine: Engine) -> None:
        """An empty index for ``engine``; use :meth:`build` or :meth:`load`."""
        self.engine = engine
        self._slots: list[_Slot] = []
        self._documents = 0
        self._folder: Path | None = None
        self._checksum: str | None = None  # the manifest version this index was loaded from or last saved as
        self._shards: dict[str, ShardInfo] = {}
        self._lease: Lease | None = None  # the generation of _folder this index reads; its shards stay while held
        self._verify = True  # check each row's CRC-32 as it is read

    # -- building -------------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, engine: Engine, documents: Any, *, progress: bool = False) -> StateIndex:
        """Index ``documents`` (anything :meth:`OPRM.answer` accepts) for ``engine``: chunk them and compute each chunk's
        state once, in micro-batches of at most ``engine.config.max_batch_tokens`` tokens. ``progress`` shows a tqdm bar.
        """
        index = cls(engine)
        index.add(documents, progress=progress)
        return index

    def add(self, documents: Any, *, progress: bool = False, replace_sources: bool = False) -> None:
        """Append the chunks of ``documents`` (numbered after those already in the index) and compute their states.

        A document whose ``metadata["source"]`` is already in the index is refused (its chunks would be there twice, and
        a top-k would hold copies) unless ``replace_sources=True``, which re-indexes it: its old chunks go once the new
        states are computed, so a failure leaves the index as it was. Documents without a source are not compared.
        """
        chunks = self.engine.chunk(documents)
        present = {c.source for c in chunks if c.source is not None} & {s.chunk.source for s in self._slots}
        if present and not replace_sources:
            first, more = sorted(present)[0], len(present) - 1
            raise DuplicateSourceError(
                f"documents: {first!r}{f' (and {more} more)' if more else ''} is already in the index; remove it "
                "first (index.remove(source)) or re-index it with add(..., replace_sources=True)",
                tuple(sorted(present)),
            )
        computed = self._compute(chunks, progress=progress)  # before anything changes: a failure leaves the index whole
        if present:
            self.remove(lambda c: c.source in present)  # one pass, one renumbering
        base, docs = len(self._slots), self._documents
        for slot in computed:
            slot.chunk = replace(slot.chunk, index=base + slot.chunk.index, doc_index=docs + slot.chunk.doc_index)
        self._slots.extend(computed)
        self._documents = docs + len({c.doc_index for c in chunks})

    def _compute(self, chunks: Sequence[Chunk], *, progress: bool) -> list[_Slot]:
        from tqdm.auto import tqdm

        e = self.engine
        prompts = [e.context_prompt(c.ids) for c in chunks]
        slots: list[_Slot | None] = [None] * len(chunks)
        with tqdm(total=sum(len(p) for p in prompts), unit="tok", desc="indexing", disable=not progress) as bar:
            for batch in e.prefill_batches(prompts):
                for j, i in enumerate(batch.rows):
                    state = _to_device(e.backend.select(batch.state, [j]), torch.device("cpu"))
                    slots[i] = _Slot(chunk=chunks[i], tokens=len(prompts[i]), nbytes=state.nbytes, state=state)
                    bar.update(len(prompts[i]))
        assert all(s is not None for s in slots), "prefill must yield every row once"
        return [s for s in slots if s is not None]

    def remove(self, source: str | Callable[[Chunk], bool]) -> int:
        """Drop the chunks of the document named ``source`` (its ``metadata["source"]``), or those for which
        ``source(chunk)`` is true; returns how many were dropped. Chunks and documents are renumbered from 0."""
        if not (isinstance(source, str) or callable(source)):
            raise InputError(f"source: expected a source name or a predicate on chunks, got {type(source).__name__}")
        match: Callable[[Chunk], bool] = (lambda c: c.source == source) if isinstance(source, str) else source
        kept = [s for s in self._slots if not match(s.chunk)]
        removed = len(self._slots) - len(kept)
        docs = {d: n for n, d in enumerate(sorted({s.chunk.doc_index for s in kept}))}
        for i, slot in enumerate(kept):
            slot.chunk = replace(slot.chunk, index=i, doc_index=docs[slot.chunk.doc_index])
        self._slots = kept
        self._documents = len(docs)
        return removed

    # -- what it holds --------------------------------------------------------------------------------------------------
    @property
    def chunks(self) -> list[Chunk]:
        """The indexed chunks, ``chunk.index`` counting from 0, as :meth:`OPRM.chunk` numbers them."""
        return [s.chunk for s in self._slots]

    @property
    def documents(self) -> int:
        """How many documents the chunks come from."""
        return self._documents

    @property
    def path(self) -> Path | None:
        """The folder the index was last saved to or loaded from (None until then)."""
        return self._folder

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def nbytes(self) -> int:
        """Bytes of all stored states (tensor data, as held in memory or in the shards)."""
        return sum(s.nbytes for s in self._slots)

    @property
    def bytes_per_chunk(self) -> float:
        """Mean bytes of state per chunk (the same for every chunk of a pure recurrent model)."""
        return self.nbytes / len(self._slots) if self._slots else 0.0

    def __repr__(self) -> str:
        where = f", path={str(self._folder)!r}" if self._folder else ""
        return (
            f"StateIndex(chunks={len(self)}, documents={self._documents}, bytes_per_chunk={self.bytes_per_chunk:.0f}"
            f"{where})"
        )

    # -- querying -------------------------------------------------------------------------------------------------------
    def rank(self, question: str, k: int | None = None) -> Ranking:
        """Score every chunk for ``question``, best first, cut to ``k`` when given. Equals ``engine.rank(question, docs)``.

        The states of the top ``k`` chunks after their full prompt go to the engine's state cache, as with
        :meth:`OPRM.rank`, so a chat model continuing one of those prompts next does not prefill it again.
        """
        k = check_k(k)
        q_ids = self.engine.encode_question(question)
        scored = self._score(question, q_ids, keep=min(k or 1, max(len(self._slots), 1)))
        return scored.ranking.cut(k)

    def answer(
        self,
        question: str,
        *,
        mode: Literal["oprm", "summarize"] = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> Answer:
        """Answer ``question`` from the indexed chunks: like :meth:`OPRM.answer` on the same documents, feeding only the
        question. ``mode`` is ``"oprm"`` or ``"summarize"``; ``decoding`` takes ``max_new_tokens``, ``temperature``,
        ``top_k``, ``top_p``, ``stop``."""
        pieces = self.stream_answer(question, mode=mode, k=k, seed=seed, **decoding)
        for _ in pieces:
            pass
        return pieces.result

    def stream(
        self,
        question: str,
        *,
        mode: Literal["oprm", "summarize"] = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> Iterator[str]:
        """Like :meth:`answer`, yielding the answer's text piece by piece as it is decoded."""
        yield from self.stream_answer(question, mode=mode, k=k, seed=seed, **decoding)

    def stream_answer(
        self,
        question: str,
        *,
        mode: Literal["oprm", "summarize"] = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> AnswerStream:
        """An iterator of text pieces whose ``result`` is the full :class:`Answer` once it is exhausted."""
        if mode not in ("oprm", "summarize"):
            raise ConfigError(f"mode: expected 'oprm' or 'summarize' with a state index, got {mode!r}")
        k, seed = check_k(k), check_seed(seed)
        q_ids = self.engine.encode_question(question)
        self._require_chunks()
        cfg = self.engine.decoding_config(decoding)
        e = self.engine
        return AnswerStream(
            mode=mode,
            k=k,
            n_chunks=len(self._slots),
            score=lambda keep: self._score(question, q_ids, keep=keep),
            open_state=e.backend.open,
            decode=lambda session, logits: e.generation(session, logits, cfg, seed, lstrip=True),
            not_found=e.config.not_found,
            idk_filter=e.config.idk_filter,
        )

    def _require_chunks(self) -> None:
        if not self._slots:
            raise InputError("index: expected at least one chunk, got an empty index (add documents first)")

    def _score(self, question: str, q_ids: Sequence[int], *, keep: int) -> Scored:
        """Feed ``question + suffix`` on top of every stored state, score each row, keep the ``keep`` best states."""
        self._require_chunks()
        e = self.engine
        tail = [*q_ids, *e.prompt_ids.suffix]
        n = len(self._slots)
        sig = scoring.Signals.zeros(n)
        kept: Kept = {}
        t_prefill = t_select = 0.0
        t0 = time.perf_counter()
        for rows, stacked in self._batches(len(tail)):
            with torch.inference_mode():
                session = e.backend.open(stacked, copy=False)  # stacked for this session alone
                logits = session.feed(torch.tensor([tail] * len(rows), dtype=torch.long, device=e.device))
                t1 = time.perf_counter()
                t_prefill += t1 - t0
                snapshot = _Snapshot(session)
                sig.put(rows, batch_signals(e.backend, logits, snapshot, e.idk_ids))
                cfg = e.config
                if keep > 0 and enters_top(kept, rows, sig, keep, criterion=cfg.criterion, idk_filter=cfg.idk_filter):
                    kept = keep_best(
                        e.backend,
                        kept,
                        rows,
                        logits,
                        snapshot(),
                        sig,
                        keep,
                        criterion=cfg.criterion,
                        idk_filter=cfg.idk_filter,
                    )
            t0 = time.perf_counter()
            t_select += t0 - t1
        t1 = time.perf_counter()
        chunks = self.chunks
        scores = scoring.rank_chunks(chunks, sig, criterion=e.config.criterion, idk_filter=e.config.idk_filter)
        prompts = {i: e.prompt(chunks[i].ids, q_ids) for i in kept}
        for i, (state, last) in kept.items():
            e.state_cache.put(prompts[i], state, last)
        t_select += time.perf_counter() - t1
        fed = n * len(tail)
        ranking = Ranking(
            question=question,
            scores=scores,
            timings=Timings(prefill_s=t_prefill, select_s=t_select),
            usage=Usage(prompt_tokens=fed, padded_tokens=fed, reused_tokens=sum(s.tokens for s in self._slots)),
        )
        return Scored(ranking=ranking, kept=kept, prompts=prompts)

    def _batches(self, tail: int) -> Iterator[tuple[list[int], State]]:
        """Stacked states of every chunk, a batch at a time, read ahead in a background thread while the caller works on
        the batch before (:func:`_read_ahead`): ``(chunk positions, state)``. In-memory states first, then each shard in
        turn, opened once. A batch feeds at most ``max_batch_tokens`` per micro-batch: ``tail`` tokens per row, plus
        the row's stored tokens when the state keeps attention keys/values (a fixed-size recurrent state costs the feed
        nothing for the tokens it stands for)."""
        return _read_ahead(self._stacked(tail))

    def _stacked(self, tail: int) -> Iterator[tuple[list[int], State]]:
        e = self.engine
        budget = e.config.batch_tokens
        grows = getattr(e.backend, "attention", True)  # unknown backends: assume the state grows with the prompt
        memory = [i for i, s in enumerate(self._slots) if s.state is not None]
        by_shard: dict[str, list[int]] = {}
        for i, s in enumerate(self._slots):
            if s.state is None:
                assert s.shard is not None, "a slot without a state in memory must be in a shard"
                by_shard.setdefault(s.shard, []).append(i)
        for group in plan_batches([self._slots[i].tokens * grows + tail for i in memory], budget):
            rows = [memory[j] for j in group]
            held = [self._slots[i].state for i in rows]
            yield rows, e.backend.stack([_to_device(s, e.device) for s in held if s is not None])
        for shard, positions in by_shard.items():
            with self._open_shard(shard) as reader:
                for group in plan_batches([self._slots[i].tokens * grows + tail for i in positions], budget):
                    rows = [positions[j] for j in group]
                    states = [reader.state(self._slots[i].row) for i in rows]
                    yield rows, e.backend.stack([_to_device(s, e.device) for s in states])

    def _open_shard(self, name: str) -> ShardReader:
        """A reader of shard ``name``; a vanished file is named "changed underneath you" when another save removed it
        (no lease protected it), "corrupt" otherwise."""
        assert self._folder is not None, "a shard is read only from a saved or loaded index"
        try:
            return ShardReader(self._folder / name, self.engine.backend.name, self._shards[name], verify=self._verify)
        except FileNotFoundError:
            raise self._vanished(name) from None

    def _vanished(self, name: str) -> StateIndexError:
        assert self._folder is not None
        lease = self._lease
        if lease is not None and not lease.protected and storage.current_generation(self._folder) != lease.generation:
            return storage.changed_error(self._folder, lease.generation, f"shard {name}")
        return IndexCorruptError(f"index {self._folder}: shard {name} is missing (deleted by hand?)")

    def verify(self) -> None:
        """Check every shard file of a saved or loaded index byte for byte against its sha256 (reads the whole index
        once). Queries already check each row they read; this finds damage in rows no query has read yet.

        Raises:
            IndexCorruptError: a shard is missing, truncated or modified.
        """
        if self._folder is None:
            return
        for name, info in self._shards.items():
            path = self._folder / name
            if not path.exists():
                raise self._vanished(name)
            storage.verify_shard(path, info)

    def close(self) -> None:
        """Release this index's hold on its folder's files (also done when it is garbage-collected). A later save
        may then delete the shards of the generation it read; querying it afterwards can fail."""
        if self._lease is not None:
            self._lease.close()

    def __enter__(self) -> StateIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- persistence ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES, lock_timeout_s: float = 60.0) -> None:
        """Write the index to the folder ``path``: safetensors shards of at most about ``shard_bytes`` and a JSON manifest.

        Only a new folder, an empty folder or an existing Overflow index (its marker file and a valid manifest) is
        written into; anything else raises :class:`InputError` and is left untouched.

        Atomic: the save writes a new generation (new shard files, a lease file), and replacing ``manifest.json`` is the
        commit. An error or a crash before that leaves the index that was there loadable and unchanged. Saving again to
        the same folder rewrites only what changed (shards whose every chunk is still in the index are kept). After the
        commit, shards that no generation still read by some process needs are deleted; a generation that a reader
        (a loaded ``StateIndex``, in any process) holds keeps its files until that reader is closed or gone.

        Afterwards the states live on disk only (memory is released), as in a loaded index; so ``add`` + ``save`` in a
        loop builds an index larger than RAM.

        Concurrent writers: a save holds the folder's writer lock (waiting up to ``lock_timeout_s``, then
        :class:`IndexBusyError`), and saving back to the folder this index came from fails with
        :class:`IndexConflictError` when another writer committed there in between (load it again and redo the change),
        instead of silently dropping that writer's work.
        """
        if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes < 1:
            raise ConfigError(f"shard_bytes: expected a positive number of bytes, got {shard_bytes!r}")
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise InputError(f"path: expected a folder path, got {path!r}")
        folder = Path(path)
        try:
            storage.prepare_target(folder)
            with storage.writer_lock(folder, lock_timeout_s):
                storage.check_target(folder)  # again, under the lock: another writer may have been first
                self._save_locked(folder, shard_bytes)
        except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            raise InputError(f"path: cannot write the index into {str(folder)!r} ({exc.strerror or exc})") from exc
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise InputError(f"path: cannot write the index into {str(folder)!r}: read-only file system") from exc
            raise

    def _save_locked(self, folder: Path, shard_bytes: int) -> None:
        tag = uuid.uuid4().hex[:12]
        same = self._folder is not None and folder.resolve() == self._folder.resolve()
        if same and self._checksum is not None and storage.current_checksum(folder) != self._checksum:
            raise IndexConflictError(
                f"index {folder} was changed by another writer since this index was loaded or saved there; nothing was "
                "written. Load it again (StateIndex.load) and redo the change"
            )
        alive: dict[str, int] = {}
        for s in self._slots:
            if s.shard is not None:
                alive[s.shard] = alive.get(s.shard, 0) + 1
        keep = {name for name, count in alive.items() if same and count == self._shards[name].rows}
        written: list[ShardInfo] = []
        placed: dict[int, tuple[str, int]] = {}  # slot position -> (shard, row) of the new copy
        pending: list[dict[str, torch.Tensor]] = []
        pending_slots: list[int] = []
        pending_bytes = 0

        def flush() -> None:
            nonlocal pending, pending_slots, pending_bytes
            if not pending:
                return
            info = storage.write_shard(folder, storage.shard_name(tag, len(written)), pending)
            written.append(info)
            for row, i in enumerate(pending_slots):
                placed[i] = (info.file, row)
            pending, pending_slots, pending_bytes = [], [], 0

        try:
            readers: dict[str, ShardReader] = {}
            try:
                for i, s in enumerate(self._slots):
                    if s.shard in keep:
                        continue
                    if s.state is not None:
                        state = s.state
                    else:
                        assert s.shard is not None
                        if s.shard not in readers:
                            readers[s.shard] = self._open_shard(s.shard)
                        state = readers[s.shard].state(s.row)
                    pending.append(state_to_tensors(state))
                    pending_slots.append(i)
                    pending_bytes += state.nbytes
                    if pending_bytes >= shard_bytes:
                        flush()
                flush()
            finally:
                for reader in readers.values():
                    reader.close()
            storage.fsync_dir(folder)
            shards = [self._shards[name] for name in sorted(keep)] + written
            locations = {i: placed.get(i, (s.shard or "", s.row)) for i, s in enumerate(self._slots)}
            checksum = storage.commit(folder, self._manifest(shards, locations), tag)
        except BaseException:
            for shard in written:
                (folder / shard.file).unlink(missing_ok=True)
            for leftover in (f"{storage.MANIFEST}.tmp-{tag}", f"generation-{tag}.lease.tmp-{tag}"):
                (folder / leftover).unlink(missing_ok=True)
            raise
        # committed: the states now live in the shards (memory is released); hold the new generation, let go of the old
        lease = storage.acquire_lease(folder, tag)
        assert lease is not None, "the generation just committed under the writer lock cannot have been collected"
        for i, s in enumerate(self._slots):
            s.shard, s.row = locations[i]
            s.state = None
        if self._lease is not None:
            self._lease.close()
        self._lease = lease
        self._folder = folder
        self._checksum = checksum
        self._shards = {s.file: s for s in shards}
        storage.collect_garbage(folder, tag, self._shards)

    def _manifest(self, shards: Sequence[ShardInfo], locations: Mapping[int, tuple[str, int]]) -> dict[str, Any]:
        e = self.engine
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model_info(e),
            "tokenizer": tokenizer_info(e.tokenizer),
            "settings": settings_info(e),
            "documents": self._documents,
            "chunks": [
                {
                    "doc_index": s.chunk.doc_index,
                    "source": s.chunk.source,
                    "start": s.chunk.start,
                    "end": s.chunk.end,
                    "text": s.chunk.text,
                    "ids": list(s.chunk.ids),
                    "metadata": jsonable_metadata(s.chunk.metadata),
                    "tokens": s.tokens,
                    "bytes": s.nbytes,
                    "shard": locations[i][0],
                    "row": locations[i][1],
                }
                for i, s in enumerate(self._slots)
            ],
            "shards": [s.to_dict() for s in shards],
        }

    @classmethod
    def load(cls, path: str | Path, engine: Engine, *, verify: bool = True) -> StateIndex:
        """Open the index saved at ``path`` for ``engine``. States stay on disk and are read shard by shard per query.

        The index read is one generation, whole: while this object is open, a save by anyone else (this process or
        another) leaves that generation's files in place, so queries keep answering from what was loaded. Every row of
        state is checked against its CRC-32 when a query reads it; ``verify=False`` skips that check (faster, and damage
        done to the files after they were written is then not seen). :meth:`verify` checks every file in full.

        Raises:
            IndexMismatchError: the index was built with another model (config, weights or dtype), tokenizer, chunking
                or prompt settings, or in another format version; the message names every difference. Rebuild it.
            IndexCorruptError: the manifest or a shard is truncated, modified, missing or malformed.
            IndexChangedError: writers replaced the index so often that no generation could be opened (rare).
        """
        folder = Path(path)
        if not folder.is_dir():
            raise InputError(f"path: expected a state index folder, {str(folder)!r} is not a folder")
        manifest, lease = cls._open_generation(folder)
        try:
            index = cls._from_manifest(folder, manifest, engine, lease)
        except BaseException:
            lease.close()
            raise
        index._verify = bool(verify)
        return index

    @staticmethod
    def _open_generation(folder: Path, attempts: int = 50) -> tuple[dict[str, Any], Lease]:
        """Read the manifest and take a lease on its generation; when a writer collected that generation in between,
        read the manifest again (the new one is complete: its commit came first)."""
        generation = ""
        for attempt in range(attempts):
            manifest = storage.read_manifest(folder)
            generation = str(manifest["generation"])
            lease = storage.acquire_lease(folder, generation)
            if lease is not None:
                if not (folder / storage.MARKER).exists():
                    lease.close()
                    raise IndexCorruptError(f"index {folder}: the marker file {storage.MARKER} is missing")
                return manifest, lease
            if storage.current_checksum(folder) == manifest["checksum"]:
                raise IndexCorruptError(
                    f"index {folder}: the lease file of generation {generation} is missing (copied without it?)"
                )
            time.sleep(0.002 * attempt)
        raise storage.changed_error(folder, generation, f"{attempts} generations replaced while loading")

    @classmethod
    def _from_manifest(cls, folder: Path, manifest: dict[str, Any], engine: Engine, lease: Lease) -> StateIndex:
        current = {
            "model": model_info(engine),
            "tokenizer": tokenizer_info(engine.tokenizer),
            "settings": settings_info(engine),
        }
        try:
            diffs = differences(manifest, current)
        except (KeyError, TypeError, AttributeError) as exc:
            raise IndexCorruptError(f"index {folder}: malformed model, tokenizer or settings fields ({exc!r})") from exc
        if diffs:
            raise IndexMismatchError(
                f"index {folder} was built for another model, tokenizer or settings than this engine: "
                + "; ".join(diffs)
                + ". Rebuild it: StateIndex.build(engine, documents).save(path)"
            )
        index = cls(engine)
        index._folder = folder
        index._lease = lease
        index._checksum = str(manifest["checksum"])
        index._shards = {s.file: s for s in storage.shard_infos(manifest)}
        for n, c in enumerate(manifest["chunks"]):
            chunk = Chunk(
                index=n,
                doc_index=c["doc_index"],
                text=c["text"],
                start=c["start"],
                end=c["end"],
                ids=tuple(c["ids"]),
                metadata=dict(c["metadata"]),
            )
            index._slots.append(
                _Slot(chunk=chunk, tokens=c["tokens"], nbytes=c["bytes"], shard=c["shard"], row=c["row"])
            )
        index._documents = manifest["documents"]
        for name, info in index._shards.items():  # cheap: sizes; the bytes are checked as they are read
            try:
                size = (folder / name).stat().st_size
            except FileNotFoundError:
                raise index._vanished(name) from None
            if size != info.bytes:
                raise IndexCorruptError(
                    f"index {folder}: shard {name} has {size} bytes, expected {info.bytes} (truncated or overwritten)"
                )
        return index
