"""``oprm demo``: OPRM next to whole-context inference on a bundled corpus, so a newcomer sees the difference.

The corpus (``corpus/*.txt`` and ``corpus/questions.json``) is four files of records, notes and logs in the style the
bundled model was trained on, 7,404 tokens in all (29 times the model's 256-token training length), with the facts
the questions ask about hidden in them. ``python -m overflow_core.demo --build`` regenerates it from its seed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["CORPUS_DIR", "build_corpus", "load_corpus", "run_demo"]

CORPUS_DIR = Path(__file__).parent / "corpus"
SEED = 2505_07793


def build_corpus(out: Path = CORPUS_DIR, *, seed: int = SEED, files: int = 4, docs_per_file: int = 10) -> None:
    """Write the demo corpus: ``files`` text files of ``docs_per_file`` short documents, six hidden facts, and questions
    about them plus two about facts stated nowhere (a similar name; the same person, another attribute)."""
    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from overflow_core.synthetic.facts import Curriculum, FactWorld

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    rng = random.Random(seed)
    world = FactWorld("train")
    cur = Curriculum(distractor_rate=0.5)
    texts: list[list[str]] = [[] for _ in range(files)]
    used: set[tuple[str, str]] = set()
    for f in range(files):
        for _ in range(docs_per_file):
            while True:
                facts = world.facts(rng, rng.randint(1, 3), cur.distractor_rate)
                doc = world.document(rng, facts, target_chars=650)
                if len(tokenizer(doc, add_special_tokens=False)["input_ids"]) <= 220:
                    break
            used.update((x.key, x.attr) for x in facts)
            texts[f].append(doc)
    questions = []
    needles = [
        ("Nadia Okafor", "locker number"),
        ("project Lantern", "access code"),
        ("Hugo Varga", "home city"),
        ("Elena Fischer", "birth year"),
        ("the ship Aurora", "badge number"),
        ("Omar Castro", "favorite color"),
    ]
    for i, (key, attr) in enumerate(needles):
        fact = world.fact(rng, key, attr)
        f = [3, 1, 2, 0, 2, 1][i]
        d = rng.randrange(len(texts[f]))
        texts[f][d] = texts[f][d] + " " + fact.sentence
        questions.append({"question": world.question(rng, key, attr, fact.value, True).text, "answer": fact.value})
    questions.append({"question": "What is the locker number of Nadia Ellis?", "answer": "not found"})
    questions.append({"question": "What is the phone number of Hugo Varga?", "answer": "not found"})
    out.mkdir(parents=True, exist_ok=True)
    names = ["staff_records.txt", "project_notes.txt", "city_log.txt", "archive.txt"]
    for name, docs in zip(names, texts, strict=True):
        (out / name).write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    (out / "questions.json").write_text(json.dumps(questions, indent=2) + "\n", encoding="utf-8")


def load_corpus(folder: Path = CORPUS_DIR) -> tuple[list[Any], list[dict[str, str]]]:
    from overflow_core.types import Document

    docs = [Document(p.read_text(encoding="utf-8"), {"source": p.name}) for p in sorted(folder.glob("*.txt"))]
    questions = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    return docs, questions


def _mark(ok: bool) -> str:
    return "right" if ok else "wrong"


def run_demo(model: str | None = None, out: TextIO | None = None, corpus: Path | None = None, **load: Any) -> int:
    """Answer the demo questions with whole-context inference and with OPRM, side by side. ``corpus``: a folder of
    ``*.txt`` files and ``questions.json`` (default: the bundled corpus).

    ``load`` goes to :meth:`OPRM.from_pretrained` (``revision``, ``device``, ``dtype``, ``trust_remote_code``, ``preset``)."""
    import sys

    from overflow_core.engine import OPRM

    out = out or sys.stdout
    oprm = OPRM.from_pretrained(model, **load)
    docs, questions = load_corpus(corpus or CORPUS_DIR)
    n_tokens = sum(len(oprm.tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in docs)
    out.write(
        f"Overflow demo: {len(docs)} files, {n_tokens} tokens, model {oprm.name} "
        f"(trained on contexts of at most {oprm.config.chunk_tokens} tokens)\n"
    )
    score = {"vanilla": 0, "oprm": 0}
    stated = {"vanilla": 0, "oprm": 0}  # right answers to questions whose fact the corpus states
    not_found = oprm.config.not_found.lower()
    is_stated = [q["answer"].lower() != not_found for q in questions]
    n_stated = sum(is_stated)
    for q, q_stated in zip(questions, is_stated, strict=True):
        out.write(f"\nQ: {q['question']}\n   expected: {q['answer']}\n")
        for mode in ("vanilla", "oprm"):
            t0 = time.perf_counter()
            answer = oprm.answer(q["question"], docs, mode=mode)  # type: ignore[arg-type]
            dt = time.perf_counter() - t0
            ok = answer.text.strip().lower() == q["answer"].lower()
            score[mode] += ok
            stated[mode] += ok and q_stated
            where = ""
            if answer.chunk is not None:
                c = answer.chunk
                where = f" (from {c.chunk.source}, chunk {c.chunk.index}, entropy {c.entropy:.3f})"
            label = "whole context" if mode == "vanilla" else "OPRM"
            out.write(f"   {label:>13}: {answer.text!r:<24} {_mark(ok):<5} {dt:5.1f}s{where}\n")
    out.write(
        f"\nwhole-context inference: {score['vanilla']}/{len(questions)} right; "
        f"OPRM: {score['oprm']}/{len(questions)} right\n"
        f"  of which facts the corpus states: whole-context {stated['vanilla']}/{n_stated}, OPRM {stated['oprm']}/{n_stated}; "
        f"the rest ask for facts stated nowhere (right answer: {oprm.config.not_found!r})\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The Overflow demo.")
    parser.add_argument("--build", action="store_true", help="regenerate the demo corpus from its seed")
    parser.add_argument(
        "--build-plain",
        metavar="DIR",
        help="write the next demo corpus (overflow_core.demo.plain: facts and questions in people's phrasings) to DIR",
    )
    parser.add_argument("--corpus", metavar="DIR", help="run on this corpus folder instead of the bundled one")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    if args.build:
        build_corpus()
        return 0
    if args.build_plain:
        from overflow_core.demo.plain import build_plain_corpus

        print(build_plain_corpus(args.build_plain))
        return 0
    return run_demo(args.model, corpus=Path(args.corpus) if args.corpus else None)


if __name__ == "__main__":
    raise SystemExit(main())
