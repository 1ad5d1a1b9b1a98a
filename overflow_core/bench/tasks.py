"""Benchmark tasks: long-context question sets generated at chosen lengths, and a loader for a user's own JSONL.

Every item is one context (a list of documents), one question and its accepted answers; an empty ``answers`` means the
answer is absent and the right reply is the not-found phrase. Generated items also record where the answer is (``evidence``:
document index and character span of the value), so a retrieval hit is decided by position, not by a string that may occur
by chance elsewhere (a lucky number ``42`` inside a ``[12:42]`` log line).

Tasks (all built from :class:`overflow_core.synthetic.facts.FactWorld`, the bundled model's data, with fresh seeds):

- ``single``: one needle fact hidden in filler documents (:func:`training.evaluate.make_haystack`).
- ``multi``: the same, plus several facts about *similar* keys with the *same* attribute (``Alice Novak``'s locker number
  next to ``Alice Baker``'s), some in the needle's own document.
- ``multidoc``: the asked key appears in several separate documents, each giving a different attribute of it; exactly one
  document answers the question.
- ``absent``: nothing answers the question; it asks about a similar key or another attribute of a present key.

Pure Python over a tokenizer; the same seed gives the same items.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overflow_core.errors import InputError

__all__ = ["TASKS", "Evidence", "Item", "generate", "generate_all", "load_jsonl"]

TASKS = ("single", "multi", "multidoc", "absent")
BENCH_SEED = 20_250_512  # not a training seed (training draws from seed * 1_000_003 + step with small seeds)


@dataclass(frozen=True)
class Evidence:
    """Where the answer's value is: ``documents[doc][start:end]``."""

    doc: int
    start: int
    end: int


@dataclass(frozen=True)
class Item:
    """One question over one context. ``answers`` empty: the answer is absent (expect "not found")."""

    id: str
    task: str
    length: int  # the length it was generated for (tokens); 0 for a user's JSONL items (see ``context_tokens``)
    documents: tuple[tuple[str, dict[str, str]], ...] = field(repr=False)
    question: str
    answers: tuple[str, ...]
    evidence: Evidence | None = None
    context_tokens: int = 0  # measured with the model's tokenizer
    key: str = ""  # generated items: the entity and attribute asked about
    attr: str = ""

    @property
    def absent(self) -> bool:
        return not self.answers


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _insert(rng: random.Random, text: str, sentence: str, keep: Sequence[str] = ()) -> str:
    """``sentence`` at a random sentence boundary of ``text``, never inside one of the ``keep`` sentences."""
    protected = []
    for kept in keep:
        at = text.find(kept.rstrip("."))
        if at >= 0:
            protected.append((at, at + len(kept)))
    cuts = [0, len(text), *(i + 2 for i in range(len(text) - 1) if text[i : i + 2] == ". ")]
    cuts = sorted({c for c in cuts if not any(a < c < b for a, b in protected)})
    cut = rng.choice(cuts)
    if cut == 0:
        return f"{sentence} {text}"
    if cut == len(text):
        return f"{text} {sentence}"
    return f"{text[:cut]}{sentence} {text[cut:]}"


def _evidence(documents: Sequence[tuple[str, dict[str, str]]], doc: int, sentence: str, value: str) -> Evidence:
    text = documents[doc][0]
    at = text.find(sentence.rstrip("."))
    assert at >= 0, "the needle sentence must be in its document"
    offset = sentence.find(value)
    if offset < 0:  # a value that opens its sentence is capitalised there ("Teacher is the job of Quinn Novak.")
        offset = sentence.lower().find(value.lower())
    assert offset >= 0, "the needle sentence must state its value"
    return Evidence(doc, at + offset, at + offset + len(value))


def _needle_doc(documents: Sequence[tuple[str, dict[str, str]]], sentence: str) -> int:
    return next(i for i, (text, _) in enumerate(documents) if sentence.rstrip(".") in text)


def _one(task: str, world: Any, rng: random.Random, tokenizer: Any, length: int) -> tuple[list[Any], Any, Any]:
    """(documents, question, needle fact or None) for one item of ``task``."""
    from overflow_core.synthetic.haystack import make_haystack

    hay = make_haystack(world, rng, tokenizer, length, present=task != "absent")
    docs = list(hay.documents)
    needle = hay.needle
    if task in ("single", "absent"):
        return docs, hay.question, needle
    assert needle is not None
    where = _needle_doc(docs, needle.sentence)
    if task == "multi":  # facts about similar keys, same attribute; two of them in the needle's own document
        made = 0
        for _ in range(100):
            if made == 4:
                break
            key = world.similar_key(rng, needle.key)
            if key == needle.key:
                continue
            fact = world.fact(rng, key, needle.attr)
            if fact.value == needle.value:
                continue
            target = where if made < 2 else rng.randrange(len(docs))
            docs[target] = (_insert(rng, docs[target][0], fact.sentence, [needle.sentence]), docs[target][1])
            made += 1
    else:  # multidoc: the same key with other attributes, one fact per other document
        others = [a for a in world.attributes if a != needle.attr]
        rng.shuffle(others)
        candidates = [i for i in range(len(docs)) if i != where] or [where]
        for attr in others[:4]:
            fact = world.fact(rng, needle.key, attr)
            if needle.value in fact.sentence:
                continue
            target = rng.choice(candidates)
            docs[target] = (_insert(rng, docs[target][0], fact.sentence, [needle.sentence]), docs[target][1])
    return docs, hay.question, needle


