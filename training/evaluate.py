"""Evaluate a model the way a user meets it: through the public ``OPRM`` API, on fresh held-out data, at growing lengths.

For each context length (in tokens) it builds haystacks of short documents full of facts and filler, hides one needle
fact, and asks for it (or, for absent questions, asks about a key that is not there: a similar name, or the same person
with another attribute). It reports, per length and per split (``seen`` formats vs ``heldout`` formats: phrasings,
attributes and filler never used in training):

- exact match of vanilla whole-context inference and of OPRM;
- the rate of correct "not found" answers on absent keys (both methods);
- OPRM's hit rate (the chosen chunk holds the needle) and per-chunk abstention: the share of chunks without the needle
  that the IDK filter dropped, overall and by what the chunk shares with the question (:func:`chunk_kind`: the asked key,
  the asked attribute for other keys, a word of it, both, or neither), which shows whether a model checks the key and
  the whole attribute;
- OPRM's false "not found" rate on present questions, and its exact match by the kind of value asked for
  (:func:`value_kind`: digits, one word, other);
- a first-token probe (:func:`first_token_probe`): within one short context, how often the answer's first token is the
  model's top prediction, by kind of value, next to the probability of "not found";
- exact match within one chunk with one held-out axis at a time (:func:`heldout_axes`: attributes, fact phrasings,
  question phrasings, filler), to show which of them breaks the held-out split;
- on request (``--filler-probe N``), exact match within one chunk as only the filler changes (:func:`filler_probe`):
  whether new words or new sentences are what breaks a model on filler it never saw.

Several questions share one haystack: it holds up to ``--needles`` needle facts in different documents, and as many
absent questions as needed are asked of it too. Each haystack is read once per method, and each question then costs only
its own tokens:

- OPRM through a :class:`~overflow_core.index.StateIndex` built over the haystack (``oprm.index(documents)``), which gives
  the same scores and answers as ``oprm.answer(question, documents)`` (``tests/test_index.py`` ties them together);
- vanilla through the state after ``prefix + whole context + infix`` (``oprm.vanilla_state``), put in the engine's state
  cache so that ``oprm.complete(full prompt)`` feeds only the question: the same tokens as
  ``oprm.answer(question, documents, mode="vanilla")``.

``tests/test_bundled_model.py`` checks both shortcuts against the direct calls.

Usage::

    python -m training.evaluate --quick                 # minutes: a small sample
    python -m training.evaluate --samples 20 --out docs/results   # the full table and plot
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overflow_core.config import CRITERIA
from overflow_core.synthetic.facts import (
    HELD_OUT_AXES,
    HELDOUT_FILLERS,
    TRAIN_FILLERS,
    Fact,
    FactWorld,
    HeldOutAxis,
    Question,
    Split,
)
from overflow_core.synthetic.haystack import make_shared_haystack

__all__ = [
    "chunk_kind",
    "evaluate",
    "filler_probe",
    "filler_probe_question",
    "filler_world",
    "first_token_probe",
    "heldout_axes",
    "main",
    "shuffled_words",
    "value_kind",
    "with_new_words",
]

EVAL_SEED = 987_654_321  # never used by training (training draws from seed * 1_000_003 + step)
SPLITS: tuple[tuple[str, Split], ...] = (("seen", "train"), ("heldout", "heldout"))  # reported name, FactWorld split


def _facts_world(split: Split) -> Callable[[str], FactWorld]:
    return lambda not_found: FactWorld(split, not_found=not_found)


def _composed(not_found: str) -> FactWorld:
    from overflow_core.synthetic.compose import ComposedWorld

    return ComposedWorld(not_found=not_found)


def _heldout_family(not_found: str) -> FactWorld:
    from overflow_core.synthetic.heldout import HeldOutFamily

    return HeldOutFamily(not_found=not_found)


# ``--family``: which generators the table reports, by reported split name. "facts": the fact world's seen and held-out
# splits (v1-v11's formats); "skill": the compositional training generator (``seen``) and the held-out format family
# (``heldout``, issue #23); "all": the four side by side, to compare models trained on either.
FAMILIES: dict[str, tuple[tuple[str, Callable[[str], FactWorld]], ...]] = {
    "facts": (("seen", _facts_world("train")), ("heldout", _facts_world("heldout"))),
    "skill": (("seen", _composed), ("heldout", _heldout_family)),
    "all": (
        ("facts-seen", _facts_world("train")),
        ("facts-heldout", _facts_world("heldout")),
        ("skill-seen", _composed),
        ("skill-heldout", _heldout_family),
    ),
}


def value_kind(value: str) -> str:
    """``"digits"`` (``4412``, ``555-0123``), ``"word"`` (one alphabetic word: ``Kyoto``, ``teacher``) or ``"other"``
    (codes, plates, names, dates, quantities): the kinds the bundled model recalls very differently (docs/model.md)."""
    if value.replace("-", "").replace(" ", "").isdigit():
        return "digits"
    if value.isalpha():
        return "word"
    return "other"


CHUNK_KINDS = ("neither", "near attribute", "attribute", "key", "key+attribute")


def chunk_kind(text: str, key: str, attr: str) -> str:
    """What a chunk that lacks the answer shares with the question: ``"key+attribute"`` when it names the asked key and
    the asked attribute (but not as one fact), ``"key"`` the key only, ``"attribute"`` the attribute only (for other
    keys), ``"near attribute"`` a word of the attribute only ("badge number" for "locker number"), else ``"neither"``.
    Whole words, case-insensitive."""
    lowered = text.lower()

    def has(phrase: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(phrase.lower())}(?!\w)", lowered) is not None

    if has(key):
        return "key+attribute" if has(attr) else "key"
    if has(attr):
        return "attribute"
    return "near attribute" if any(has(word) for word in attr.split()) else "neither"


def best_by_criterion(scores: Any, *, idk_filter: bool) -> dict[str, Any]:
    """The chunk each selection criterion (``config.CRITERIA``) would pick from one ranking's scores (None when every
    chunk abstains under the IDK filter): what the evaluation's ``hit_by_criterion`` compares, with no extra model call."""
    import torch

    from overflow_core.scoring import Signals, rank_order

    sig = Signals(
        torch.tensor([s.entropy for s in scores]),
        torch.tensor([s.top_prob for s in scores]),
        torch.tensor([s.not_found_prob for s in scores]),
        torch.tensor([s.idk for s in scores]),
    )
    picks = {}
    for criterion in CRITERIA:
        first = scores[rank_order(sig, criterion=criterion, idk_filter=idk_filter)[0]]
        picks[criterion] = None if idk_filter and first.idk else first
    return picks


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(".").lower().split())


