"""The compositional training generator: facts, questions and filler composed from random parts of real English, so
that no template can be memorised and the only thing that works everywhere is the skill itself (find the key and the
attribute of the question in the document, copy the value that goes with them, or say "not found").

What varies, per fact or question (each drawn independently):

- **Attribute names:** one or two English words from a 110,000-word list (``wamerican-large``), a word and a short
  head ("number", "code"...), or a piece of a word ("lorat", "ckwin"); never a *reserved* word
  (:func:`overflow_core.synthetic.text.is_reserved`, the held-out family's attribute words).
- **Keys:** names from the word list's 17,000 capitalised entries ("Abigail Cornwallis"), "project X", "the W W",
  companies, codes ("ledge-4471"), word pieces.
- **Values:** digits of 1-12 figures, codes of several shapes, words, names, dates in five formats, amounts; the kind
  of value never follows from the attribute's name, so the value is found by position, not by shape.
- **Fact sentences:** six orders of key, attribute and value; connectors from pools; comma-delimited interjections cut
  from real sentences; the fact on its own, inside a filler sentence, or as a record line.
- **Questions:** a lead (none, a greeting, or a whole filler sentence), an ask composed from a verb phrase, an
  article and a preposition in either order of key and attribute, and an ending.
- **Filler:** 25,000 sentences of the ``fortunes`` package, and a share of sentences of random dictionary words, so
  every token of the vocabulary is read as input.

The key and the attribute never start a document line or a question, so they are the same tokens (each with its leading
space) in the question as in the text. Values likewise follow a space. The interface is :class:`FactWorld`'s, so
:class:`overflow_core.synthetic.facts.Curriculum`, the haystacks and the evaluation take this world as they take that one.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from overflow_core.synthetic.facts import MONTHS, Fact, FactWorld, Question
from overflow_core.synthetic.text import TextSource, is_reserved, training_text

__all__ = ["FACT_CONNECTORS", "QUESTION_ASKS", "ComposedWorld"]

HEADS = ("number", "code", "name", "date", "ID", "level", "count", "score", "word", "year", "label", "tag", "value")
_OF = ("of", "for", "belonging to", "assigned to", "linked to", "held by", "that goes with", "given to", "tied to")
_IS = (" is ", " was ", " is now ", " equals ", " reads ", " became ", " remains ", " is listed as ", " = ", ": ",
       " -> ", " is still ", " turned out to be ", " came out as ", " was recorded as ", " would be ")  # fmt: skip
_VALUE_IS = ("is", "was", "serves as", "is listed as", "became", "remains", "counts as", "was given as", "is")
_KEY_VERBS = ("has", "had", "got", "picked", "holds", "registered", "listed", "chose", "keeps", "reported", "gave")
_AS = ("as the", "as its", "as their", "for the", "as the new", "as")
_RECORD_SEPARATORS = (" - ", " | ", ", ", " / ", " :: ")
_LEADS = ("Note: ", "Also, ", "By the way, ", "For the record, ", "Then again, ", "Meanwhile, ", "Still, ",
          "Officially, ", "In any case, ", "Apparently, ", "Update: ", "So ", "And ", "Oh, and ")  # fmt: skip
_ENDS = (".", ".", ".", "!", ";", ".", ", apparently.", ", or so we hear.", " - confirmed.")
FACT_CONNECTORS = (_OF, _IS, _VALUE_IS, _KEY_VERBS, _AS, _RECORD_SEPARATORS, _LEADS, _ENDS)

_ASK_VERBS = ("what is", "what was", "what's", "tell me", "give me", "show me", "find", "I want", "I'd like to know",
              "do you know", "can you tell me", "which is", "name", "please give", "look for", "search for", "get me",
              "what does the text give as", "what do we know as")  # fmt: skip
QUESTION_ASKS = (
    "{verb} the {A} {of} {K}",
    "{verb} {K}'s {A}",
    "{verb} the {A} {K} has",
    "what {A} does {K} have",
    "which {A} {of} {K}",
    "the {A} {of} {K}",
    "and the {A} {of} {K}",
    "about {K}: the {A}",
    "regarding {K}, {verb} the {A}",
    "so {K}'s {A} is what",
)
_QUESTION_LEADS = ("", "", "", "", "Hi, ", "Hello! ", "Quick question: ", "Okay, ", "One more: ", "Hey, ", "Sorry, ",
                   "Next: ", "Then ")  # fmt: skip
_QUESTION_ENDS = ("?", "?", "?", "", ".", "? Thanks.", "??", "? Just the answer.", ", please?")
_COMPANY = ("Inc", "Ltd", "Group", "Labs", "Society", "Partners", "Bakery", "Studio", "Works", "Trust")


def _digits(r: random.Random, lo: int, hi: int) -> str:
    n = r.randint(lo, hi)
    return "".join(r.choice(string.digits) for _ in range(n))


def _letters(r: random.Random, lo: int, hi: int) -> str:
    return "".join(r.choice(string.ascii_uppercase) for _ in range(r.randint(lo, hi)))


def _foreign_word(r: random.Random) -> str:
    """One to four random non-ASCII characters, from UTF-8's two-, three- and four-byte ranges alike, so every lead and
    continuation byte that valid UTF-8 can hold occurs in the input (the fortunes and the word list are ASCII)."""
    chars = []
    for _ in range(r.randint(1, 4)):
        lo, hi = r.choice(((0xA1, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)))
        chars.append(chr(r.randint(lo, hi)))
    return "".join(chars)


@dataclass
class ComposedWorld(FactWorld):
    """Draws training samples composed from real text (``text``, by default :func:`text.training_text`)."""

    text: TextSource | None = None
    noise_rate: float = 0.06  # share of filler sentences of random dictionary words and names
    _attr_words: tuple[str, ...] = field(init=False, default=())
    _heads: tuple[str, ...] = field(init=False, default=())
    _short: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text is None:
            self.text = training_text()
        self._attr_words = tuple(w for w in self.text.words if not is_reserved(w))
        self._heads = tuple(h for h in HEADS if not is_reserved(h))
        # sentences short enough to carry a fact inside them
        self._short = tuple(s for s in self.text.sentences if len(s) <= 120)

    @property
    def source(self) -> TextSource:
        assert self.text is not None
        return self.text

    # -- pieces ---------------------------------------------------------------------------------------------------------
    def _word(self, r: random.Random) -> str:
        return r.choice(self.source.words)

    def _name(self, r: random.Random) -> str:
        return r.choice(self.source.names)

    def _piece(self, r: random.Random) -> str:
        """A piece of a dictionary word, 3-7 letters, that is no reserved word."""
        while True:
            w = r.choice(self._attr_words)
            n = min(len(w), r.randint(3, 7))
            start = r.randint(0, len(w) - n)
            piece = w[start : start + n]
            if not is_reserved(piece):
                return piece

    def attribute(self, r: random.Random) -> str:
        u = r.random()
        if u < 0.4:
            return r.choice(self._attr_words)
        if u < 0.65:
            return f"{r.choice(self._attr_words)} {r.choice(self._attr_words)}"
        if u < 0.85:
            return f"{r.choice(self._attr_words)} {r.choice(self._heads)}"
        if u < 0.93:
            return self._piece(r)
        return f"{self._piece(r)} {r.choice(self._heads)}"

    def key(self, r: random.Random) -> str:
        u = r.random()
        if u < 0.5:
            return f"{self._name(r)} {self._name(r)}"
        if u < 0.6:
            return f"project {self._name(r) if r.random() < 0.5 else self._word(r)}"
        if u < 0.72:
            return f"the {self._word(r)} {self._word(r)}"
        if u < 0.82:
            return f"{self._name(r)} {r.choice(_COMPANY)}"
        if u < 0.92:
            return f"{self._word(r)}-{_digits(r, 2, 5)}"
        return self._piece(r).capitalize() + " " + self._name(r)

    def similar_key(self, r: random.Random, key: str) -> str:
        """A key one word (or, for codes, the digits) away from ``key``."""
        words = key.split(" ")
        if len(words) == 1 and "-" in key:
            return f"{key.split('-')[0]}-{_digits(r, 2, 5)}"
        i = r.randrange(len(words))
        if words[i] in ("project", "the") or words[i] in _COMPANY:
            i = len(words) - 1 if i == 0 else 0
        repl = self._name(r) if words[i][:1].isupper() else self._word(r)
        near = " ".join([*words[:i], repl, *words[i + 1 :]])
        return near if near != key else self.key(r)

    def near_attribute(self, r: random.Random, attr: str) -> str:
        """An attribute one word away from ``attr`` (a word replaced, added or dropped)."""
        words = attr.split(" ")
        while True:
            u = r.random()
            if len(words) == 1:
                near = f"{attr} {r.choice(self._heads)}" if u < 0.5 else f"{r.choice(self._attr_words)} {attr}"
            elif u < 0.5:
                near = f"{r.choice(self._attr_words)} {words[-1]}"
            else:
                near = " ".join([*words[:-1], r.choice(self._heads)])
            if near != attr:
                return near

    def value(self, r: random.Random, attr: str) -> str:
        del attr  # the kind of value never follows from the name
        kind = r.randrange(12)
        if kind <= 2:
            n = r.choice((1, 2, 3, 4, 4, 5, 6, 7, 8, 10, 12))
            return str(r.randint(1, 9)) + _digits(r, n - 1, n - 1)
        if kind == 3:
            return r.choice(
                (
                    f"{_letters(r, 1, 3)}-{_digits(r, 2, 5)}",
                    f"{_letters(r, 2, 4)}{_digits(r, 1, 4)}",
                    f"{_digits(r, 2, 4)}/{_letters(r, 1, 2)}",
                    f"{_letters(r, 1, 1)}{_digits(r, 1, 2)}{_letters(r, 1, 2)}{_digits(r, 1, 2)}",
                )
            )
        if kind in (4, 5):
            return self._word(r)
        if kind == 6:
            return self._name(r) if r.random() < 0.5 else f"{self._name(r)} {self._name(r)}"
        if kind == 7:
            d, m, y = r.randint(1, 28), r.randint(1, 12), r.randint(1900, 2040)
            return r.choice(
                (f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1]} {d}, {y}", f"{y}-{m:02d}-{d:02d}", f"{d}/{m}/{y}",
                 f"{d} {MONTHS[m - 1]}")
            )  # fmt: skip
        if kind == 8:
            return r.choice(
                (f"${r.randint(1, 9999)}.{_digits(r, 2, 2)}", f"{r.randint(1, 999)} kg", f"{r.randint(1, 999)} km",
                 f"{r.randint(1, 99)}.{r.randint(0, 9)} litres", f"{r.randint(2, 500)} dollars")
            )  # fmt: skip
        if kind == 9:
            return f"{self._word(r)}{_digits(r, 1, 3)}"
        if kind == 10:
            return str(r.randint(1900, 2040))
        return f"{self._word(r)} {self._word(r)}"

    def _fragment(self, r: random.Random) -> str:
        """Two to five consecutive words of a real sentence, no punctuation at either end."""
        words = r.choice(self._short).split()
        n = min(len(words), r.randint(2, 5))
        start = r.randint(0, len(words) - n)
        return " ".join(words[start : start + n]).strip(".,;:!?\"'()-").strip()

    def _clause(self, r: random.Random, key: str, attr: str, value: str, decorate: bool) -> str:
        """The fact as a clause in one of six orders; with ``decorate``, sometimes an interjection after its first part."""
        the = r.choice(("the ", "the ", "the ", "its ", "their ", ""))
        aside = f", {self._fragment(r)}," if decorate and r.random() < 0.25 else ""
        order = r.randrange(6)
        if order == 0:  # A K V
            return f"{the}{attr} {r.choice(_OF)} {key}{aside}{r.choice(_IS)}{value}"
        if order == 1:  # K A V
            return f"{key}'s {attr}{aside}{r.choice(_IS)}{value}"
        if order == 2:  # V A K
            return f"{value}{aside} {r.choice(_VALUE_IS)} {the}{attr} {r.choice(_OF)} {key}"
        if order == 3:  # K V A
            return f"{key}{aside} {r.choice(_KEY_VERBS)} {value} {r.choice(_AS)} {attr}"
        if order == 4:  # for K, A V
            return f"for {key}{aside}, {the}{attr}{r.choice(_IS)}{value}"
        return f"{key}{r.choice(_RECORD_SEPARATORS)}{attr}{r.choice(_IS)}{value}"  # a record line

    def fact(self, r: random.Random, key: str, attr: str, decorate: bool = True) -> Fact:
        value = self.value(r, attr)
        clause = self._clause(r, key, attr, value, decorate)
        u = r.random() if decorate else 1.0
        if u < 0.25:  # inside a real sentence: before it, after it, or in its middle
            host = r.choice(self._short).rstrip(".!?;:")
            words = host.split(" ")
            where = r.randrange(3)
            if where == 0:
                sentence = f"{host}, and {clause}."
            elif where == 1:
                sentence = f"{r.choice(_LEADS)}{clause}; {host[0].lower()}{host[1:]}."
            else:
                cut = r.randint(1, max(1, len(words) - 1))
                sentence = f"{' '.join(words[:cut])} - {clause} - {' '.join(words[cut:])}."
        elif u < 0.4:
            sentence = f"{self._fragment(r).capitalize()}: {clause}{r.choice(_ENDS)}"
        else:
            lead = r.choice(_LEADS) if decorate or not clause.startswith(("the ", "for ")) else ""
            sentence = f"{lead}{clause}{r.choice(_ENDS) if decorate else '.'}"
        sentence = sentence[0].upper() + sentence[1:]
        if sentence.startswith((key, attr, value)):  # the key, attribute and value always follow a space
            sentence = f"{r.choice(_LEADS)}{sentence}"
        return Fact(key=key, attr=attr, value=value, sentence=sentence)

    def filler(self, r: random.Random) -> str:
        if r.random() < self.noise_rate:
            parts = [self._name(r) if r.random() < 0.2 else self._word(r) for _ in range(r.randint(4, 12))]
            if r.random() < 0.4:  # the byte-level tokens of non-ASCII text ("é", "€", "ж", "東") are read too
                parts.insert(r.randrange(len(parts) + 1), _foreign_word(r))
            return " ".join(parts).capitalize() + "."
        return r.choice(self.source.sentences)

    def question(self, r: random.Random, key: str, attr: str, answer: str, present: bool) -> Question:
        ask = r.choice(QUESTION_ASKS).format(verb=r.choice(_ASK_VERBS), A=attr, K=key, of=r.choice(_OF))
        lead = r.choice(_QUESTION_LEADS)
        if r.random() < 0.08:
            lead = r.choice(self._short) + " "
        text = f"{lead}{ask}{r.choice(_QUESTION_ENDS)}"
        text = text[0].upper() + text[1:]
        if text.startswith((key, attr)):
            text = f"Hi, {text}"
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
            step = r.randint(1, 6)
            para = " ".join(sentences[i : i + step])
            if r.random() < 0.15:
                para = f"{self._name(r)} {r.randint(1, 99)}:\n{para}"
            paragraphs.append(para)
            i += step
        return "\n\n".join(paragraphs)
