"""The skill recipe (issue #23, run v12 on): data from the compositional generator, a tokenizer trained on the same
broad text, the curriculum over it, and the in-training checks against the held-out family.

``python -m training.train --data composed ...`` selects it (``training/README.md``). The old recipe (``--data facts``,
the default) is unchanged and still reproduces v10.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from overflow_core.synthetic.compose import ComposedWorld
from overflow_core.synthetic.facts import Curriculum, FactWorld, Sample
from overflow_core.synthetic.heldout import HeldOutFamily
from overflow_core.synthetic.text import training_text
from overflow_core.synthetic.tokenizer import train_tokenizer

__all__ = ["CHECK_CHARS", "composed_corpus", "curriculum", "skill_checks", "train_skill_tokenizer"]

CHECK_CHARS = (560, 680)  # in-training checks: contexts of about 200-250 tokens, inside the 256-token training length
_KEY_CHECKING_NEGATIVES = (0.15, 0.35, 0.65)
_KEY_CHECKING_DISTRACTORS = (0.25, 0.45, 0.7)


def curriculum(progress: float) -> Curriculum:
    """Easy first (a fact or two in short contexts, few absent questions: recall takes off), then longer contexts and
    more facts, then, from 30% of the run on, absent questions and hard negatives ramped up to stage 2's key-checking
    mix by 70% (``shared/TRAINING_NOTES.md``: heavy absence from step one collapses a small model onto "not found")."""
    p = min(max(progress, 0.0), 1.0)
    if p < 0.12:
        return Curriculum(
            max_facts=2, min_chars=0, max_chars=220, empty_rate=0.0, absent_rate=0.1, hard_negative_rate=0.0,
            distractor_rate=0.0, decoration_rate=0.3, questions=4,
        )  # fmt: skip
    if p < 0.3:
        return Curriculum(
            max_facts=4, min_chars=60, max_chars=450, empty_rate=0.03, absent_rate=0.2, hard_negative_rate=0.3,
            distractor_rate=0.25, decoration_rate=0.7, questions=6,
        )  # fmt: skip
    ramp = min(1.0, (p - 0.3) / 0.4)

    def mix(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float]:
        x, y, z = (u + (v - u) * ramp for u, v in zip(a, b, strict=True))
        return (x, y, z)

    return Curriculum(
        max_facts=8,
        min_chars=100,
        max_chars=700,
        empty_rate=0.08,
        absent_rate=0.3 + 0.2 * ramp,
        hard_negative_rate=0.5 + 0.35 * ramp,
        distractor_rate=0.5 + 0.1 * ramp,
        decoration_rate=1.0,
        questions=8,
        distractor_mix=mix((0.6, 1.0, 1.0), _KEY_CHECKING_DISTRACTORS),
        negative_mix=mix((0.4, 0.8, 1.0), _KEY_CHECKING_NEGATIVES),
    )


def composed_corpus(samples: int, seed: int) -> Iterator[str]:
    """The tokenizer's training text: every fortune sentence, the whole word list and its names, and ``samples``
    generated contexts with their questions and answers in the prompt's words."""
    source = training_text()
    yield from source.sentences
    yield " ".join(source.words)
    yield " ".join(source.names)
    world = ComposedWorld(text=source)
    rng = random.Random(seed)
    for i in range(samples):
        sample = world.sample(rng, curriculum(i / samples))
        yield sample.context
        for q in sample.questions:
            yield f'Question: {q.text}\nIf the document does not say, answer "not found".\n {q.answer}'
    yield "Read the document and answer the question.\n<doc>\n</doc>\nInstruction: Answer:"


def train_skill_tokenizer(out_dir: str | Path, *, vocab_size: int, seed: int) -> Path:
    """Byte-level BPE (single digits, as today) trained on :func:`composed_corpus`."""
    return train_tokenizer(out_dir, vocab_size=vocab_size, texts=composed_corpus(6000, seed))