def _vanilla_reader(oprm: Any, documents: list[tuple[str, dict[str, str]]]) -> Any:
    """``ask(question) -> (text, not_found)`` for vanilla inference over ``documents``, reading them once.

    The prompt is the one ``oprm.answer(question, documents, mode="vanilla")`` builds; its question-independent head
    (prefix + whole context + infix) is prefilled once and put in the engine's state cache, so ``oprm.complete`` feeds
    only the question and suffix."""
    from overflow_core.chunking import encode_text

    context_ids = encode_text(oprm.tokenizer, "\n\n".join(text.strip() for text, _ in documents))
    head = oprm.context_prompt(context_ids)
    session, logits = oprm.vanilla_state(head)
    oprm.state_cache.put(head, session.state(), logits)

    def ask(question: str) -> tuple[str, bool]:
        generation = oprm.complete(oprm.prompt(context_ids, oprm.encode_question(question)))
        text = "".join(generation).strip()
        return text, text.lower().startswith(oprm.config.not_found.strip().lower())

    return ask


def evaluate(
    oprm: Any,
    lengths: list[int],
    *,
    samples: int,
    absent_samples: int,
    vanilla_max_tokens: int,
    needles: int = 10,
    seed: int = EVAL_SEED,
    log: Any = None,
    family: str = "facts",
) -> dict[str, Any]:
    """Run the evaluation; returns ``{"rows": [...]}`` with one row per (split, length), the splits of ``family``
    (:data:`FAMILIES`).

    ``samples`` present and ``absent_samples`` absent questions per row, asked of shared haystacks of up to ``needles``
    needles each (one needle per document at most, so short lengths use more haystacks)."""
    rows = []
    for split, make_world in FAMILIES[family]:
        world = make_world(oprm.config.not_found)
        for length in lengths:
            rng = random.Random(f"{seed}-{split}-{length}")
            stats: dict[str, list[float]] = {
                k: [] for k in ("oprm_em", "vanilla_em", "hit", "oprm_nf", "vanilla_nf", "oprm_false_nf")
            }
            by_kind: dict[str, list[float]] = {}
            hit_by: dict[str, list[float]] = {}
            chunks = haystacks = 0
            abstain_by_kind: dict[str, list[int]] = {}  # kind of chunk -> [abstained, chunks]
            todo_present, todo_absent = samples, absent_samples
            run_vanilla = length <= vanilla_max_tokens
            t0 = time.time()
            while todo_present > 0 or todo_absent > 0:
                n_present = min(needles, todo_present)
                # absent questions ride along in proportion; once the needles are done, they fill whole haystacks
                share = math.ceil(n_present * absent_samples / samples) if samples and n_present else needles
                n_absent = min(todo_absent, share)
                hay = make_shared_haystack(world, rng, oprm.tokenizer, length, needles=n_present, absent=n_absent)
                placed = sum(n is not None for n in hay.needles)
                todo_present -= placed
                todo_absent -= n_absent
                haystacks += 1
                index = oprm.index(hay.documents)
                vanilla = _vanilla_reader(oprm, hay.documents) if run_vanilla else None
                for q, needle in zip(hay.questions, hay.needles, strict=True):
                    answer = index.answer(q.text)
                    assert answer.ranking is not None
                    chunks = len(answer.ranking.scores)
                    for sc in answer.ranking.scores:
                        if needle is None or needle.value not in sc.chunk.text:
                            tally = abstain_by_kind.setdefault(chunk_kind(sc.chunk.text, q.key, q.attr), [0, 0])
                            tally[0] += int(sc.idk)
                            tally[1] += 1
                    v_text, v_nf = vanilla(q.text) if vanilla is not None else ("", False)
                    if needle is not None:
                        em = float(_normalise(answer.text) == _normalise(q.answer))
                        stats["oprm_em"].append(em)
                        stats["oprm_false_nf"].append(float(answer.not_found))
                        by_kind.setdefault(value_kind(q.answer), []).append(em)
                        best = answer.ranking.best
                        stats["hit"].append(float(best is not None and needle.value in best.chunk.text))
                        picks = best_by_criterion(answer.ranking.scores, idk_filter=oprm.config.idk_filter)
                        for criterion, pick in picks.items():
                            hit_by.setdefault(criterion, []).append(float(pick is not None and needle.value in pick.chunk.text))
                        if vanilla is not None:
                            stats["vanilla_em"].append(float(_normalise(v_text) == _normalise(q.answer)))
                    else:
                        stats["oprm_nf"].append(float(answer.not_found))
                        if vanilla is not None:
                            stats["vanilla_nf"].append(float(v_nf))
                oprm.state_cache.clear()
                if placed == 0 and n_absent == 0:
                    break
            abstained = sum(num for num, _ in abstain_by_kind.values())
            without = sum(den for _, den in abstain_by_kind.values())
            row = {
                "split": split,
                "tokens": length,
                "chunks": chunks,
                "haystacks": haystacks,
                "samples": len(stats["oprm_em"]),
                "absent_samples": len(stats["oprm_nf"]),
                **{k: (round(sum(v) / len(v), 4) if v else None) for k, v in stats.items()},
                "chunk_abstention": round(abstained / without, 5) if without else None,
                "chunk_abstention_by_kind": {
                    kind: {"n": den, "abstention": round(num / den, 5)}
                    for kind, (num, den) in sorted(abstain_by_kind.items(), key=lambda kv: CHUNK_KINDS.index(kv[0]))
                },
                "oprm_em_by_kind": {k: {"n": len(v), "em": round(sum(v) / len(v), 4)} for k, v in sorted(by_kind.items())},
                "hit_by_criterion": {k: round(sum(v) / len(v), 4) for k, v in hit_by.items()},
                "seconds": round(time.time() - t0, 1),
            }
            rows.append(row)
            if log is not None:
                log(row)
    return {"rows": rows}


