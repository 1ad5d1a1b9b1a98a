"""The held-out format family: facts and questions in templates, attribute names and filler that no training generator
uses, to measure whether a model learned to look facts up or learned the training templates.

Written before the compositional training generator (:mod:`overflow_core.synthetic.compose`) was trained on, and never
used to tune it. What it shares with training is the task only (a key, an attribute, a value; "not found" when the
document does not say):

- **Filler:** sentences of Python standard-library docstrings (:func:`overflow_core.synthetic.text.heldout_text`):
  technical documentation, where training reads fortunes.
- **Attribute names:** one or two *reserved* docstring words (``text.is_reserved``: one word in 16 by a hash), which
  no training attribute name contains: "encoding cutoff", "quota".
- **Fact sentences:** :data:`FACT_TEMPLATES`, 10 skeletons; **questions:** :data:`QUESTION_TEMPLATES`, 10 skeletons.
  ``tests/test_heldout.py`` checks that no training fact sentence or question matches any of them.
- **Values** of shapes training also uses (digits, dates, words) and of shapes it does not (versions "4.12.7",
  times "14:05", percentages "37%", hex "0x3fa9").
- **Documents:** paragraphs under headings of its own ("Section 4 (encoding)").

Every key and attribute stands after a space in both the document and the question, so it is the same tokens in both.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

from overflow_core.synthetic.facts import Fact, FactWorld, Question
from overflow_core.synthetic.text import TextSource, heldout_text, is_reserved

__all__ = ["FACT_TEMPLATES", "QUESTION_TEMPLATES", "HeldOutFamily", "skeleton_pattern"]

FACT_TEMPLATES = (
    "Per the {K} entry, {A} stands at {V}.",
    "Whoever checks {K} will find its {A} set at {V}.",
    "The sheet kept for {K} puts {A} down as {V}.",
    "Against {K}, the {A} column shows {V}.",
    "Filed under {K} -- {A}: {V}.",
    "It was {V}, the {A} noted against {K}.",
    "Somebody wrote {V} beside {K} under {A}.",
    "In the {K} folder, {A} is marked {V}.",
    "Check {K}; its {A} happens to be {V}.",
    "Among other things, {K} carries {V} for {A}.",
)
QUESTION_TEMPLATES = (
    "Could you dig up the {A} on file for {K}?",
    "I am after {K}'s {A}; what is it?",
    "For {K}, which {A} was written down?",
    "Remind me, what does the {A} of {K} come to?",
    "Do we have a {A} noted against {K}?",
    "What figure sits under {A} for {K}?",
    "Quick check on {K}: the {A}, please?",
    "According to the notes, {K} has what {A}?",
    "Any idea what {K} uses as {A}?",
    "Looking at {K} - {A}?",
)
_HEADINGS = ("Section", "Part", "Chapter", "Appendix")
_KEY_KINDS = ("module", "server", "ledger", "account", "workshop", "expedition", "archive", "cluster", "pipeline")
_GIVEN = (
    "Ayesha", "Bartholomew", "Chidi", "Delphine", "Eamon", "Freya", "Giorgos", "Hiroko", "Imogen", "Jarrah", "Kasimir",
    "Leonie", "Mateus", "Noor", "Oisin", "Priya", "Rasmus", "Solveig", "Teodor", "Valentina", "Wiremu", "Ximena",
)  # fmt: skip
_ALL_FAMILY = (
    "Abernathy", "Bergstrom", "Chaudhry", "Dimitriou", "Esposito", "Fairweather", "Grünewald", "Halvorsen", "Iwasaki",
    "Kowalczyk", "Lachance", "Mbeki", "Nakashima", "Oyelaran", "Pemberton", "Quintero", "Rautenbach", "Szabo",
)  # fmt: skip
_FAMILY: tuple[str, ...] = tuple(n for n in _ALL_FAMILY if n.isascii())


def skeleton_pattern(template: str) -> re.Pattern[str]:
    """A regex that matches any sentence made from ``template`` (its placeholders match anything)."""
    parts = re.split(r"\{[KAV]\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.DOTALL)


@dataclass
class HeldOutFamily(FactWorld):
    """Draws held-out samples; the interface of :class:`FactWorld` (``sample``, ``facts``, ``fact``, ``question``,
    ``absent_question``, ``document``), so the evaluation, the haystacks and OPRM take it as they take the others."""

    text: TextSource | None = None
    _attr_words: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text is None:
            self.text = heldout_text()
        self._attr_words = tuple(w for w in self.text.words if is_reserved(w) and len(w) >= 4)

    @property
    def source(self) -> TextSource:
        assert self.text is not None
        return self.text

    # -- pieces ---------------------------------------------------------------------------------------------------------
    def attribute(self, r: random.Random) -> str:
        if r.random() < 0.6:
            return r.choice(self._attr_words)
        while True:
            a, b = r.choice(self._attr_words), r.choice(self._attr_words)
            if a != b:
                return f"{a} {b}"

    def key(self, r: random.Random) -> str:
        u = r.random()
        if u < 0.5:
            return f"{r.choice(_GIVEN)} {r.choice(_FAMILY)}"
        if u < 0.8:
            return f"the {r.choice(self.source.words)} {r.choice(_KEY_KINDS)}"
        return f"unit {r.randint(10, 999)}{r.choice(string.ascii_uppercase)}"

    def similar_key(self, r: random.Random, key: str) -> str:
        words = key.split(" ")
        if words[0] == "the":
            return f"the {r.choice(self.source.words)} {words[2]}"
        if words[0] == "unit":
            return f"unit {r.randint(10, 999)}{words[1][-1]}"
        return f"{words[0]} {r.choice(_FAMILY)}" if r.random() < 0.5 else f"{r.choice(_GIVEN)} {words[1]}"

    def near_attribute(self, r: random.Random, attr: str) -> str:
        words = attr.split(" ")
        while True:
            near = (
                f"{r.choice(self._attr_words)} {words[-1]}"
                if len(words) > 1
                else f"{attr} {r.choice(self._attr_words)}"
            )
            if near != attr:
                return near

    def value(self, r: random.Random, attr: str) -> str:
        del attr
        kind = r.randrange(9)
        if kind == 0:
            return ".".join(str(r.randint(0, 20)) for _ in range(3))
        if kind == 1:
            return f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"
        if kind == 2:
            return f"{r.randint(1, 99)}%"
        if kind == 3:
            return "0x" + "".join(r.choice("0123456789abcdef") for _ in range(r.randint(3, 6)))
        if kind == 4:
            return r.choice(self.source.words)
        if kind == 5:
            return f"{r.randint(1990, 2030)}/{r.randint(1, 12):02d}/{r.randint(1, 28):02d}"
        if kind == 6:
            return f"{r.choice(_GIVEN)} {r.choice(_FAMILY)}"
        return str(r.randint(1, 10 ** r.randint(2, 9)))

    def fact(self, r: random.Random, key: str, attr: str, decorate: bool = True) -> Fact:
        del decorate
        value = self.value(r, attr)
        sentence = r.choice(FACT_TEMPLATES).format(K=key, A=attr, V=value)
        return Fact(key=key, attr=attr, value=value, sentence=sentence)

    def filler(self, r: random.Random) -> str:
        return r.choice(self.source.sentences)

    def question(self, r: random.Random, key: str, attr: str, answer: str, present: bool) -> Question:
        text = r.choice(QUESTION_TEMPLATES).format(K=key, A=attr)
        return Question(text=text, answer=answer, key=key, attr=attr, present=present)

    def document(self, r: random.Random, facts: list[Fact], target_chars: int) -> str:
        sentences: list[str] = []
        size = sum(len(f.sentence) + 1 for f in facts)
        while size < target_chars:
            sentences.append(self.filler(r))
            size += len(sentences[-1]) + 1
        for fact in facts:
            sentences.insert(r.randint(0, len(sentences)), fact.sentence)
        paragraphs: list[str] = []
        i = 0
        while i < len(sentences):
            step = r.randint(2, 6)
            para = " ".join(sentences[i : i + step])
            if r.random() < 0.2:
                para = f"{r.choice(_HEADINGS)} {r.randint(1, 12)} ({r.choice(self.source.words)})\n{para}"
            paragraphs.append(para)
            i += step
        return "\n\n".join(paragraphs)
