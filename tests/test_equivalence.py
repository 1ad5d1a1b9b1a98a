"""Equivalence of the fast path (batched, left-padded prefill; cached decoding) with the slow oracle, for every backend.

Tolerances: entropies within 1e-4 nats. Batched, padded fp32 kernels sum in a different order than a single unpadded
row, which moves logits by ~1e-6 on these tiny models (measured: at most 3.4e-6); 1e-4 leaves room for that and still
catches a polluted state (pad tokens leaking into the state move entropies by 1e-2 or more).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from overflow_core.reference import reference_greedy, reference_last_logits, reference_scores
from overflow_core.testing import FAMILIES, sample_documents

QUESTION = "What is the PIN of Alice Baker?"


def _documents(seed: int) -> list[Any]:
    """Documents of varied lengths, so micro-batches mix rows of different lengths (random left padding)."""
    rng = random.Random(seed)
    docs = sample_documents(n_docs=3, seed=seed)
    return [(text[: rng.randint(150, len(text))], meta) for text, meta in docs]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_scores_and_selection_equal_the_oracle(engine: Any, family: str) -> None:
    oprm = engine(family, max_batch_tokens=400)
    docs = _documents(seed=1)
    ranking = oprm.rank(QUESTION, docs)
    chunks = oprm.chunk(docs)
    assert len(chunks) >= 6, "the fixture must produce enough chunks to mix lengths within a micro-batch"
    q_ids = oprm.encode_question(QUESTION)
    prompts = [oprm.prompt(c.ids, q_ids) for c in chunks]
    ref_entropy, ref_idk, ref_nf = reference_scores(oprm.model, prompts, oprm.idk_ids)
    fast = {s.chunk.index: s for s in ranking.scores}
    for i in range(len(chunks)):
        assert fast[i].entropy == pytest.approx(ref_entropy[i], abs=1e-4), f"chunk {i}: padded batch != single row"
        assert fast[i].idk == ref_idk[i]
        assert fast[i].not_found_prob == pytest.approx(ref_nf[i], abs=1e-5)
    ref_order = sorted(range(len(chunks)), key=lambda i: (ref_idk[i], ref_entropy[i], i))
    assert ranking.scores[0].chunk.index == ref_order[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_tokens_equal_greedy_recomputation_from_scratch(engine: Any, family: str) -> None:
    oprm = engine(family, max_batch_tokens=400)
    docs = _documents(seed=2)
    stream = oprm.stream_answer(QUESTION, docs, max_new_tokens=6)
    text = "".join(stream)
    answer = stream.result
    assert text.strip() == answer.text
    best = answer.ranking.best if answer.ranking else None
    assert best is not None
    q_ids = oprm.encode_question(QUESTION)
    expected = reference_greedy(oprm.model, oprm.prompt(best.chunk.ids, q_ids), 6, oprm.stop_ids)
    assert answer.usage.generated_tokens == len(expected)
    assert oprm.tokenizer.decode(expected, skip_special_tokens=True).strip() == answer.text


@pytest.mark.parametrize("family", FAMILIES)
def test_selected_state_continued_with_teacher_tokens_equals_one_full_forward(engine: Any, family: str) -> None:
    """Select one row out of a padded batch, feed a multi-token continuation: logits equal a single full forward."""
    oprm = engine(family)
    rng = random.Random(3)
    prompts = [[rng.randrange(5, 400) for _ in range(n)] for n in (23, 9, 17)]
    continuation = [rng.randrange(5, 400) for _ in range(5)]
    from overflow_core.prefill import pad_left

    ids, mask = pad_left(prompts, oprm.pad_id)
    with torch.inference_mode():
        _, state = oprm.backend.prefill(ids, mask)
        row = oprm.backend.select(state, [1])
        session = oprm.backend.open(row)
        fed = session.feed(torch.tensor([continuation]), all_logits=True)[0]
        full = oprm.model(input_ids=torch.tensor([prompts[1] + continuation])).logits[0, -len(continuation) :]
    torch.testing.assert_close(fed.float(), full.float(), atol=1e-4, rtol=0)
    # the selected state is a value: the session advanced its own copy, not ``row``
    again = oprm.backend.open(row).feed(torch.tensor([continuation[:1]]))[0]
    torch.testing.assert_close(again.float(), full[0].float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["mamba2", "bamba"])
def test_stacked_states_continue_like_separate_rows(engine: Any, family: str) -> None:
    oprm = engine(family)
    prompts = [[7, 8, 9, 10, 11], [12, 13]]
    states = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            states.append(oprm.backend.prefill(ids, torch.ones_like(ids))[1])
        stacked = oprm.backend.stack(states)
        logits = oprm.backend.open(stacked).feed(torch.tensor([[20, 21], [20, 21]]))
    for i, p in enumerate(prompts):
        expected = reference_last_logits(oprm.model, [*p, 20, 21])
        torch.testing.assert_close(logits[i].float(), expected, atol=1e-4, rtol=0)
