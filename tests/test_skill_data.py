"""The skill recipe's data (issue #23): the held-out format family shares no template, attribute name or filler source
with the compositional training generator, and both keep the key, the attribute and the value the same tokens in the
question as in the document."""

from __future__ import annotations

import random
import re

import pytest

from overflow_core.synthetic.facts import Curriculum
from overflow_core.synthetic.heldout import FACT_TEMPLATES, QUESTION_TEMPLATES, HeldOutFamily, skeleton_pattern
from overflow_core.synthetic.text import SourceMissingError, TextSource, heldout_text, is_reserved, training_text

DRAWS = 2000


def _training_text() -> TextSource:
    try:
        return training_text()
    except SourceMissingError as e:  # installed for training only (training/README.md)
        pytest.skip(f"training text not installed: {e}")


@pytest.fixture(scope="module")
def composed():  # type: ignore[no-untyped-def]
    from overflow_core.synthetic.compose import ComposedWorld

    return ComposedWorld(text=_training_text())


@pytest.fixture(scope="module")
def heldout() -> HeldOutFamily:
    return HeldOutFamily()


@pytest.fixture(scope="module")
def training_draws(composed):  # type: ignore[no-untyped-def]
    """Fact sentences, questions and attribute names of the training generator, hard negatives included."""
    rng = random.Random(0)
    facts, questions, attrs = [], [], set()
    for _ in range(DRAWS // 8):
        sample = composed.sample(rng, Curriculum(absent_rate=0.5, hard_negative_rate=0.9, negative_mix=(0.2, 0.4, 0.6)))
        facts += [f.sentence for f in sample.facts]
        questions += [q.text for q in sample.questions]
        attrs |= {f.attr for f in sample.facts} | {q.attr for q in sample.questions}
    for _ in range(DRAWS):
        a = composed.attribute(rng)
        attrs |= {a, composed.near_attribute(rng, a)}
    return facts, questions, attrs


def test_no_training_sentence_or_question_matches_a_heldout_template(training_draws) -> None:  # type: ignore[no-untyped-def]
    facts, questions, _ = training_draws
    assert len(facts) >= 1000 and len(questions) >= 1000
    for template in FACT_TEMPLATES + QUESTION_TEMPLATES:
        pattern = skeleton_pattern(template)
        hits = [t for t in facts + questions if pattern.fullmatch(t)]
        assert not hits, f"{template!r} matches training text: {hits[:3]}"


def test_the_skeleton_check_can_fail(heldout: HeldOutFamily) -> None:
    """The check above catches a held-out sentence: each held-out template matches what the family draws from it."""
    rng = random.Random(1)
    key, attr = heldout.key(rng), heldout.attribute(rng)
    fact = heldout.fact(rng, key, attr)
    assert any(skeleton_pattern(t).fullmatch(fact.sentence) for t in FACT_TEMPLATES)
    question = heldout.question(rng, key, attr, "x", present=True)
    assert any(skeleton_pattern(t).fullmatch(question.text) for t in QUESTION_TEMPLATES)


def test_attribute_names_are_disjoint(training_draws, heldout: HeldOutFamily) -> None:  # type: ignore[no-untyped-def]
    _, _, train_attrs = training_draws
    train_words = {w.lower() for a in train_attrs for w in a.split()}
    assert not {w for w in train_words if is_reserved(w)}
    rng = random.Random(2)
    held_attrs = {heldout.attribute(rng) for _ in range(DRAWS)} | {
        heldout.near_attribute(rng, heldout.attribute(rng)) for _ in range(500)
    }
    held_words = {w.lower() for a in held_attrs for w in a.split()}
    assert all(is_reserved(w) for w in held_words)
    assert len(held_words) > 50
    assert not train_attrs & held_attrs and not train_words & held_words


def test_filler_sources_are_disjoint(composed, heldout: HeldOutFamily) -> None:  # type: ignore[no-untyped-def]
    train, held = composed.source, heldout.source
    assert train.name != held.name
    assert not set(train.sentences) & set(held.sentences)
    rng = random.Random(3)
    held_filler = {heldout.filler(rng) for _ in range(500)}
    assert held_filler <= set(held.sentences)
    train_filler = [composed.filler(rng) for _ in range(2000)]
    assert not set(train_filler) & set(held.sentences)
    # real sentences, and a share of random dictionary words that puts the whole word list into the input
    assert 0.8 < sum(s in set(train.sentences) for s in train_filler) / len(train_filler) < 0.99


def test_heldout_text_is_the_standard_library_and_sizable() -> None:
    text = heldout_text()
    assert len(text.sentences) > 1000 and len(text.words) > 1000
    assert sum(is_reserved(w) for w in text.words) > 80


@pytest.mark.parametrize("which", ["composed", "heldout"])
def test_key_attribute_and_value_are_the_same_tokens_in_question_and_document(which: str, request) -> None:  # type: ignore[no-untyped-def]
    """Each follows a space wherever it appears, so a byte-level BPE tokenizes it alike in both: what lets a model
    match the question to the document by token identity."""
    world = request.getfixturevalue(which)
    rng = random.Random(4)
    for _ in range(150):
        sample = world.sample(rng, Curriculum(absent_rate=0.0, empty_rate=0.0, questions=2))
        for q in sample.questions:
            fact = next(f for f in sample.facts if (f.key, f.attr) == (q.key, q.attr))
            assert re.search(rf"(?<= ){re.escape(q.key)}", q.text), q.text
            assert re.search(rf"(?<= ){re.escape(q.attr)}", q.text), q.text
            for part in (fact.key, fact.attr, fact.value):
                assert re.search(rf"(?<= ){re.escape(part)}", fact.sentence), (part, fact.sentence)
            assert fact.sentence in sample.context


def test_composed_world_varies_what_a_template_would_fix(composed) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    facts = [composed.fact(rng, composed.key(rng), composed.attribute(rng)) for _ in range(2000)]
    questions = [composed.question(rng, f.key, f.attr, f.value, True) for f in facts]

    def skeleton(text: str, f) -> str:  # type: ignore[no-untyped-def]
        return text.replace(f.key, "K").replace(f.attr, "A").replace(f.value, "V")

    assert len({skeleton(f.sentence, f) for f in facts}) > 1500
    assert len({skeleton(q.text, f) for q, f in zip(questions, facts, strict=True)}) > 400
    assert len({f.attr for f in facts}) > 1900
    assert len({f.value for f in facts}) > 1800


def test_same_seed_same_samples(composed, heldout: HeldOutFamily) -> None:  # type: ignore[no-untyped-def]
    for world in (composed, heldout):
        a = world.sample(random.Random(9), Curriculum())
        b = world.sample(random.Random(9), Curriculum())
        assert a == b


@pytest.mark.parametrize(("target", "doc"), [(0, 256), (1, 256), (5, 256), (4096, 1)])
def test_filler_documents_end_for_budgets_below_the_shortest_document(target: int, doc: int) -> None:
    """``oprm bench --throughput-tokens 0`` (and --tokens 1, --memory-tokens 0...) spun forever shrinking documents
    that could never fit: now one document comes back when none fits, and the loop stops when no more can."""
    import random

    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from overflow_core.synthetic.facts import FactWorld
    from overflow_core.synthetic.haystack import _filler_documents

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    docs, _ = _filler_documents(FactWorld("train"), random.Random(0), tokenizer, target, doc)
    assert len(docs) >= 1 and (target > doc or len(docs) == 1)
