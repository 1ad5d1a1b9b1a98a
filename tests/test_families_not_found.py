"""The not-found check reads the whole phrase, so it stays specific with any tokenizer; ``idk_filter=False`` is off.

With a byte-level tokenizer "not found" is 9 tokens and " not found" starts with a bare space: a check on the first
token alone flags every chunk whose answer starts with a space (most answers, with many models). These tests build such
a tokenizer and a model that starts every answer with a space, and check that the whole-phrase check flags nothing,
that its probability equals the slow oracle's (one full forward over prompt + phrase), and that the flag is what greedy
decoding would do.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from overflow_core.prompting import NotFoundIds, not_found_token_ids
from overflow_core.reference import reference_scores
from overflow_core.scoring import phrase_probability
from overflow_core.testing import make_tiny_model, sample_documents

QUESTION = "What is the PIN of Alice Baker?"


def test_phrase_probability_is_the_product_and_greedy_needs_every_step() -> None:
    first = torch.tensor([[0.0, 0.0, 0.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]])
    forced = torch.zeros(2, 2, 6)
    forced[:, 0, 4] = 3.0  # both rows continue 3 -> 4
    forced[0, 1, 5] = 2.0  # row 0 then writes 5 (the phrase), row 1 writes 2 (another answer that starts alike)
    forced[1, 1, 2] = 2.0
    prob, greedy = phrase_probability(first, (3, 4, 5), forced)
    p = [
        torch.softmax(first[i], -1)[3] * torch.softmax(forced[i, 0], -1)[4] * torch.softmax(forced[i, 1], -1)[5]
        for i in (0, 1)
    ]
    torch.testing.assert_close(prob, torch.stack(p))
    assert greedy.tolist() == [True, False], "a row that starts like the phrase but ends otherwise does not abstain"
    with pytest.raises(ValueError, match="teacher-forced steps"):
        phrase_probability(first, (3, 4), forced)


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from overflow_core.synthetic.tokenizer import SPECIAL_TOKENS, train_tokenizer

    folder = train_tokenizer(tmp_path_factory.mktemp("bytes"), vocab_size=256 + len(SPECIAL_TOKENS), samples=50)
    return AutoTokenizer.from_pretrained(str(folder))


def test_the_phrase_ids_are_whole_per_tokenization(byte_tokenizer: Any) -> None:
    ids = not_found_token_ids(byte_tokenizer, "not found")
    assert isinstance(ids, NotFoundIds) and isinstance(ids, frozenset)
    assert sorted(len(s) for s in ids.sequences) == [9, 10], "byte-level: 'not found' and ' not found', every byte"
    space = byte_tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    assert space in ids, "the bare space starts ' not found': the first token alone says nothing"
    import pickle

    assert pickle.loads(pickle.dumps(ids)).sequences == ids.sequences


@pytest.fixture(scope="module")
def spacey(byte_tokenizer: Any) -> Any:
    """An engine over a byte-level tokenizer and a model whose most likely first answer token is always a space."""
    from overflow_core import OPRM
    from overflow_core.config import OPRMConfig

    tok = byte_tokenizer
    model = make_tiny_model("mamba2", len(tok), tok.pad_token_id, tok.eos_token_id, factor=4.0)
    space = tok(" ", add_special_tokens=False)["input_ids"][0]
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[space] = 60.0  # far above any other logit: every answer starts with a space
    model.lm_head = head
    return OPRM(model, tok, OPRMConfig(chunk_tokens=120, max_batch_tokens=2000, max_new_tokens=4))


def test_a_model_that_starts_every_answer_with_a_space_does_not_abstain(spacey: Any) -> None:
    docs = [text for text, _ in sample_documents(n_docs=2, seed=4)]
    ranking = spacey.rank(QUESTION, docs)
    space = spacey.tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    assert space in spacey.idk_ids and all(s.top_prob > 0.99 for s in ranking.scores), (
        "every chunk's likeliest first token is the space that starts ' not found': a first-token check flags them all"
    )
    assert not any(s.idk for s in ranking.scores), "greedy decoding writes spaces, never 'not found'"
    assert ranking.best is not None and ranking.best.chunk.index == ranking.scores[0].chunk.index
    assert max(s.not_found_prob for s in ranking.scores) < 1e-6, "the whole phrase is improbable for this model"


def test_whole_phrase_signals_equal_the_oracle_with_a_byte_tokenizer(spacey: Any, byte_tokenizer: Any) -> None:
    """Probability and flag of the whole phrase by batched teacher forcing equal one plain forward per chunk."""
    from overflow_core import OPRM
    from overflow_core.config import OPRMConfig

    tok = byte_tokenizer
    model = make_tiny_model("bamba", len(tok), tok.pad_token_id, tok.eos_token_id, factor=4.0)
    oprm = OPRM(model, tok, OPRMConfig(chunk_tokens=100, max_batch_tokens=700))
    docs = [text for text, _ in sample_documents(n_docs=2, seed=5)]
    ranking = oprm.rank(QUESTION, docs)
    q_ids = oprm.encode_question(QUESTION)
    chunks = {s.chunk.index: s for s in ranking.scores}
    prompts = [oprm.prompt(chunks[i].chunk.ids, q_ids) for i in sorted(chunks)]
    _, ref_idk, ref_nf = reference_scores(model, prompts, oprm.idk_ids)
    assert all(0 < p < 1 for p in ref_nf), "a 9-10 byte phrase has a tiny but positive probability under a random model"
    for i in sorted(chunks):  # compared as log-probabilities: a sum of 9-10 per-byte terms each
        fast = chunks[i].not_found_prob
        assert fast > 0 and abs(math.log(fast) - math.log(ref_nf[i])) < 1e-3, f"chunk {i}: {fast} vs {ref_nf[i]}"
        assert chunks[i].idk == ref_idk[i]


def test_idk_filter_off_answers_from_the_first_chunk_even_if_it_abstains(engine: Any) -> None:
    docs = [text for text, _ in sample_documents(n_docs=2, seed=2)]
    on, off = engine("mamba2"), engine("mamba2", idk_filter=False)
    for oprm in (on, off):
        oprm.idk_ids = frozenset(range(len(oprm.tokenizer)))  # every first token now "starts the not-found answer"
    try:
        assert on.answer(QUESTION, docs, max_new_tokens=3).not_found
        ranking = off.rank(QUESTION, docs)
        assert all(s.idk for s in ranking.scores)
        assert ranking.best is ranking.scores[0], "with the filter off, abstaining chunks are ranked like any other"
        answer = off.answer(QUESTION, docs, max_new_tokens=3)
        assert answer.chunk is not None and answer.usage.generated_tokens > 0
    finally:
        for oprm in (on, off):
            oprm.idk_ids = not_found_token_ids(oprm.tokenizer, oprm.config.not_found)
