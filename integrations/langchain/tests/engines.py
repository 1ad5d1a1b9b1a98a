"""Engines and corpora for the tests, importable from the standard-suite classes (whose properties cannot take fixtures)."""

from __future__ import annotations

import functools
import random
import tempfile
from pathlib import Path

from overflow_core import OPRM
from overflow_core.engine import DEFAULT_MODEL_DIR
from overflow_core.testing import make_tiny_model_dir, make_tokenizer_dir, sample_documents

__all__ = ["NEEDLE", "QUESTION", "bundled_engine", "needle_corpus", "tiny_corpus", "tiny_engine"]

QUESTION = "What is the locker number of Alice Baker?"
NEEDLE = "The locker number of Alice Baker is 4412."
_TMP = tempfile.TemporaryDirectory(prefix="langchain-overflow-tests-")  # removed at interpreter exit


@functools.cache
def tiny_engine() -> OPRM:
    """A tiny random Mamba-2 model in a temporary folder, built once per test session (about 4 s)."""
    root = Path(_TMP.name)
    tok = make_tokenizer_dir(root / "tok")
    return OPRM.from_pretrained(make_tiny_model_dir(root / "mamba2", tok))


@functools.cache
def bundled_engine() -> OPRM | None:
    """The bundled trained model, or None when the folder is not there (yet)."""
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        return None
    return OPRM.from_pretrained()


def tiny_corpus() -> list[tuple[str, dict[str, str]]]:
    """Three short documents in the bundled model's style, each with a ``source`` (several chunks each at 48 tokens)."""
    return sample_documents(n_docs=3, seed=0)


def needle_corpus(n_docs: int = 4, seed: int = 7) -> list[tuple[str, dict[str, str]]]:
    """``n_docs`` documents of filler prose (about 700 characters, under one 256-token chunk each); only
    ``needle.txt`` states :data:`NEEDLE`, and one other document holds a near miss about Alice Barker."""
    from overflow_core.synthetic.facts import FactWorld

    rng = random.Random(seed)
    world = FactWorld("train")

    def filler(chars: int) -> list[str]:
        out: list[str] = []
        while sum(len(s) + 1 for s in out) < chars:
            out.append(world.filler(rng))
        return out

    docs = []
    for i in range(n_docs):
        sentences = filler(650)
        if i == 1:
            sentences.insert(len(sentences) // 2, NEEDLE)
            name = "needle.txt"
        else:
            if i == 2:
                sentences.insert(1, "The badge number of Alice Barker is 7301.")
            name = f"filler{i}.txt"
        docs.append((" ".join(sentences), {"source": name, "kind": "fixture"}))
    return docs
