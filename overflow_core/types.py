"""Plain result and input types: no torch, readable reprs, ``to_dict()`` for JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Union

__all__ = ["Answer", "Chunk", "ChunkScore", "Document", "DocumentLike", "Ranking", "Timings", "Usage", "as_documents"]


@dataclass(frozen=True)
class Document:
    """A text with optional metadata (``metadata["source"]`` names it in results)."""

    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str | None:
        src = self.metadata.get("source")
        return None if src is None else str(src)


DocumentLike = Union[str, Document, tuple[str, Mapping[str, Any]], Mapping[str, Any]]


def as_documents(documents: Any) -> list[Document]:
    """Normalise strings, ``(text, metadata)`` pairs, ``{"text": ..., "metadata": ...}`` dicts and :class:`Document`s."""
    from overflow_core.errors import InputError

    if isinstance(documents, (str, Document)):
        documents = [documents]
    out: list[Document] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, Document):
            out.append(doc)
        elif isinstance(doc, str):
            out.append(Document(doc))
        elif isinstance(doc, tuple) and len(doc) == 2 and isinstance(doc[0], str) and isinstance(doc[1], Mapping):
            out.append(Document(doc[0], dict(doc[1])))
        elif isinstance(doc, Mapping) and isinstance(doc.get("text"), str):
            out.append(Document(doc["text"], dict(doc.get("metadata") or {})))
        else:
            raise InputError(
                f"documents[{i}]: expected a string, a (text, metadata) pair, a {{'text', 'metadata'}} dict or a "
                f"Document, got {type(doc).__name__}"
            )
    return out


@dataclass(frozen=True)
class Chunk:
    """A piece of one document: its text, where it came from, and its token ids (the tokenizer's encoding of ``text``)."""

    index: int  # position among all chunks of the call
    doc_index: int
    text: str
    start: int  # character span in the source document
    end: int
    ids: tuple[int, ...] = field(repr=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def source(self) -> str | None:
        src = self.metadata.get("source")
        return None if src is None else str(src)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "doc_index": self.doc_index,
            "source": self.source,
            "start": self.start,
            "end": self.end,
            "tokens": self.n_tokens,
            "text": self.text,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class ChunkScore:
    """How one chunk scored for a question. Lower ``entropy`` is more confident.

    ``score`` is higher-is-better (what retriever frameworks expect) and sorts exactly as ``rank``: ``-entropy`` (the
    top-token probability with ``criterion="max_prob"``, ``-not_found_prob`` with ``"not_found_prob"``), minus
    :data:`overflow_core.scoring.ABSTAIN_PENALTY` (1000) when the model abstains on the chunk and the IDK filter is on.
    So a framework that re-sorts by score, or cuts at a score threshold, never puts a chunk that says "not found" above
    one that answers.
    """

    chunk: Chunk
    rank: int  # 0 is best
    entropy: float
    top_prob: float
    not_found_prob: float  # probability that the answer starts with the not-found phrase's first token
    idk: bool  # the model's most likely first token starts the not-found answer
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "entropy": self.entropy,
            "score": self.score,
            "top_prob": self.top_prob,
            "not_found_prob": self.not_found_prob,
            "idk": self.idk,
            "chunk": self.chunk.to_dict(),
        }

    def __repr__(self) -> str:
        where = self.chunk.source or f"doc {self.chunk.doc_index}"
        return (
            f"ChunkScore(rank={self.rank}, entropy={self.entropy:.4f}, idk={self.idk}, "
            f"{where}[{self.chunk.start}:{self.chunk.end}])"
        )


@dataclass(frozen=True)
class Usage:
    """Token counts. ``prompt_tokens`` are real prompt tokens fed to the model; ``padded_tokens`` adds the padding."""

    prompt_tokens: int = 0
    padded_tokens: int = 0
    generated_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose state came from a cache or an index instead of a forward pass

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds per phase."""

    prefill_s: float = 0.0
    select_s: float = 0.0
    decode_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.prefill_s + self.select_s + self.decode_s

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_s": self.total_s}


@dataclass(frozen=True)
class Ranking:
    """Every chunk's score for one question, best first."""

    question: str
    scores: tuple[ChunkScore, ...]
    timings: Timings = field(default_factory=Timings)
    usage: Usage = field(default_factory=Usage)

    @property
    def best(self) -> ChunkScore | None:
        """The best chunk that did not abstain, or None when every chunk abstained."""
        return next((s for s in self.scores if not s.idk), None)

    def top(self, k: int) -> tuple[ChunkScore, ...]:
        return self.scores[:k]

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "scores": [s.to_dict() for s in self.scores],
            "timings": self.timings.to_dict(),
            "usage": self.usage.to_dict(),
        }

    def __repr__(self) -> str:
        return f"Ranking(question={self.question!r}, chunks={len(self.scores)}, best={self.best!r})"


@dataclass(frozen=True)
class Answer:
    """An answer and the work behind it.

    ``not_found`` is True when every chunk abstained (the IDK filter dropped them all) or the model answered with the
    not-found phrase; ``text`` is then the not-found phrase, never a guess. ``chunk`` is the chunk the answer was decoded
    from (``None`` in vanilla mode and when nothing was found).
    """

    text: str
    not_found: bool
    mode: str
    chunk: ChunkScore | None
    ranking: Ranking | None
    timings: Timings
    usage: Usage
    parts: tuple[str, ...] = ()  # per-chunk outputs in "summarize" mode

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "not_found": self.not_found,
            "mode": self.mode,
            "chunk": self.chunk.to_dict() if self.chunk else None,
            "ranking": self.ranking.to_dict() if self.ranking else None,
            "timings": self.timings.to_dict(),
            "usage": self.usage.to_dict(),
            "parts": list(self.parts),
        }

    def __repr__(self) -> str:
        return f"Answer(text={self.text!r}, not_found={self.not_found}, mode={self.mode!r}, chunk={self.chunk!r})"

    def __str__(self) -> str:
        return self.text
