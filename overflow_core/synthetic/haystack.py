"""Haystacks: documents of synthetic facts and filler with needle facts hidden in them, sized in a tokenizer's tokens.

Used by the benchmark (``oprm bench``), the bundled model's evaluation (``training/evaluate.py``) and the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from overflow_core.synthetic.facts import Curriculum, Fact, FactWorld, Question

__all__ = ["Haystack", "SharedHaystack", "make_haystack", "make_shared_haystack"]


@dataclass(frozen=True)
class Haystack:
    documents: list[tuple[str, dict[str, str]]]
    question: Question
    needle: Fact | None


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


MAX_MISSES = 200  # over-budget documents in a row before the budget is taken as below the shortest document


def _filler_documents(
    world: FactWorld, rng: random.Random, tokenizer: Any, target_tokens: int, doc_tokens: int
) -> tuple[list[tuple[str, dict[str, str]]], list[Fact]]:
    """Documents of filler and 0-3 facts each (with distractors about similar keys), about ``target_tokens`` in all."""
    docs: list[tuple[str, dict[str, str]]] = []
    facts: list[Fact] = []
    total = 0
    budget = min(doc_tokens, target_tokens)
    cur = Curriculum(max_facts=4, distractor_rate=0.5)
    chars = budget * 3.2  # characters per document; shrunk whenever a document comes out over budget
    misses = 0  # documents over budget in a row: a budget below the shortest document would otherwise loop forever
    while not docs or total + budget <= target_tokens:
        doc_facts = world.facts(rng, rng.randint(0, 3), cur.distractor_rate)
        text = world.document(rng, doc_facts, target_chars=int(chars))
        n_tok = _tokens(tokenizer, text)
        if n_tok > budget or n_tok == 0:  # an empty document (target_chars 0) adds nothing: never take one
            misses += 1
            if misses < MAX_MISSES:
                chars = max(chars * 0.9, 1.0)
                continue
            if docs:  # no shorter document can be made: what there is is the haystack
                break
            # not even one document fits: the shortest one made, over budget, so there is a haystack at all
        misses = 0
        docs.append((text, {"source": f"doc{len(docs):04d}"}))
        facts.extend(doc_facts)
        total += n_tok
    return docs, facts


def _new_pair(world: FactWorld, rng: random.Random, used: set[tuple[str, str]]) -> tuple[str, str]:
    for _ in range(100):
        key, attr = world.key(rng), world.attribute(rng)
        if (key, attr) not in used:
            break
    return key, attr


def _insert(rng: random.Random, text: str, sentence: str) -> str:
    sentences = text.split(". ")
    cut = rng.randint(0, len(sentences))
    return ". ".join([*sentences[:cut], sentence.rstrip("."), *sentences[cut:]])


def make_haystack(
    world: FactWorld, rng: random.Random, tokenizer: Any, target_tokens: int, *, present: bool, doc_tokens: int = 220
) -> Haystack:
    """Documents totalling about ``target_tokens`` tokens; one holds the needle when ``present``."""
    docs, facts = _filler_documents(world, rng, tokenizer, target_tokens, doc_tokens)
    used = {(f.key, f.attr) for f in facts}
    if present:
        needle = world.fact(rng, *_new_pair(world, rng, used))
        where = rng.randrange(len(docs))
        text, meta = docs[where]
        docs[where] = (_insert(rng, text, needle.sentence), meta)
        question = world.question(rng, needle.key, needle.attr, needle.value, present=True)
        return Haystack(docs, question, needle)
    question = world.absent_question(rng, facts, hard_rate=0.7)
    return Haystack(docs, question, None)


@dataclass(frozen=True)
class SharedHaystack:
    """Documents with ``len(needles)`` needle facts in different documents; ``questions[i]`` asks for ``needles[i]``, or
    for nothing present when ``needles[i]`` is None."""

    documents: list[tuple[str, dict[str, str]]]
    questions: list[Question]
    needles: list[Fact | None]


def make_shared_haystack(
    world: FactWorld,
    rng: random.Random,
    tokenizer: Any,
    target_tokens: int,
    *,
    needles: int,
    absent: int,
    doc_tokens: int = 220,
) -> SharedHaystack:
    """Like :func:`make_haystack`, with up to ``needles`` needles (at most one per document) and ``absent`` questions
    about (key, attribute) pairs stated nowhere: a similar name, or a present key with another attribute."""
    docs, facts = _filler_documents(world, rng, tokenizer, target_tokens, doc_tokens)
    used = {(f.key, f.attr) for f in facts}
    placed: list[Fact] = []
    for d in rng.sample(range(len(docs)), min(needles, len(docs))):
        key, attr = _new_pair(world, rng, used)
        used.add((key, attr))
        needle = world.fact(rng, key, attr)
        text, meta = docs[d]
        docs[d] = (_insert(rng, text, needle.sentence), meta)
        placed.append(needle)
    questions = [world.question(rng, f.key, f.attr, f.value, present=True) for f in placed]
    for _ in range(absent):
        for _ in range(100):
            q = world.absent_question(rng, facts + placed, hard_rate=0.7)
            if (q.key, q.attr) not in used:
                break
        questions.append(q)
    return SharedHaystack(docs, questions, [*placed, *([None] * absent)])