def _check_rows(
    world: FactWorld, rng: random.Random, kind: str, n: int, encode: Any, tokenizer: Any, max_context: int = 256
) -> list[tuple[list[int], list[float]]]:
    """``n`` one-question rows of one kind: ``present`` (a stated fact among 4), ``hard`` (absent: a hard negative of a
    stated fact), ``chunk`` (absent: a chunk of 0-3 unrelated facts, as OPRM meets hundreds of them)."""
    rows: list[tuple[list[int], list[float]]] = []
    for _ in range(50 * n):
        if len(rows) == n:
            break
        if kind == "present":
            cur = Curriculum(absent_rate=0.0, questions=1, distractor_rate=0.5, min_chars=CHECK_CHARS[0],
                             max_chars=CHECK_CHARS[1])  # fmt: skip
            sample = world.sample(rng, cur, n_facts=4)
        elif kind == "hard":
            cur = Curriculum(absent_rate=1.0, hard_negative_rate=1.0, questions=1, distractor_rate=0.5,
                             min_chars=CHECK_CHARS[0], max_chars=CHECK_CHARS[1],
                             negative_mix=_KEY_CHECKING_NEGATIVES)  # fmt: skip
            sample = world.sample(rng, cur, n_facts=4)
        else:
            cur = Curriculum(absent_rate=1.0, hard_negative_rate=0.0, questions=1, distractor_rate=0.0,
                             min_chars=CHECK_CHARS[0], max_chars=CHECK_CHARS[1])  # fmt: skip
            sample = world.sample(rng, cur, n_facts=rng.randint(0, 3))
        encoded = encode(tokenizer, Sample(sample.context, sample.facts, sample.questions[:1]), max_context)
        if encoded is not None:
            rows.append(encoded)
    if len(rows) < n:
        raise ValueError(
            f"in-training checks: expected contexts of {CHECK_CHARS} characters to fit 256 tokens, got"
            f" {len(rows)} of {n} in {50 * n} draws (a tokenizer with too few merges?)"
        )
    return rows


@torch.inference_mode()
def skill_checks(
    model: torch.nn.Module, tokenizer: Any, encode: Any, seed: int, n: int = 24, batch: int = 8, max_context: int = 256
) -> dict[str, float]:
    """Teacher-forced exact match of the whole answer (equal to greedy exact match) on one-chunk questions, for the
    training generator (``seen``) and the held-out family (``heldout``): ``present`` (EM on stated facts), ``hard``
    (correct "not found" on hard negatives), ``chunk`` (per-chunk abstention: correct "not found" in a chunk of
    unrelated facts). Fresh data from a fixed seed, the same at every check. Contexts longer than ``max_context``
    tokens are drawn again (a tokenizer of other text, such as v10's, needs a larger bound for the same draws)."""
    model.eval()
    out: dict[str, float] = {}
    for name, world in (("seen", ComposedWorld()), ("heldout", HeldOutFamily())):
        for kind in ("present", "hard", "chunk"):
            rng = random.Random(f"{seed}-{name}-{kind}")
            rows = _check_rows(world, rng, kind, n, encode, tokenizer, max_context)
            hits = 0
            for i in range(0, len(rows), batch):
                part = rows[i : i + batch]
                width = max(len(r[0]) for r in part)
                ids = torch.full((len(part), width), tokenizer.pad_token_id, dtype=torch.long)
                for j, (row, _) in enumerate(part):
                    ids[j, : len(row)] = torch.tensor(row)
                pred = model(input_ids=ids).logits.argmax(-1)
                for j, (row, weights) in enumerate(part):
                    answer = [t for t in range(1, len(row)) if weights[t] == 1.0]
                    hits += all(int(pred[j, t - 1]) == row[t] for t in answer)
            out[f"{name}/{kind}"] = round(hits / len(rows), 3)
    model.train()
    return out