def generate(
    task: str,
    length: int,
    n: int,
    tokenizer: Any,
    *,
    seed: int = BENCH_SEED,
    split: str = "train",
    not_found: str = "not found",
) -> list[Item]:
    """``n`` items of ``task`` whose contexts hold about ``length`` tokens of ``tokenizer``.

    Args:
        task: one of :data:`TASKS`.
        length: target context length in tokens (at least about one document, ~220 tokens).
        n: number of items.
        tokenizer: the model's tokenizer (lengths are counted in its tokens).
        seed: the same seed, task, length and split give the same items.
        split: ``"train"`` (phrasings the bundled model saw in training, with fresh values) or ``"heldout"``.

    Example:
        >>> items = generate("single", 2048, 4, oprm.tokenizer)  # doctest: +SKIP
    """
    from overflow_core.synthetic.facts import FactWorld

    if task not in TASKS:
        raise InputError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if length < 1 or n < 0:
        raise InputError(f"length and n: expected length >= 1 and n >= 0, got length={length}, n={n}")
    if split not in ("train", "heldout"):
        raise InputError(f"split: expected 'train' or 'heldout', got {split!r}")
    world = FactWorld(split, not_found=not_found)  # type: ignore[arg-type]
    rng = random.Random(f"{seed}-{task}-{length}-{split}")
    items = []
    for i in range(n):
        docs, question, needle = _one(task, world, rng, tokenizer, length)
        evidence = None
        answers: tuple[str, ...] = ()
        if needle is not None:
            answers = (needle.value,)
            evidence = _evidence(docs, _needle_doc(docs, needle.sentence), needle.sentence, needle.value)
        items.append(
            Item(
                id=f"{task}-{length}-{i}",
                task=task,
                length=length,
                documents=tuple(docs),
                question=question.text,
                answers=answers,
                evidence=evidence,
                context_tokens=sum(_tokens(tokenizer, text) for text, _ in docs),
                key=question.key,
                attr=question.attr,
            )
        )
    return items


def generate_all(
    tasks: Sequence[str], lengths: Sequence[int], n: int | dict[int, int], tokenizer: Any, **kwargs: Any
) -> list[Item]:
    """Items for every (length, task); ``n`` per pair, or a ``{length: n}`` map."""
    out: list[Item] = []
    for length in lengths:
        count = n[length] if isinstance(n, dict) else n
        for task in tasks:
            out.extend(generate(task, length, count, tokenizer, **kwargs))
    return out


def load_jsonl(path: str | Path, tokenizer: Any = None, *, task: str | None = None) -> list[Item]:
    """Items from a JSONL file, one ``{"context", "question", "answers"}`` object a line.

    ``context`` is a string or a list of strings (separate documents); ``answers`` a list of accepted answers, empty when
    the context does not answer the question (the right reply is then "not found"). An optional ``id`` names the item.
    Blank lines are skipped. With ``tokenizer``, each item's ``context_tokens`` is measured.

    Raises:
        InputError: a missing or empty file, a line that is not JSON, or an object without the expected fields.

    Example:
        >>> load_jsonl("my_eval.jsonl", oprm.tokenizer)  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file (expected JSONL with one {{context, question, answers}} object a line)")
    name = task or p.stem
    items: list[Item] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: expected UTF-8 text, could not decode byte {exc.start} ({exc.reason})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: expected a JSON object, could not parse it ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("context", "question", "answers") if k not in obj]
        if missing:
            raise InputError(f"{where}: expected keys context, question, answers; missing {', '.join(missing)}")
        context, question, answers = obj["context"], obj["question"], obj["answers"]
        if isinstance(context, str):
            context = [context]
        if not (isinstance(context, list) and context and all(isinstance(c, str) and c.strip() for c in context)):
            raise InputError(f"{where}: context: expected a non-empty string or a list of non-empty strings")
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{where}: question: expected a non-empty string, got {question!r}")
        if not (isinstance(answers, list) and all(isinstance(a, str) and a.strip() for a in answers)):
            raise InputError(f"{where}: answers: expected a list of non-empty strings ([] when absent), got {answers!r}")
        docs = tuple((text, {"source": f"{name}:{number}:{j}"}) for j, text in enumerate(context))
        tokens = sum(_tokens(tokenizer, text) for text in context) if tokenizer is not None else 0
        items.append(
            Item(
                id=str(obj.get("id", f"{name}-{number}")),
                task=name,
                length=0,
                documents=docs,
                question=question.strip(),
                answers=tuple(a.strip() for a in answers),
                context_tokens=tokens,
            )
        )
    if not items:
        raise InputError(f"{path}: expected at least one {{context, question, answers}} line, got an empty file")
    return items
