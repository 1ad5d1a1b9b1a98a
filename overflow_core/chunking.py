"""Chunking: documents -> chunks of at most ``chunk_tokens`` tokens, cut at paragraph or sentence ends where possible.

Chunks never mix documents and remember their document and character span. A chunk's ids are always the tokenizer's
encoding of the chunk's text on its own (:func:`encode_text`), so whoever re-encodes a chunk's text (a framework adapter,
a chat model, the state index) gets the same ids, and the same state. Pure Python over the tokenizer; no torch.

What it guarantees, whatever the text and the tokenizer (and what ``tests/test_hardening.py`` checks):

* Nothing is lost: ``chunk.text == document.text[chunk.start:chunk.end]``, and the chunks of a document, each minus the
  part the previous chunk already covered (the overlap), hold every non-whitespace character of the document, in order.
* It ends: every chunk covers at least one character no earlier chunk covered, so a document of ``n`` characters gives at
  most ``n`` chunks, each found with a bounded number of tokenizer calls.
* No chunk holds more than ``chunk_tokens`` tokens; a ``chunk_tokens`` too small for a single character of the text is a
  :class:`~overflow_core.errors.ConfigError`, never a loop.
* User text never becomes a control token: chunk ids come from :func:`~overflow_core.prompting.encode_text`, which
  encodes the literal text of special tokens (``<|end|>``, ``<|im_start|>``, pad, BOS, EOS...) as ordinary characters.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from typing import Any

from overflow_core.errors import ConfigError, InputError
from overflow_core.prompting import _encode_plain, control_token_ids, encode_text
from overflow_core.types import Chunk, Document, check_text

# control_token_ids and encode_text live in prompting; they are kept importable from here too
__all__ = ["CHUNKER_VERSION", "chunk_documents", "control_token_ids", "encode_text"]

# The chunking rules' version: a state index records it, and one built by other rules is refused (its chunks differ).
# Raise it whenever the same text and settings could give other chunks.
CHUNKER_VERSION = 2

_PARAGRAPH = re.compile(r"\n\s*\n")
# a sentence ends at . ! ? ; : followed by closing quotes/brackets and whitespace, at the full-width and other scripts'
# sentence marks (CJK, Devanagari danda, Arabic/Urdu question mark and full stop, Greek question mark) with or without
# whitespace after them (CJK runs sentences together), or at any line end
_SENTENCE = re.compile(
    r"(?<=[.!?;:\u2026])[\"')\]\u201d\u2019]*\s+"
    r"|(?<=[\u3002\uff01\uff1f\uff1b\uff0e\u0964\u0965\u061f\u06d4\u037e])[\u300d\u300f\u201d\u2019\uff09)\]\"']*\s*"
    r"|\n"
)


# -- chunking -------------------------------------------------------------------------------------------------------------
def _skip_space(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos].isspace():
        pos += 1
    return pos


def _largest(positions: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of the ascending ``positions`` that ``fits`` (binary search: fit is monotone up to tokenizer edge
    effects, and whatever is returned was checked)."""
    lo, hi, best = 0, len(positions) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(positions[mid]):
            best, lo = positions[mid], mid + 1
        else:
            hi = mid - 1
    return best


class _Grid:
    """Where the whole document's tokens start and end, and the character positions where it can be cut cleanly (between
    two tokens that share no character)."""

    def __init__(self, offsets: Sequence[tuple[int, int]], n_chars: int) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        cuts = set()
        high_start = high_end = 0
        for s, e in offsets:
            high_start = max(high_start, s)
            if high_end <= high_start and high_start > 0:
                cuts.add(high_start)
            high_end = max(high_end, e, high_start)
            self.starts.append(high_start)
            self.ends.append(high_end)
        cuts.add(n_chars)
        self.cuts = sorted(c for c in cuts if 0 < c <= n_chars)
        self.n_chars = n_chars

    def window_end(self, start: int, tokens: int) -> int:
        """About ``tokens`` tokens after the character ``start``, snapped back to a clean cut (never back to ``start``)."""
        first = bisect_right(self.ends, start)  # the first token that ends after ``start``
        last = first + tokens
        limit = self.n_chars if last >= len(self.starts) else self.starts[last]
        i = bisect_right(self.cuts, limit) - 1
        if i < 0 or self.cuts[i] <= start:
            i = bisect_right(self.cuts, start)  # the first clean cut after ``start``
        return self.cuts[i]

    def back(self, end: int, tokens: int) -> int:
        """The clean cut about ``tokens`` tokens before ``end``."""
        j = bisect_left(self.starts, end) - tokens
        if j <= 0:
            return 0
        i = bisect_right(self.cuts, self.starts[j]) - 1
        return self.cuts[i] if i >= 0 else 0


def _best_cut(start: int, floor: int, limit: int, paragraphs: list[int], sentences: list[int]) -> int:
    """The end of the chunk that starts at ``start``: the last paragraph end in the second half of the window, else the
    last sentence end in its last two thirds, else ``limit``; always after ``floor``."""
    span = limit - start
    for candidates, fraction in ((paragraphs, 0.5), (sentences, 0.33)):
        i = bisect_right(candidates, limit) - 1
        if i >= 0 and candidates[i] > floor and candidates[i] >= start + span * fraction:
            return candidates[i]
    return limit


