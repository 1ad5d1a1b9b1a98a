"""Plain result and input types: no torch, readable reprs, ``to_dict()`` for JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Union

__all__ = [
    "Answer",
    "Chunk",
    "ChunkScore",
    "Document",
    "DocumentLike",
    "Ranking",
    "Timings",
    "Usage",
    "as_documents",
    "as_token_ids",
    "check_text",
]


def check_text(name: str, text: Any) -> str:
    """``text`` if it is a string of valid Unicode; else an :class:`~overflow_core.errors.InputError` naming ``name``.

    A lone surrogate (``"\\ud800"``, what a broken decoder or ``surrogateescape`` leaves) cannot be encoded as UTF-8, so no
    tokenizer can read it: it is refused here with its position instead of failing deep in the tokenizer.
    """
    from overflow_core.errors import InputError

    if not isinstance(text, str):
        hint = " (decode the bytes first)" if isinstance(text, (bytes, bytearray)) else ""
        raise InputError(f"{name}: expected a string, got {type(text).__name__}{hint}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{name}: expected valid Unicode text, got a lone surrogate {text[exc.start]!r} at character {exc.start}"
        ) from None
    return text


def as_token_ids(name: str, ids: Any, vocab_size: int | None = None) -> list[int]:
    """``ids`` as a list of ints, each in ``[0, vocab_size)``; else an :class:`~overflow_core.errors.InputError`."""
    import operator

    from overflow_core.errors import InputError

    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise InputError(f"{name}: expected a sequence of token ids, got {type(ids).__name__}")
    if hasattr(ids, "tolist"):  # a tensor or an array
        ids = ids.tolist()
    out: list[int] = []
    for j, i in enumerate(ids):
        if isinstance(i, bool):
            raise InputError(f"{name}[{j}]: expected a token id (an integer), got {i!r}")
        try:
            value = operator.index(i)
        except TypeError:
            raise InputError(f"{name}[{j}]: expected a token id (an integer), got {i!r}") from None
        if value < 0 or (vocab_size is not None and value >= vocab_size):
            upper = "" if vocab_size is None else f" and < {vocab_size} (the vocabulary size)"
            raise InputError(f"{name}[{j}]: expected a token id >= 0{upper}, got {value}")
        out.append(value)
    return out


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
    """Normalise strings, ``(text, metadata)`` pairs, ``{"text": ..., "metadata": ...}`` dicts and :class:`Document`s.

    ``documents`` is one of these or an iterable of them. Anything else (``None``, a number, bytes, a lone surrogate in
    a text, metadata that is not a mapping) is an :class:`~overflow_core.errors.InputError` naming the document.
    """
    from overflow_core.errors import InputError

    if isinstance(documents, (str, Document)) or (isinstance(documents, Mapping) and "text" in documents):
        documents = [documents]
    if isinstance(documents, Mapping):  # iterating it would take its keys for documents
        raise InputError(
            "documents: expected a string, a Document, a {'text', 'metadata'} dict or a list of them, got a "
            f"{type(documents).__name__} without 'text' (keys {sorted(map(str, documents))[:5]})"
        )
    if isinstance(documents, (bytes, bytearray)) or not hasattr(documents, "__iter__"):
        hint = " (decode the bytes first)" if isinstance(documents, (bytes, bytearray)) else ""
        raise InputError(
            "documents: expected a string, a Document or a list of them, got "
            f"{'None' if documents is None else type(documents).__name__}{hint}"
        )
    out: list[Document] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, Document):
            text, metadata = doc.text, doc.metadata
        elif isinstance(doc, str):
            text, metadata = doc, {}
        elif isinstance(doc, tuple) and len(doc) == 2 and isinstance(doc[0], str):
            text, metadata = doc
        elif isinstance(doc, Mapping) and "text" in doc:
            text, metadata = doc["text"], doc.get("metadata") or {}
        else:
            hint = " (decode the bytes first)" if isinstance(doc, (bytes, bytearray)) else ""
            raise InputError(
                f"documents[{i}]: expected a string, a (text, metadata) pair, a {{'text', 'metadata'}} dict or a "
                f"Document, got {'None' if doc is None else type(doc).__name__}{hint}"
            )
        check_text(f"documents[{i}]", text)
        if not isinstance(metadata, Mapping):
            raise InputError(f"documents[{i}].metadata: expected a mapping, got {type(metadata).__name__}")
        out.append(doc if isinstance(doc, Document) else Document(text, dict(metadata)))
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
    not_found_prob: float  # probability of answering with the not-found phrase (the whole phrase, teacher-forced)
    idk: bool  # greedy decoding would answer with the not-found phrase
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
        """The chunk to answer from: with the IDK filter on, the best chunk that did not abstain (None when every chunk
        abstained); with it off, the first chunk. An abstaining chunk's ``score`` carries
        :data:`overflow_core.scoring.ABSTAIN_PENALTY` (1000) exactly when the filter was on, which is how this knows."""
        return next((s for s in self.scores if not (s.idk and s.score < -500.0)), None)

    def top(self, k: int) -> tuple[ChunkScore, ...]:
        return self.scores[:k]

    def cut(self, k: int | None) -> Ranking:
        """The ranking of the best ``k`` chunks (itself when ``k`` is None), timings and usage kept. ``k`` is at least 1:
        a slice's ``-1`` (all but the last) or ``0`` (none) is never what a caller of a top-k means."""
        if k is None:
            return self
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            from overflow_core.errors import ConfigError

            raise ConfigError(f"k: expected a positive number of chunks or None, got {k!r}")
        return Ranking(self.question, self.scores[:k], self.timings, self.usage)

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