def _one_chunk_question(
    world: FactWorld, rng: random.Random, document_rng: random.Random | None = None
) -> tuple[str, Fact, Question]:
    """A context of three facts (half the time with facts about similar keys) in about 420 characters, one of its facts,
    and a question that asks for it. With ``document_rng`` the document (filler and the facts' places) is drawn from it
    after the question, so the facts and the question depend on ``rng`` alone."""
    facts = world.facts(rng, 3, distractor_rate=0.5 if rng.random() < 0.5 else 0.0)
    context = world.document(rng, facts, target_chars=420) if document_rng is None else ""
    fact = rng.choice(facts)
    question = world.question(rng, fact.key, fact.attr, fact.value, present=True)
    if document_rng is not None:
        context = world.document(document_rng, facts, target_chars=420)
    return context, fact, question


def first_token_probe(oprm: Any, world: FactWorld, rng: random.Random, n: int) -> dict[str, Any]:
    """What the model predicts first, within one short context, when the answer is there.

    ``n`` contexts of three facts (about half with facts about similar keys) in about 120-150 tokens, one present
    question each, through the engine's own prompt. For each kind of value (:func:`value_kind`) it reports how often the
    value's first token (as the model must emit it: with the leading space it has in the document) is the top prediction,
    its median probability, and the median probability of the not-found phrase's first token. This separates "the model
    does not recall this kind of value" from "it recalls it, but a chunk's selection or the IDK filter loses it"."""
    import torch

    from overflow_core.chunking import encode_text
    from training.train import answer_ids

    rows: dict[str, dict[str, list[float]]] = {}
    idk = sorted(oprm.idk_ids)
    for _ in range(n):
        context, fact, question = _one_chunk_question(world, rng)
        prompt = oprm.prompt(encode_text(oprm.tokenizer, context), oprm.encode_question(question.text))
        _, logits = oprm.vanilla_state(prompt)
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1])[-1].float(), dim=-1)  # the last position's
        first = answer_ids(oprm.tokenizer, fact.value)[0]
        row = rows.setdefault(value_kind(fact.value), {"top1": [], "p_value": [], "p_not_found": []})
        row["top1"].append(float(int(probs.argmax()) == first))
        row["p_value"].append(float(probs[first]))
        row["p_not_found"].append(float(probs[idk].max()))

    def median(xs: list[float]) -> float:
        ys = sorted(xs)
        return round((ys[(len(ys) - 1) // 2] + ys[len(ys) // 2]) / 2, 4)

    return {
        kind: {
            "n": len(r["top1"]),
            "top1": round(sum(r["top1"]) / len(r["top1"]), 4),
            "median_p_value": median(r["p_value"]),
            "median_p_not_found": median(r["p_not_found"]),
        }
        for kind, r in sorted(rows.items())
    }


def heldout_axes(oprm: Any, n: int, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Exact match within one chunk with one axis of the held-out formats at a time (``"none"``: all seen).

    The held-out split changes attributes, fact phrasings, question phrasings and filler at once; this shows which of them
    a model fails on. ``n`` contexts of three facts in about 120-150 tokens per axis, one present question each, through
    ``oprm.answer``. The attributes axis is also broken down by held-out attribute name (``by_attribute``)."""
    out: dict[str, Any] = {}
    if n <= 0:
        return out
    choices: list[tuple[str, tuple[HeldOutAxis, ...]]] = [("none", ()), *((a, (a,)) for a in HELD_OUT_AXES)]
    for axis, held in choices:
        world = FactWorld("train", not_found=oprm.config.not_found, held_out=held)
        rng = random.Random(f"{seed}-axis-{axis}")
        by_attribute: dict[str, list[int]] = {}  # attribute -> [asked, exact, "not found"]
        for _ in range(n):
            context, fact, question = _one_chunk_question(world, rng)
            answer = oprm.answer(question.text, [context])
            counts = by_attribute.setdefault(fact.attr, [0, 0, 0])
            counts[0] += 1
            counts[1] += _normalise(answer.text) == _normalise(fact.value)
            counts[2] += answer.not_found
        em = sum(c[1] for c in by_attribute.values())
        nf = sum(c[2] for c in by_attribute.values())
        out[axis] = {"n": n, "em": round(em / n, 4), "not_found": round(nf / n, 4)}
        if axis == "attributes":  # which held-out names fail, and whether by abstaining or by a wrong value
            out[axis]["by_attribute"] = {
                attr: {"n": c[0], "em": round(c[1] / c[0], 4), "not_found": round(c[2] / c[0], 4)}
                for attr, c in sorted(by_attribute.items())
            }
    return out


Filler = Callable[[random.Random], str]  # draws one filler sentence

# Words of the held-out filler kinds (``data.HELDOUT_FILLERS``: recipes and manuals) that no training text uses, as
# ``tests/test_training.py`` checks on both stages' data ("minutes" is left out: it is a document title there).
HELDOUT_FILLER_WORDS = (
    "valve", "switch", "panel", "cable", "filter", "button", "clean", "secure", "dry",
    "flour", "rice", "sugar", "butter", "oats", "beans", "cups", "stir", "press", "reset", "check",
)  # fmt: skip


def shuffled_words(filler: Filler) -> Filler:
    """``filler`` with the words of each sentence in random order: the same words in sentences never seen
    ("Station the went Zane and lost an umbrella to.")."""

    def draw(r: random.Random) -> str:
        words = filler(r).rstrip(".").split()
        r.shuffle(words)
        sentence = " ".join(words)
        return sentence[0].upper() + sentence[1:] + "."

    return draw


def with_new_words(share: float) -> Filler:
    """Training filler with each word replaced, with probability ``share``, by a word of :data:`HELDOUT_FILLER_WORDS`:
    the sentences' shapes stay, a growing share of their words was never seen ("The quiet valve passed the stir.")."""

    def draw(r: random.Random) -> str:
        words = r.choice(TRAIN_FILLERS)(r).rstrip(".").split()
        words = [r.choice(HELDOUT_FILLER_WORDS) if r.random() < share else w for w in words]
        sentence = " ".join(words)
        return sentence[0].upper() + sentence[1:] + "."

    return draw


FILLER_VARIANTS: dict[str, tuple[Filler, ...]] = {
    "seen": TRAIN_FILLERS,
    "held-out": HELDOUT_FILLERS,
    "seen, shuffled": tuple(shuffled_words(f) for f in TRAIN_FILLERS),
    "held-out, shuffled": tuple(shuffled_words(f) for f in HELDOUT_FILLERS),
    "seen, 25% new words": (with_new_words(0.25),),
    "seen, 50% new words": (with_new_words(0.5),),
    "seen, 75% new words": (with_new_words(0.75),),
}


def filler_probe(oprm: Any, n: int, seed: int = EVAL_SEED) -> dict[str, Any]:
    """Exact match within one chunk as the filler changes and nothing else.

    The same ``n`` sets of three facts (seen formats; half the time about similar keys) and the same questions are asked
    with each filler of :data:`FILLER_VARIANTS`: the training filler, the held-out filler, each with its words shuffled
    (:func:`shuffled_words`: do new sentences break the model?), and training filler with a quarter, half or three quarters
    of its words replaced by the held-out filler's (:func:`with_new_words`: do new words, and how many?). The facts and
    the question come from one seeded draw per question, the document (filler and the facts' places) from another, so
    only the filler differs between variants. Through ``oprm.answer``, like :func:`heldout_axes`."""
    out: dict[str, Any] = {}
    if n <= 0:
        return out
    for name, fillers in FILLER_VARIANTS.items():
        world = filler_world(fillers, not_found=oprm.config.not_found)
        em = nf = 0
        for i in range(n):
            context, fact, question = filler_probe_question(world, i, seed)
            answer = oprm.answer(question.text, [context])
            em += _normalise(answer.text) == _normalise(fact.value)
            nf += answer.not_found
        out[name] = {"n": n, "em": round(em / n, 4), "not_found": round(nf / n, 4)}
    return out


def filler_world(fillers: tuple[Filler, ...], not_found: str = "not found") -> FactWorld:
    """The training split's world, seen formats, with ``fillers`` as its filler."""
    world = FactWorld("train", not_found=not_found)
    world.fillers = fillers
    return world


def filler_probe_question(world: FactWorld, i: int, seed: int = EVAL_SEED) -> tuple[str, Fact, Question]:
    """Question ``i`` of :func:`filler_probe` in ``world`` (:func:`filler_world`): its facts and question depend on
    ``seed`` and ``i`` only, its document's filler and the facts' places on a second draw."""
    return _one_chunk_question(
        world, random.Random(f"{seed}-filler-{i}"), document_rng=random.Random(f"{seed}-filler-document-{i}")
    )


def _plot(result: dict[str, Any], path: Path, train_tokens: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    splits = list(dict.fromkeys(r["split"] for r in result["rows"]))
    for split, style in zip(splits, ("-", "--", "-.", ":"), strict=False):
        rows = [r for r in result["rows"] if r["split"] == split]
        xs = [r["tokens"] / train_tokens for r in rows]
        ax.plot(xs, [r["oprm_em"] for r in rows], style, marker="o", color="tab:green", label=f"OPRM ({split})")
        vx = [x for x, r in zip(xs, rows, strict=True) if r["vanilla_em"] is not None]
        vy = [r["vanilla_em"] for r in rows if r["vanilla_em"] is not None]
        ax.plot(vx, vy, style, marker="s", color="tab:red", label=f"vanilla ({split})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length / training length (256 tokens)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Bundled model: needle lookup, vanilla vs OPRM")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oprm eval", description="Evaluate a model: vanilla vs OPRM by context length."
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument(
        "--quick", action="store_true", help="a small sample: 4 present + 2 absent questions, 3 lengths"
    )
    parser.add_argument("--samples", type=int, default=20, help="present questions per split and length")
    parser.add_argument("--absent", type=int, default=None, help="absent questions per split and length (default half)")
    parser.add_argument("--lengths", default=None, help="comma-separated token lengths")
    parser.add_argument("--vanilla-max-tokens", type=int, default=70_000, help="skip vanilla above this length")
    parser.add_argument("--needles", type=int, default=10, help="needles (present questions) per shared haystack")
    parser.add_argument("--out", default=None, help="folder for model_eval.json and model_accuracy.png")
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="OPRM's chunk size (default: the model folder's, the training length; lengths are unaffected)",
    )
    parser.add_argument(
        "--probe", type=int, default=None, help="contexts for the first-token probe per split (default 120; quick 16)"
    )
    parser.add_argument(
        "--axes", type=int, default=None, help="one-chunk questions per held-out axis (default 40; quick 8)"
    )
    parser.add_argument(
        "--filler-probe",
        type=int,
        default=0,
        help="one-chunk questions per filler variant (evaluate.FILLER_VARIANTS; default 0: off)",
    )
    parser.add_argument(
        "--family",
        default="facts",
        choices=tuple(FAMILIES),
        help="facts: the fact world's seen and held-out formats; skill: the compositional generator and the held-out"
        " format family (issue #23; needs the training text for its seen split); all: the four",
    )
    parser.add_argument(
        "--criterion",
        default=None,
        choices=CRITERIA,
        help="OPRM's selection criterion (default: the model folder's, else entropy)",
    )
    args = parser.parse_args(argv)

    from overflow_core.config import load_settings
    from overflow_core.engine import DEFAULT_MODEL_DIR, OPRM
    from overflow_core.errors import OverflowCoreError

    overrides: dict[str, Any] = {"chunk_tokens": args.chunk_tokens} if args.chunk_tokens else {}
    if args.criterion:
        overrides["criterion"] = args.criterion
    if args.model and not Path(args.model).is_dir():
        parser.error(f"--model: expected a model folder (an export of training.train), {args.model!r} is not one")
    try:
        oprm = OPRM.from_pretrained(args.model, **overrides)
    except OverflowCoreError as exc:
        parser.error(f"--model: {exc}")
    folder_settings = load_settings(Path(args.model) if args.model else DEFAULT_MODEL_DIR)
    train_tokens = int(folder_settings.get("chunk_tokens", oprm.config.chunk_tokens))
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",")]
    elif args.quick:
        lengths = [train_tokens, 8 * train_tokens, 32 * train_tokens]
    else:
        lengths = [
            train_tokens,
            4 * train_tokens,
            16 * train_tokens,
            32 * train_tokens,
            128 * train_tokens,
            256 * train_tokens,
        ]
    samples = 4 if args.quick else args.samples
    absent = args.absent if args.absent is not None else max(2, samples // 2)

    def log(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)

    t0 = time.time()
    result = evaluate(
        oprm,
        lengths,
        samples=samples,
        absent_samples=absent,
        vanilla_max_tokens=args.vanilla_max_tokens,
        needles=args.needles,
        log=log,
        family=args.family,
    )
    probe = args.probe if args.probe is not None else (16 if args.quick else 120)
    result["first_token"] = {
        split: first_token_probe(
            oprm, make_world(oprm.config.not_found), random.Random(f"{EVAL_SEED}-probe-{split}"), probe
        )
        for split, make_world in FAMILIES[args.family]
    }
    log({"first_token": result["first_token"]})
    result["heldout_axes"] = heldout_axes(oprm, args.axes if args.axes is not None else (8 if args.quick else 40))
    log({"heldout_axes": result["heldout_axes"]})
    if args.filler_probe > 0:
        result["filler_probe"] = filler_probe(oprm, args.filler_probe)
        log({"filler_probe": result["filler_probe"]})
    result.update(
        {
            "model": oprm.name,
            "chunk_tokens": oprm.config.chunk_tokens,
            "criterion": oprm.config.criterion,
            "train_tokens": train_tokens,
            "family": args.family,
            "seed": EVAL_SEED,
            "seconds": round(time.time() - t0, 1),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "command": " ".join(["python -m training.evaluate", *(sys.argv[1:] if argv is None else argv)]),
        }
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_eval.json").write_text(json.dumps(result, indent=2) + "\n")
        _plot(result, out / "model_accuracy.png", train_tokens)
        print(f"wrote {out / 'model_eval.json'} and {out / 'model_accuracy.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