def _fit(
    tokenizer: Any,
    text: str,
    grid: _Grid,
    start: int,
    first_new: int,
    chunk_tokens: int,
    paragraphs: list[int],
    sentences: list[int],
) -> tuple[str, tuple[int, ...]] | None:
    """The text and ids of the chunk that starts at ``start`` and covers at least the character ``first_new``: up to the
    best cut within about ``chunk_tokens`` tokens, pulled back until its own encoding fits. None if nothing fits."""
    encoded: dict[int, tuple[str, tuple[int, ...]]] = {}

    def fits(end: int) -> bool:
        if end not in encoded:
            body = text[start:end].rstrip()
            encoded[end] = (body, encode_text(tokenizer, body))
        return len(encoded[end][1]) <= chunk_tokens

    limit = max(grid.window_end(start, chunk_tokens), first_new + 1)
    if limit >= len(text) and fits(len(text)):  # the rest fits: one chunk (so a chunk's own text chunks to itself)
        return encoded[len(text)]
    end: int | None = _best_cut(start, first_new, limit, paragraphs, sentences)
    if end is not None and not fits(end):  # its own encoding is longer than the window's count: cut earlier
        lo = bisect_right(grid.cuts, first_new)
        end = _largest(grid.cuts[lo : bisect_left(grid.cuts, end)], fits)
        if end is None:  # no clean cut fits: cut between characters
            unit = grid.cuts[lo] if lo < len(grid.cuts) else len(text)
            end = _largest(range(first_new + 1, min(limit, unit) + 1), fits)
    return None if end is None else encoded[end]


def _chunk_one(
    tokenizer: Any, doc: Document, doc_index: int, first_index: int, chunk_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    text = doc.text
    n = len(text)
    enc = _encode_plain(tokenizer, text, return_offsets_mapping=True)
    grid = _Grid([(int(s), int(e)) for s, e in enc["offset_mapping"]], n)
    paragraphs = [m.end() for m in _PARAGRAPH.finditer(text)]
    sentences = [m.end() for m in _SENTENCE.finditer(text)]
    chunks: list[Chunk] = []
    covered = 0  # every non-whitespace character before this is in a chunk
    nxt = 0  # where the next chunk starts (before its leading whitespace): ``covered`` stepped back by the overlap
    while (first_new := _skip_space(text, covered)) < n:
        start = min(_skip_space(text, nxt), first_new)
        found = _fit(tokenizer, text, grid, start, first_new, chunk_tokens, paragraphs, sentences)
        if found is None:
            if start < first_new:  # the overlap leaves no room for new text: start this chunk without it
                nxt = first_new
                continue
            raise ConfigError(
                f"chunk_tokens: expected enough tokens for one character, got {chunk_tokens}; the character "
                f"{text[first_new]!r} at {first_new} of documents[{doc_index}] takes "
                f"{len(encode_text(tokenizer, text[first_new]))} tokens"
            )
        body, ids = found
        chunks.append(
            Chunk(
                index=first_index + len(chunks),
                doc_index=doc_index,
                text=body,
                start=start,
                end=start + len(body),
                ids=ids,
                metadata=dict(doc.metadata),
            )
        )
        covered = start + len(body)
        nxt = covered
        if overlap_tokens:
            back = grid.back(covered, overlap_tokens)
            if start < back < covered:
                nxt = back
    return chunks


def chunk_documents(
    tokenizer: Any, documents: Sequence[Document], *, chunk_tokens: int, overlap_tokens: int = 0
) -> list[Chunk]:
    """Cut every document into chunks of at most ``chunk_tokens`` tokens.

    Args:
        tokenizer: the model's own (fast) tokenizer; it must return offsets.
        documents: the documents, in order; ``Chunk.doc_index`` refers to this order.
        chunk_tokens: the most tokens of text in one chunk.
        overlap_tokens: about how many tokens of the end of a chunk the next chunk of the same document repeats (less
            where that would leave the next chunk no new text).

    Returns:
        The chunks of all documents in order, ``Chunk.index`` counting from 0. ``chunk.text`` is
        ``documents[chunk.doc_index].text[chunk.start:chunk.end]``.

    Raises:
        InputError: no documents, a document that is empty, only whitespace, or not valid text.
        ConfigError: ``chunk_tokens`` or ``overlap_tokens`` out of range, or ``chunk_tokens`` too small for a character.

    Example:
        >>> chunks = chunk_documents(tok, [Document("One. Two.", {"source": "a.txt"})], chunk_tokens=256)  # doctest: +SKIP
    """
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens: expected a positive integer, got {chunk_tokens!r}")
    if (
        isinstance(overlap_tokens, bool)
        or not isinstance(overlap_tokens, int)
        or not 0 <= overlap_tokens < chunk_tokens
    ):
        raise ConfigError(
            f"overlap_tokens: expected an integer with 0 <= overlap_tokens < chunk_tokens ({chunk_tokens}), "
            f"got {overlap_tokens!r}"
        )
    if not documents:
        raise InputError("documents: expected at least one document, got none")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError("tokenizer: expected a fast tokenizer (offsets are needed for chunk spans)")
    chunks: list[Chunk] = []
    for i, doc in enumerate(documents):
        where = f" ({doc.source})" if isinstance(doc, Document) and doc.source else ""
        if not isinstance(doc, Document):
            raise InputError(f"documents[{i}]: expected a Document, got {type(doc).__name__}")
        check_text(f"documents[{i}]{where}", doc.text)
        if not doc.text.strip():
            raise InputError(f"documents[{i}]{where}: expected text, got an empty document")
        chunks.extend(_chunk_one(tokenizer, doc, i, len(chunks), chunk_tokens, overlap_tokens))
    return chunks
