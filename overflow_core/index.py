"""The state index: each chunk's recurrent state after ``prefix + chunk + infix``, computed once and reused for any question.

A prompt is ``prefix + chunk + infix + question + suffix`` and everything before the question is question-independent
(see :mod:`overflow_core.prompting`). A recurrent model's state after that part has a fixed size whatever the chunk's length,
so a corpus can be indexed once, like embeddings in a vector store. A question then costs only its own tokens
(``question + suffix``) for every chunk instead of the whole prompt: for 512-token chunks and a 20-token question, about
25 times fewer tokens through the model.

The steps, each done by the module that owns it:

1. **build / add**: chunk the documents (:mod:`~overflow_core.chunking`), prefill every ``prefix + chunk + infix`` in
   bounded micro-batches (:mod:`~overflow_core.prefill`) and keep each row's state.
2. **save / load**: states go to safetensors shards, everything else (chunks, fingerprints of the model and tokenizer,
   the chunking and prompt settings, each shard's sha256) to ``manifest.json``. Shards are immutable and uniquely named;
   replacing ``manifest.json`` with ``os.replace`` is the single atomic commit, so an interrupted save leaves the previous
   index as it was. Loading checks everything and refuses an index made with another model, tokenizer or settings
   (:class:`~overflow_core.errors.IndexMismatchError`) or one whose files are damaged
   (:class:`~overflow_core.errors.IndexCorruptError`). No pickles: tensors in safetensors, the rest in JSON.
3. **query**: stored states are read shard by shard (safetensors memory-maps them, so an index bigger than RAM works),
   stacked into batches of at most ``max_batch_tokens`` (state tokens + question tokens per row), and every row is fed the
   same question tokens, so no padding is needed. Scoring, selection and decoding are the engine's own.

Results equal the full-prefill engine's (:meth:`OPRM.rank <overflow_core.engine.OPRM.rank>`,
:meth:`OPRM.answer <overflow_core.engine.OPRM.answer>`) within float tolerance: the same chunks, the same ranking, the same
greedy tokens. This module knows nothing about model families: rows of state are the backend's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from overflow_core import scoring
from overflow_core.backends.base import State
from overflow_core.engine import OPRM, _AnswerStream, _Scored
from overflow_core.errors import (
    ConfigError,
    IndexBusyError,
    IndexConflictError,
    IndexCorruptError,
    IndexMismatchError,
    InputError,
)
from overflow_core.prefill import plan_batches
from overflow_core.types import Answer, Chunk, Ranking, Timings, Usage

__all__ = ["DEFAULT_SHARD_BYTES", "FORMAT", "FORMAT_VERSION", "MANIFEST", "StateIndex"]

logger = logging.getLogger("overflow_core")

FORMAT = "overflow-state-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".writer.lock"  # the advisory lock file writers hold while saving (see _writer_lock)
DEFAULT_SHARD_BYTES = 256 * 2**20
_SHARD_NAME = re.compile(r"^states-[0-9a-f]{12}-\d{5}\.safetensors$")
_TMP_MANIFEST = re.compile(rf"^{re.escape(MANIFEST)}\.tmp-[0-9a-f]{{12}}$")
_WEIGHT_SAMPLES = 65536  # values hashed per weight tensor (all of them in tensors up to this size)
_RUNTIME_CONFIG_KEYS = frozenset(
    {"transformers_version", "torch_dtype", "dtype", "use_cache", "output_attentions", "output_hidden_states",
     "return_dict", "name_or_path"}
)  # fmt: skip


# -- fingerprints -------------------------------------------------------------------------------------------------------
def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain(value: Any) -> Any:
    """``value`` as plain JSON: tuples as lists, non-finite floats and unknown objects as strings (configs hold ``inf``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _model_info(engine: OPRM) -> dict[str, Any]:
    """What identifies the model: its architecture config, its weights' dtype and a hash of its weights.

    The hash covers every tensor's name, dtype and shape and, per tensor, up to ``_WEIGHT_SAMPLES`` values at evenly spaced
    positions (every value of smaller tensors): retraining or fine-tuning changes it, hashing a 7B model takes well under
    a second.
    """
    model = engine.model
    config = {
        k: v
        for k, v in model.config.to_dict().items()
        if not k.startswith("_") and k not in _RUNTIME_CONFIG_KEYS
    }
    config = _plain(config)
    digest = hashlib.sha256()
    with torch.inference_mode():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
            if flat.numel() > _WEIGHT_SAMPLES:
                flat = flat[torch.linspace(0, flat.numel() - 1, _WEIGHT_SAMPLES, device=flat.device).long()]
            if flat.dtype == torch.bool:
                flat = flat.to(torch.uint8)
            digest.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters()), "unknown")
    return {
        "name": engine.name,
        "backend": engine.backend.name,
        "dtype": dtype,
        "config_sha256": _sha256(_canonical(config)),
        "weights_sha256": digest.hexdigest(),
        "config": config,
    }


