"""The next demo corpus (prepared for the skill recipe's model; ``oprm demo`` keeps the shipped corpus until that model
ships): facts written the way people write them and questions asked the way people ask, in phrasings that neither the
fact world nor the compositional training generator uses, hidden in real English prose.

- **Filler:** sentences of Python standard-library docstrings (:func:`overflow_core.synthetic.text.heldout_text`),
  which no training generator reads; always available, so the corpus rebuilds anywhere.
- **The six stated facts** are written out by hand (:data:`NEEDLES`); **distractors** put the same attributes on similar
  names and other attributes on the same names (:data:`DISTRACTOR_FRAMES`), so a model must check both.
- **Questions** (:data:`NEEDLES`, :data:`ABSENT`) repeat the key and the attribute as written, in frames of their own.

``python -m overflow_core.demo --build-plain DIR`` writes it; ``python -m overflow_core.demo --corpus DIR`` runs the demo on
it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

__all__ = ["ABSENT", "DISTRACTOR_FRAMES", "NEEDLES", "build_plain_corpus"]

SEED = 2505_07793

# (key, attribute, value, the sentence that states it, the question that asks for it)
NEEDLES = (
    ("Nadia Okafor", "locker number", "46158",
     "Nadia Okafor finally got her locker number this week: 46158, next to the fire door.",
     "Which locker number did Nadia Okafor end up with?"),
    ("project Lantern", "access code", "EPH-4987",
     "After Monday's reset, the access code that opens project Lantern reads EPH-4987.",
     "Remind me, what access code gets me into project Lantern?"),
    ("Hugo Varga", "home city", "Hanoi",
     "Hugo Varga moved last spring and gives Hanoi as his home city now.",
     "These days, what home city does Hugo Varga give?"),
    ("Elena Fischer", "birth year", "1962",
     "Elena Fischer, birth year 1962 on her papers, chaired the morning session.",
     "According to her papers, Elena Fischer has which birth year?"),
    ("the ship Aurora", "badge number", "3307",
     "Harbour staff confirmed that the ship Aurora carries badge number 3307 since the audit.",
     "Since the audit, which badge number does the ship Aurora carry?"),
    ("Omar Castro", "favorite color", "navy",
     "Omar Castro repainted the office himself, since his favorite color, navy, was out of stock.",
     "I forgot Omar Castro's favorite color. Do you remember it?"),
)  # fmt: skip
# questions about facts stated nowhere: a similar name with a stated attribute, a stated name with another attribute
ABSENT = (
    "Which locker number did Nadia Ellis end up with?",
    "These days, what phone number does Hugo Varga give?",
)
DISTRACTOR_FRAMES = (
    "Word from the front desk: {K} now has {V} as the {A}.",
    "{K} mentioned in passing that the {A} is {V}.",
    "We wrote down {V} for the {A} of {K}, pending review.",
)
_SIMILAR = {"Nadia Okafor": "Nadia Osei", "Hugo Varga": "Hugo Lindqvist", "Elena Fischer": "Elena Fontaine",
            "Omar Castro": "Omar Costa", "the ship Aurora": "the ship Aurelia", "project Lantern": "project Lanyard"}  # fmt: skip
_OTHER_ATTRIBUTES = ("parking spot", "desk number", "radio call sign", "locker number", "badge number", "start date")
_FILES = ("handbook.txt", "meeting_notes.txt", "harbour_log.txt", "archive.txt")


def _value(rng: random.Random, attr: str) -> str:
    if attr in ("home city",):
        return rng.choice(("Lagos", "Quito", "Tallinn", "Osaka", "Perth"))
    if attr == "favorite color":
        return rng.choice(("teal", "amber", "crimson", "olive"))
    if attr == "access code":
        letters = "".join(rng.choice("ABCDEFGHKMNPRST") for _ in range(3))
        return f"{letters}-{rng.randint(1000, 9999)}"
    if attr in ("birth year", "start date"):
        return str(rng.randint(1950, 2004))
    if attr == "radio call sign":
        return f"{rng.choice(('Kilo', 'Tango', 'Delta'))} {rng.randint(10, 99)}"
    return str(rng.randint(100, 99999))


def build_plain_corpus(out: str | Path, *, seed: int = SEED, files: int = 4, docs_per_file: int = 10) -> Path:
    """Write ``files`` text files of ``docs_per_file`` documents (about 400 characters of prose each, one or two
    distractor facts in most), the six needles in four of them, and ``questions.json`` (six stated, two absent)."""
    from overflow_core.synthetic.text import heldout_text

    text = heldout_text()
    rng = random.Random(seed)
    docs: list[list[str]] = [[] for _ in range(files)]
    stated = {(k, a) for k, a, *_ in NEEDLES}
    for f in range(files):
        for _ in range(docs_per_file):
            sentences: list[str] = []
            while sum(len(s) + 1 for s in sentences) < 380:
                sentences.append(rng.choice(text.sentences))
            for _ in range(rng.choice((0, 1, 1, 2))):
                key, attr, *_ = rng.choice(NEEDLES)
                if rng.random() < 0.5:
                    key = _SIMILAR[key]
                else:
                    attr = rng.choice([a for a in _OTHER_ATTRIBUTES if a != attr])
                if (key, attr) in stated:  # one value per key and attribute in the whole corpus
                    continue
                stated.add((key, attr))
                frame = rng.choice(DISTRACTOR_FRAMES)
                sentences.insert(rng.randint(1, len(sentences)), frame.format(K=key, A=attr, V=_value(rng, attr)))
            docs[f].append(" ".join(sentences))
    for i, (_, _, _, sentence, _) in enumerate(NEEDLES):
        f = [3, 1, 2, 0, 2, 1][i] % files
        d = rng.randrange(len(docs[f]))
        words = docs[f][d].split(". ")
        cut = rng.randint(1, max(1, len(words) - 1))
        docs[f][d] = ". ".join([*words[:cut], sentence.rstrip("."), *words[cut:]])
    questions = [{"question": q, "answer": v} for _, _, v, _, q in NEEDLES]
    questions += [{"question": q, "answer": "not found"} for q in ABSENT]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, texts in zip(_FILES, docs, strict=False):
        (folder / name).write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    (folder / "questions.json").write_text(json.dumps(questions, indent=2) + "\n", encoding="utf-8")
    return folder
