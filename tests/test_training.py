"""The bundled model's data and evaluation helpers: shared haystacks, and the evaluation's shortcuts equal the direct calls."""

from __future__ import annotations

import random
from typing import Any

from overflow_core.testing import assert_same_ranking
from overflow_core.training.data import FactWorld
from overflow_core.training.evaluate import _vanilla_reader, make_shared_haystack, value_kind


def test_shared_haystack_places_each_needle_once_and_absent_questions_match_nothing(engine: Any) -> None:
    oprm = engine("mamba2")
    world = FactWorld("train")
    hay = make_shared_haystack(world, random.Random(1), oprm.tokenizer, 2000, needles=4, absent=3)
    text = "\n".join(t for t, _ in hay.documents)
    placed = [n for n in hay.needles if n is not None]
    assert len(placed) == 4 and len(hay.questions) == 7
    for needle, q in zip(hay.needles, hay.questions, strict=True):
        if needle is not None:
            assert text.count(needle.sentence.rstrip(".")) == 1
            assert q.present and q.answer == needle.value and (q.key, q.attr) == (needle.key, needle.attr)
        else:
            assert not q.present and q.answer == world.not_found
            assert (q.key, q.attr) not in {(n.key, n.attr) for n in placed}
    docs_with_needles = [t for t, _ in hay.documents if any(n.sentence.rstrip(".") in t for n in placed)]
    assert len(docs_with_needles) == 4, "at most one needle per document"


def test_evaluation_shortcuts_equal_the_direct_calls(engine: Any) -> None:
    """The index answers as ``oprm.answer`` does, and the cached vanilla head answers as ``mode="vanilla"`` does."""
    oprm = engine("mamba2", chunk_tokens=64, max_new_tokens=6)
    hay = make_shared_haystack(FactWorld("heldout"), random.Random(2), oprm.tokenizer, 600, needles=2, absent=1)
    index = oprm.index(hay.documents)
    ask = _vanilla_reader(oprm, hay.documents)
    try:
        for q in hay.questions:
            direct = oprm.answer(q.text, hay.documents)
            via_index = index.answer(q.text)
            assert via_index.text == direct.text and via_index.not_found == direct.not_found
            assert via_index.ranking is not None and direct.ranking is not None
            assert_same_ranking(direct.ranking, via_index.ranking)
            vanilla = oprm.answer(q.text, hay.documents, mode="vanilla")
            assert ask(q.text) == (vanilla.text, vanilla.not_found)
    finally:
        oprm.state_cache.clear()


def test_the_answer_is_tokenized_as_the_value_inside_the_context() -> None:
    """Answering must be copying: the answer's tokens are the very tokens the value has in the context sentence."""
    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from overflow_core.training.data import Fact, Question, Sample
    from overflow_core.training.train import encode_sample

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    for value in ("Paris", "4412", "AB-391", "Dr. Weber"):
        sentence = f"The home city of Alice Baker is {value}."
        fact = Fact(key="Alice Baker", attr="home city", value=value, sentence=sentence)
        q = Question(
            text="What is the home city of Alice Baker?", answer=value, key="Alice Baker", attr="home city", present=True
        )
        encoded = encode_sample(tok, Sample(sentence, (fact,), (q,)), 1000)
        assert encoded is not None
        ids, weights = encoded
        answer = [t for t, w in zip(ids, weights, strict=True) if w == 1.0][:-1]  # the value's tokens, without <|end|>
        context = list(tok(sentence, add_special_tokens=False)["input_ids"])
        assert any(context[i : i + len(answer)] == answer for i in range(len(context))), (value, answer, context)


def test_value_kind_separates_digits_words_and_the_rest() -> None:
    assert [value_kind(v) for v in ("4412", "555-0123", "Kyoto", "teacher")] == ["digits", "digits", "word", "word"]
    assert [value_kind(v) for v in ("VC-864", "Dr. Weber", "12 May", "80 kg", "A12")] == ["other"] * 5