def _tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What identifies the tokenizer: its full definition (vocabulary, merges, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)  # runtime settings, changed by calls, not part of the tokenizer
        definition.pop("padding", None)
    else:
        definition = sorted(tokenizer.get_vocab().items())
    special = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "sha256": _sha256(_canonical({"definition": definition, "special": special})),
    }


def _settings(engine: OPRM) -> dict[str, Any]:
    """The settings that decide which chunks exist and which tokens precede the question."""
    return {
        "chunk_tokens": engine.config.chunk_tokens,
        "overlap_tokens": engine.config.overlap_tokens,
        "template": engine.template.to_dict(),
        "not_found": engine.config.not_found,
        "prefix_ids": list(engine.prompt_ids.prefix),
        "infix_ids": list(engine.prompt_ids.infix),
    }


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a manifest's model/tokenizer/settings and the engine's."""
    out: list[str] = []
    s_model, c_model = stored["model"], current["model"]
    if s_model["backend"] != c_model["backend"]:
        out.append(f"model family: index {s_model['backend']!r}, engine {c_model['backend']!r}")
    elif s_model["config_sha256"] != c_model["config_sha256"]:
        keys = sorted(k for k in {*s_model["config"], *c_model["config"]} if s_model["config"].get(k) != c_model["config"].get(k))
        shown = ", ".join(
            f"{k} index={_short(s_model['config'].get(k), 30)} engine={_short(c_model['config'].get(k), 30)}" for k in keys[:4]
        )
        out.append(f"model config: {shown}{' ...' if len(keys) > 4 else ''}")
    if s_model["dtype"] != c_model["dtype"]:
        out.append(f"model dtype: index {s_model['dtype']}, engine {c_model['dtype']}")
    elif s_model["weights_sha256"] != c_model["weights_sha256"] and s_model["config_sha256"] == c_model["config_sha256"]:
        out.append(
            f"model weights: index built with weights {s_model['weights_sha256'][:12]} ({s_model['name']!r}), engine has "
            f"{c_model['weights_sha256'][:12]} ({c_model['name']!r}); same architecture, other checkpoint"
        )
    s_tok, c_tok = stored["tokenizer"], current["tokenizer"]
    if s_tok["sha256"] != c_tok["sha256"]:
        out.append(
            f"tokenizer: index {s_tok['class']} with {s_tok['vocab_size']} tokens ({s_tok['sha256'][:12]}), engine "
            f"{c_tok['class']} with {c_tok['vocab_size']} tokens ({c_tok['sha256'][:12]})"
        )
    s_set, c_set = stored["settings"], current["settings"]
    for key in sorted({*s_set, *c_set}):
        if s_set.get(key) != c_set.get(key):
            out.append(f"{key}: index {_short(s_set.get(key))}, engine {_short(c_set.get(key))}")
    return out


# -- files --------------------------------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_shard(path: Path, data: bytes) -> None:
    """Write one shard's bytes and make them durable (a test replaces this to simulate a crash mid-write)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_manifest(folder: Path, manifest: Mapping[str, Any], tag: str) -> str:
    """Write ``manifest.json`` atomically: a durable temporary file, then ``os.replace`` (the commit point).
    Returns the manifest's checksum, which identifies this version of the index."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    checksum = _sha256(_canonical(body))
    text = json.dumps({**body, "checksum": checksum}, ensure_ascii=False, allow_nan=False)
    tmp = folder / f"{MANIFEST}.tmp-{tag}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_dir(folder)
    return checksum


@contextmanager
def _writer_lock(folder: Path, timeout_s: float) -> Iterator[None]:
    """Hold the folder's advisory writer lock (``flock`` on :data:`LOCK`) while the block runs.

    Writers in other processes (or on other handles in this one) wait for it, up to ``timeout_s``. Readers never take it:
    a commit is one ``os.replace`` of the manifest. Where ``fcntl`` is missing (Windows) there is no lock, and two
    concurrent writers to one folder are not supported.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusyError(
                        f"index {folder}: another writer has held {LOCK} for more than {timeout_s:g} s; nothing was "
                        "written. Retry later, or pass a longer lock_timeout_s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of a chunk's metadata; ``source`` is kept as a string whatever its type."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            if key == "source":
                out[key] = str(value)
            continue
        out[key] = value
    return out


def _state_to_tensors(state: State, row: int) -> dict[str, torch.Tensor]:
    prefix = f"{row}:"
    out = {f"{prefix}state:{k}": t.detach().cpu().contiguous().clone() for k, t in state.tensors.items()}
    out[f"{prefix}lengths"] = state.lengths.detach().cpu().clone()
    if state.mask is not None:
        out[f"{prefix}mask"] = state.mask.detach().cpu().contiguous().clone()
    return out


def _to_device(state: State, device: torch.device) -> State:
    return State(
        tensors={k: t.to(device) for k, t in state.tensors.items()},
        lengths=state.lengths.cpu(),
        mask=None if state.mask is None else state.mask.to(device),
        backend=state.backend,
    )


# -- the index ----------------------------------------------------------------------------------------------------------
@dataclass
class _Slot:
    """One chunk of the index and where its state is: in memory, in a shard on disk, or both."""

    chunk: Chunk
    tokens: int  # length of prefix + chunk + infix: the tokens its state stands for
    nbytes: int  # bytes of its state tensors
    state: State | None = None  # one row, on the CPU
    shard: str | None = None  # file name in the index folder
    row: int = -1


@dataclass(frozen=True)
class _Shard:
    file: str
    sha256: str
    bytes: int
    rows: int


class _IndexAnswerStream(_AnswerStream):
    """The engine's answer stream (selection, decoding, the :class:`Answer`), scored from the index's states."""

    def __init__(
        self,
        index: StateIndex,
        question: str,
        q_ids: tuple[int, ...],
        mode: str,
        k: int | None,
        seed: int | None,
        decoding: Mapping[str, Any],
    ) -> None:
        cfg = index.engine._decoding(decoding)
        super().__init__(index.engine, question, [], index.chunks, q_ids, mode, k, None, seed, cfg)
        self.index = index

    def _scored(self, keep: int) -> _Scored:
        return self.index._score(self.question, self.q_ids, keep=keep)


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

    def __init__(self, engine: OPRM) -> None:
        """An empty index for ``engine``; use :meth:`build` or :meth:`load`."""
        self.engine = engine
        self._slots: list[_Slot] = []
        self._documents = 0
        self._folder: Path | None = None
        self._checksum: str | None = None  # the manifest version this index was loaded from or last saved as
        self._shards: dict[str, _Shard] = {}
        self._verified: dict[str, tuple[int, int]] = {}  # shard -> (size, mtime_ns) when its sha256 last matched

    # -- building -------------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, engine: OPRM, documents: Any, *, progress: bool = False) -> StateIndex:
        """Index ``documents`` (anything :meth:`OPRM.answer` accepts) for ``engine``: chunk them and compute each chunk's
        state once, in micro-batches of at most ``engine.config.max_batch_tokens`` tokens. ``progress`` shows a tqdm bar.
        """
        index = cls(engine)
        index.add(documents, progress=progress)
        return index

    def add(self, documents: Any, *, progress: bool = False) -> None:
        """Append the chunks of ``documents`` (numbered after those already in the index) and compute their states."""
        chunks = self.engine.chunk(documents)
        base, docs = len(self._slots), self._documents
        chunks = [replace(c, index=base + c.index, doc_index=docs + c.doc_index) for c in chunks]
        self._slots.extend(self._compute(chunks, progress=progress))
        self._documents = docs + len({c.doc_index for c in chunks})

    def _compute(self, chunks: Sequence[Chunk], *, progress: bool) -> list[_Slot]:
        from tqdm.auto import tqdm

        e = self.engine
        prompts = [e.context_prompt(c.ids) for c in chunks]
        slots: list[_Slot | None] = [None] * len(chunks)
        with tqdm(total=sum(len(p) for p in prompts), unit="tok", desc="indexing", disable=not progress) as bar:
            for batch in e._prefill(prompts):
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
        if k is not None and k < 1:
            raise ConfigError(f"k: expected a positive number of chunks, got {k}")
        q_ids = self.engine.encode_question(question)
        scored = self._score(question, q_ids, keep=min(k or 1, max(len(self._slots), 1)))
        ranking = scored.ranking
        if k is not None:
            ranking = Ranking(ranking.question, ranking.scores[:k], ranking.timings, ranking.usage)
        return ranking

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
    ) -> _AnswerStream:
        """An iterator of text pieces whose ``result`` is the full :class:`Answer` once it is exhausted."""
        if mode not in ("oprm", "summarize"):
            raise ConfigError(f"mode: expected 'oprm' or 'summarize' with a state index, got {mode!r}")
        if k is not None and k < 1:
            raise ConfigError(f"k: expected a positive number of chunks, got {k}")
        q_ids = self.engine.encode_question(question)
        self._require_chunks()
        return _IndexAnswerStream(self, question, q_ids, mode, k, seed, decoding)

    def _require_chunks(self) -> None:
        if not self._slots:
            raise InputError("index: expected at least one chunk, got an empty index (add documents first)")

    def _score(self, question: str, q_ids: Sequence[int], *, keep: int) -> _Scored:
        """Feed ``question + suffix`` on top of every stored state, score each row, keep the ``keep`` best states."""
        self._require_chunks()
        e = self.engine
        tail = [*q_ids, *e.prompt_ids.suffix]
        n = len(self._slots)
        sig = scoring.Signals.zeros(n)
        kept: dict[int, tuple[State, torch.Tensor]] = {}
        t_prefill = t_select = 0.0
        t0 = time.perf_counter()
        for rows, stacked in self._batches(len(tail)):
            with torch.inference_mode():
                session = e.backend.open(stacked)
                logits = session.feed(torch.tensor([tail] * len(rows), dtype=torch.long, device=e.device))
                t1 = time.perf_counter()
                t_prefill += t1 - t0
                sig.put(rows, scoring.signals(logits, e.idk_ids))
                if keep > 0 and self._enters_top(kept, rows, sig, keep):
                    kept = e._keep_best(kept, rows, logits, session.state(), sig, keep)
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
        return _Scored(ranking=ranking, kept=kept, prompts=prompts)

    def _enters_top(
        self,
        kept: Mapping[int, Any],
        rows: Sequence[int],
        sig: scoring.Signals,
        keep: int,
    ) -> bool:
        """Whether any of ``rows`` enters the running top-``keep`` (else the batch's state need not be copied)."""
        candidates = sorted({*kept, *rows})
        cfg = self.engine.config
        order = scoring.rank_order(sig.take(candidates), criterion=cfg.criterion, idk_filter=cfg.idk_filter)
        return any(candidates[j] not in kept for j in order[:keep])

    def _batches(self, tail: int) -> Iterator[tuple[list[int], State]]:
        """Stacked states of every chunk, a batch at a time: ``(chunk positions, state)``. In-memory states first, then
        each shard in turn, opened once; a batch holds at most ``max_batch_tokens`` (state tokens + ``tail``) per row."""
        e = self.engine
        budget = e.config.max_batch_tokens
        memory = [i for i, s in enumerate(self._slots) if s.state is not None]
        by_shard: dict[str, list[int]] = {}
        for i, s in enumerate(self._slots):
            if s.state is None:
                assert s.shard is not None, "a slot without a state in memory must be in a shard"
                by_shard.setdefault(s.shard, []).append(i)
        for group in plan_batches([self._slots[i].tokens + tail for i in memory], budget):
            rows = [memory[j] for j in group]
            held = [self._slots[i].state for i in rows]
            yield rows, e.backend.stack([_to_device(s, e.device) for s in held if s is not None])
        for shard, positions in by_shard.items():
            with self._open_shard(shard) as reader:
                for group in plan_batches([self._slots[i].tokens + tail for i in positions], budget):
                    rows = [positions[j] for j in group]
                    states = [reader.state(self._slots[i].row) for i in rows]
                    yield rows, e.backend.stack([_to_device(s, e.device) for s in states])

    def _open_shard(self, name: str) -> _ShardReader:
        assert self._folder is not None, "a shard is read only from a saved or loaded index"
        self._check_shard(name)
        return _ShardReader(self._folder / name, self.engine.backend.name)

    def _check_shard(self, name: str) -> None:
        """Re-hash a shard whose size or modification time changed since its checksum last matched."""
        assert self._folder is not None
        path, info = self._folder / name, self._shards[name]
        try:
            st = path.stat()
        except OSError as exc:
            raise IndexCorruptError(f"index {self._folder}: shard {name} is missing or unreadable ({exc})") from exc
        if self._verified.get(name) == (st.st_size, st.st_mtime_ns):
            return
        _verify_shard(path, info)
        self._verified[name] = (st.st_size, st.st_mtime_ns)

    # -- persistence ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, shard_bytes: int = DEFAULT_SHARD_BYTES, lock_timeout_s: float = 60.0) -> None:
        """Write the index to the folder ``path``: safetensors shards of at most about ``shard_bytes`` and a JSON manifest.

        Atomic: new shards get new names, and replacing ``manifest.json`` is the commit. An error or a crash before that
        leaves the index that was there loadable and unchanged. Saving again to the same folder rewrites only what
        changed (shards whose every chunk is still in the index are kept as they are). Shards no longer referenced are
        deleted after the commit.

        Afterwards the states live on disk only (memory is released), as in a loaded index; so ``add`` + ``save`` in a
        loop builds an index larger than RAM.

        Concurrent writers: a save holds the folder's writer lock (waiting up to ``lock_timeout_s``, then
        :class:`IndexBusyError`), and saving back to the folder this index came from fails with
        :class:`IndexConflictError` when another writer committed there in between (load it again and redo the change),
        instead of silently dropping that writer's work.
        """
        if shard_bytes < 1:
            raise ConfigError(f"shard_bytes: expected a positive size, got {shard_bytes}")
        folder = Path(path)
        _check_target(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _writer_lock(folder, lock_timeout_s):
            self._save_locked(folder, shard_bytes)

    def _save_locked(self, folder: Path, shard_bytes: int) -> None:
        tag = uuid.uuid4().hex[:12]
        same = self._folder is not None and folder.resolve() == self._folder.resolve()
        if same and self._checksum is not None and _current_checksum(folder) != self._checksum:
            raise IndexConflictError(
                f"index {folder} was changed by another writer since this index was loaded or saved there; nothing was "
                "written. Load it again (StateIndex.load) and redo the change"
            )
        alive: dict[str, int] = {}
        for s in self._slots:
            if s.shard is not None:
                alive[s.shard] = alive.get(s.shard, 0) + 1
        keep = {name for name, count in alive.items() if same and count == self._shards[name].rows}
        for name in keep:
            self._check_shard(name)
        written: list[_Shard] = []
        placed: dict[int, tuple[str, int]] = {}  # slot position -> (shard, row) of the new copy
        pending: dict[str, torch.Tensor] = {}
        pending_rows: list[int] = []
        pending_bytes = 0

        def flush() -> None:
            nonlocal pending, pending_rows, pending_bytes
            if not pending_rows:
                return
            from safetensors.torch import save as to_bytes

            name = f"states-{tag}-{len(written):05d}.safetensors"
            data = to_bytes(pending, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
            written.append(_Shard(file=name, sha256=_sha256(data), bytes=len(data), rows=len(pending_rows)))
            _write_shard(folder / name, data)
            for row, i in enumerate(pending_rows):
                placed[i] = (name, row)
            pending, pending_rows, pending_bytes = {}, [], 0

        try:
            readers: dict[str, _ShardReader] = {}
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
                    pending.update(_state_to_tensors(state, len(pending_rows)))
                    pending_rows.append(i)
                    pending_bytes += state.nbytes
                    if pending_bytes >= shard_bytes:
                        flush()
                flush()
            finally:
                for reader in readers.values():
                    reader.close()
            _fsync_dir(folder)
            shards = [self._shards[name] for name in sorted(keep)] + written
            locations = {i: placed.get(i, (s.shard or "", s.row)) for i, s in enumerate(self._slots)}
            checksum = _write_manifest(folder, self._manifest(shards, locations), tag)
        except BaseException:
            for shard in written:
                (folder / shard.file).unlink(missing_ok=True)
            (folder / f"{MANIFEST}.tmp-{tag}").unlink(missing_ok=True)
            raise
        # committed: the states now live in the shards (memory is released), and unreferenced files are deleted
        for i, s in enumerate(self._slots):
            s.shard, s.row = locations[i]
            s.state = None
        self._folder = folder
        self._checksum = checksum
        self._shards = {s.file: s for s in shards}
        for shard in written:
            st = (folder / shard.file).stat()
            self._verified[shard.file] = (st.st_size, st.st_mtime_ns)
        self._verified = {k: v for k, v in self._verified.items() if k in self._shards}
        for entry in folder.iterdir():
            stale = _SHARD_NAME.match(entry.name) and entry.name not in self._shards
            if stale or _TMP_MANIFEST.match(entry.name):
                entry.unlink(missing_ok=True)

    def _manifest(self, shards: Sequence[_Shard], locations: Mapping[int, tuple[str, int]]) -> dict[str, Any]:
        e = self.engine
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": _model_info(e),
            "tokenizer": _tokenizer_info(e.tokenizer),
            "settings": _settings(e),
            "documents": self._documents,
            "chunks": [
                {
                    "doc_index": s.chunk.doc_index,
                    "source": s.chunk.source,
                    "start": s.chunk.start,
                    "end": s.chunk.end,
                    "text": s.chunk.text,
                    "ids": list(s.chunk.ids),
                    "metadata": _jsonable_metadata(s.chunk.metadata),
                    "tokens": s.tokens,
                    "bytes": s.nbytes,
                    "shard": locations[i][0],
                    "row": locations[i][1],
                }
                for i, s in enumerate(self._slots)
            ],
            "shards": [{"file": s.file, "sha256": s.sha256, "bytes": s.bytes, "rows": s.rows} for s in shards],
        }

    @classmethod
    def load(cls, path: str | Path, engine: OPRM) -> StateIndex:
        """Open the index saved at ``path`` for ``engine``. States stay on disk and are read shard by shard per query.

        Raises:
            IndexMismatchError: the index was built with another model (config, weights or dtype), tokenizer, chunking
                or prompt settings, or in another format version; the message names every difference. Rebuild it.
            IndexCorruptError: the manifest or a shard is truncated, modified or missing (checksums do not match).
        """
        folder = Path(path)
        if not folder.is_dir():
            raise InputError(f"path: expected a state index folder, {str(folder)!r} is not a folder")
        manifest = _read_manifest(folder)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise IndexMismatchError(
                f"index {folder}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
                f"{manifest.get('format')!r} version {manifest.get('format_version')!r}; rebuild the index with this "
                "version of overflow"
            )
        current = {"model": _model_info(engine), "tokenizer": _tokenizer_info(engine.tokenizer), "settings": _settings(engine)}
        try:
            diffs = _differences(manifest, current)
        except (KeyError, TypeError, AttributeError) as exc:
            raise IndexCorruptError(f"index {folder}: manifest lacks model, tokenizer or settings fields ({exc})") from exc
        if diffs:
            raise IndexMismatchError(
                f"index {folder} was built for another model, tokenizer or settings than this engine: "
                + "; ".join(diffs)
                + ". Rebuild it: StateIndex.build(engine, documents).save(path)"
            )
        index = cls(engine)
        index._folder = folder
        index._checksum = str(manifest["checksum"])
        try:
            shards = [_Shard(str(s["file"]), str(s["sha256"]), int(s["bytes"]), int(s["rows"])) for s in manifest["shards"]]
            index._shards = {s.file: s for s in shards}
            for n, c in enumerate(manifest["chunks"]):
                metadata = dict(c["metadata"])
                chunk = Chunk(
                    index=n,
                    doc_index=int(c["doc_index"]),
                    text=str(c["text"]),
                    start=int(c["start"]),
                    end=int(c["end"]),
                    ids=tuple(int(t) for t in c["ids"]),
                    metadata=metadata,
                )
                shard, row = str(c["shard"]), int(c["row"])
                if shard not in index._shards or not 0 <= row < index._shards[shard].rows:
                    raise IndexCorruptError(f"index {folder}: chunk {n} points at row {row} of unknown shard {shard!r}")
                index._slots.append(_Slot(chunk=chunk, tokens=int(c["tokens"]), nbytes=int(c["bytes"]), shard=shard, row=row))
            index._documents = int(manifest["documents"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexCorruptError(f"index {folder}: malformed manifest entry ({type(exc).__name__}: {exc})") from exc
        for name in index._shards:
            index._check_shard(name)
        return index


def _check_target(folder: Path) -> None:
    """Refuse to write an index over a file or into a folder holding anything but an index."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"path: expected a folder for the index, {str(folder)!r} is a file")
    if folder.is_dir() and not (folder / MANIFEST).exists():
        others = [
            p.name
            for p in folder.iterdir()
            if not (_SHARD_NAME.match(p.name) or _TMP_MANIFEST.match(p.name) or p.name == LOCK)
        ]
        if others:
            raise InputError(
                f"path: expected a new folder or an existing state index, {str(folder)!r} holds other files "
                f"({', '.join(sorted(others)[:3])})"
            )


def _current_checksum(folder: Path) -> str | None:
    """The checksum of the manifest now in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        return str(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("checksum"))
    except (OSError, ValueError, AttributeError):
        return None


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.exists():
        raise IndexCorruptError(
            f"index {folder}: expected {MANIFEST}, found none (not a state index, or its first save was interrupted)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"index {folder}: {MANIFEST} is truncated or not JSON ({exc})") from exc
    if not isinstance(data, dict) or "checksum" not in data:
        raise IndexCorruptError(f"index {folder}: expected a JSON object with a checksum in {MANIFEST}, got something else")
    stored = data.pop("checksum")
    actual = _sha256(_canonical(data))
    if stored != actual:
        raise IndexCorruptError(
            f"index {folder}: {MANIFEST} checksum mismatch (expected {str(stored)[:16]}..., got {actual[:16]}...): "
            "the manifest was modified or damaged"
        )
    return {**data, "checksum": actual}


def _verify_shard(path: Path, info: _Shard) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IndexCorruptError(f"index {path.parent}: shard {info.file} is missing or unreadable ({exc})") from exc
    if size != info.bytes:
        raise IndexCorruptError(
            f"index {path.parent}: shard {info.file} has {size} bytes, expected {info.bytes} (truncated or overwritten)"
        )
    digest = _file_sha256(path)
    if digest != info.sha256:
        raise IndexCorruptError(
            f"index {path.parent}: shard {info.file} sha256 is {digest[:16]}..., expected {info.sha256[:16]}... (corrupted)"
        )


class _ShardReader:
    """Reads rows of state from one shard through safetensors' memory map; only the rows asked for are loaded."""

    def __init__(self, path: Path, backend: str) -> None:
        from safetensors import safe_open

        self.path, self.backend = path, backend
        try:
            self._file: Any = safe_open(str(path), framework="pt", device="cpu")
            keys: Iterable[str] = self._file.keys()
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise IndexCorruptError(f"index {path.parent}: shard {path.name} cannot be opened ({exc})") from exc
        self._names: dict[int, list[str]] = {}
        self._masks: set[int] = set()
        try:
            for key in keys:
                row, _, name = key.partition(":")
                if name.startswith("state:"):
                    self._names.setdefault(int(row), []).append(name[len("state:") :])
                elif name == "mask":
                    self._masks.add(int(row))
        except ValueError as exc:
            raise IndexCorruptError(f"index {path.parent}: shard {path.name} has an unexpected tensor ({exc})") from exc

    def state(self, row: int) -> State:
        try:
            names = self._names[row]
            tensors = {n: self._file.get_tensor(f"{row}:state:{n}") for n in names}
            lengths = self._file.get_tensor(f"{row}:lengths")
            mask = self._file.get_tensor(f"{row}:mask") if row in self._masks else None
        except Exception as exc:
            raise IndexCorruptError(f"index {self.path.parent}: shard {self.path.name} lacks row {row} ({exc})") from exc
        return State(tensors=tensors, lengths=lengths, mask=mask, backend=self.backend)

    def close(self) -> None:
        self._names.clear()
        self._file = None

    def __enter__(self) -> _ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
