"""Every registered family on a tiny random model whose outputs depend on history: the equivalence checks that can fail.

A tiny model at its default init is nearly uniform (one family's chunk entropies differed by 9e-6, under the tolerance),
so each model here has its linear and embedding weights scaled up (:func:`overflow_core.testing.sharpen`) and the first
test asserts that history and unmasked pads move the logits far more than the tolerance. Then, per family:

- batched prefill with random left padding equals each prompt alone, unpadded (``TOL`` on logits);
- rows selected out of one padded batch and stacked with a state of another width, continued with a multi-token block,
  equal one full forward over prompt + continuation (prompts longer than every sliding window);
- the family's continuation mode in the backends table is the one measured here (block vs token-by-token error);
- the engine's greedy answer and its chunk scores equal the slow oracle (each chunk alone, decoding by recomputation).

Tolerance: ``TOL = 1e-4`` on logits of magnitude ~1-30. Batched, padded fp32 kernels sum in another order than one
unpadded row; on these sharpened models that moves logits by at most ~3e-5 (measured: RecurrentGemma at factor 3,
5.6e-6; Lara-Mini 2.4e-5), while a pad reaching the state or a wrong continuation moves them by 1e-1 or more.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core.backends import FAMILIES as TABLE
from overflow_core.backends import resolve_backend
from overflow_core.prefill import pad_left
from overflow_core.reference import reference_greedy, reference_last_logits
from overflow_core.testing import ALL_FAMILIES, continuation_errors, make_tiny_model, sample_documents

TOL = 1e-4
EFFECT = 100 * TOL  # what history and unmasked pads must move the logits by, at least
PAD = 7  # a real token as pad: its embedding is not zero, so a pad that reaches the state shows
FACTOR = {"recurrent_gemma": 3.0, "zamba": 10.0}  # its fp32 decode path drifts 3e-4 at factor 10 (5.6e-6 at 3)
QUESTION = "What is the PIN of Alice Baker?"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session")
def tiny(tokenizer: Any) -> Any:
    """``tiny(family)`` -> (model, backend), built once per session."""
    made: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in made:
            model = make_tiny_model(
                family, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, factor=FACTOR.get(family, 4.0)
            )
            made[family] = (model, resolve_backend(model))
        return made[family]

    return get


def _prompts(seed: int, lengths: tuple[int, ...]) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, 500) for _ in range(n)] for n in lengths]


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_the_table_lists_every_tested_family() -> None:
    assert set(ALL_FAMILIES) == {k for k, f in TABLE.items() if k not in ("rwkv5", "rwkv6")}, (
        "every registered family needs a tiny config in overflow_core.testing (rwkv5/6 are remote code: "
        "test_remote_code_list_state_model covers their interface)"
    )


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_history_and_unmasked_pads_move_the_outputs_far_above_the_tolerance(tiny: Any, family: str) -> None:
    model, _ = tiny(family)
    a, b, tail = _prompts(0, (12, 12, 6))
    history = float((_logits(model, a + tail)[-1] - _logits(model, b + tail)[-1]).abs().max())
    assert history > EFFECT, f"{family}: the last logits move by {history:.2g} with another history; too uniform"
    padded = _logits(model, [PAD] * 10 + tail)[-1]
    pads = float((padded - _logits(model, tail)[-1]).abs().max())
    assert pads > EFFECT, f"{family}: 10 unmasked pads move the logits by only {pads:.2g}; a leak would not show"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_left_padded_batched_prefill_equals_each_prompt_alone(tiny: Any, family: str) -> None:
    model, backend = tiny(family)
    prompts = _prompts(1, (23, 9, 17, 4, 23))
    ids, mask = pad_left(prompts, PAD)
    with torch.inference_mode():
        logits, state = backend.prefill(ids, mask)
    assert state.batch_size == len(prompts) and state.lengths.tolist() == [len(p) for p in prompts]
    for i, p in enumerate(prompts):
        expected = reference_last_logits(model, p)
        err = float((logits[i].float() - expected).abs().max())
        assert err <= TOL, f"{family} row {i} ({len(p)} tokens in a batch of width {ids.shape[1]}): error {err:.2g}"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_selected_and_stacked_states_continue_like_one_full_forward(tiny: Any, family: str) -> None:
    model, backend = tiny(family)
    prompts = _prompts(2, (23, 9, 17))
    other = _prompts(3, (31,))[0]  # a separate state of another width (past every sliding window)
    cont = _prompts(4, (5,))[0]
    ids, mask = pad_left(prompts, PAD)
    with torch.inference_mode():
        _, batch = backend.prefill(ids, mask)
        _, alone = backend.prefill(torch.tensor([other]), torch.ones((1, len(other)), dtype=torch.long))
        picked = backend.select(batch, [2, 1])
        stacked = backend.stack([picked, alone])
        fed = backend.open(stacked).feed(torch.tensor([cont] * 3), all_logits=True).float()
        again = backend.open(picked).feed(torch.tensor([cont[:1]] * 2)).float()  # ``picked`` is still a value
        given = backend.open(backend.stack([picked, alone]), copy=False)  # a state made for this session: no copy
        handed = given.feed(torch.tensor([cont] * 3), all_logits=True).float()
    torch.testing.assert_close(handed, fed, rtol=0, atol=TOL)
    for row, p in enumerate([prompts[2], prompts[1], other]):
        full = _logits(model, p + cont)[-len(cont) :]
        err = float((fed[row] - full).abs().max())
        assert err <= TOL, f"{family}: stacked row {row} continued by {len(cont)} tokens differs by {err:.2g}"
        if row < 2:
            err = float((again[row] - full[0]).abs().max())
            assert err <= TOL, f"{family}: feeding a session changed the state it was opened on ({err:.2g})"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_the_tables_continuation_mode_is_the_measured_one(tiny: Any, family: str) -> None:
    """Block continuation from a stored state is wrong for some families (Mamba-1 mixers ignore the stored SSM state);
    the table says which, and this measures it: the token-by-token error must be within tolerance, and the block error
    decides the mode (far above the tolerance, or within it: nothing in between)."""
    _, backend = tiny(family)
    prompt, cont = _prompts(5, (19, 6))
    block, token = continuation_errors(backend, prompt, cont)
    assert token <= TOL, f"{family}: even token-by-token continuation differs by {token:.2g}"
    assert block <= TOL or block >= 10 * TOL, f"{family}: block error {block:.2g} is too close to the tolerance"
    needs = block > TOL
    assert TABLE[family].token_by_token == needs, (
        f"{family}: the table says token_by_token={TABLE[family].token_by_token}, but the measured block error is "
        f"{block:.2g} (token {token:.2g}): set it to {needs}"
    )


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_greedy_answer_and_scores_equal_the_slow_path(tiny: Any, tokenizer: Any, family: str) -> None:
    from overflow_core import OPRM
    from overflow_core.config import OPRMConfig

    model, _ = tiny(family)
    oprm = OPRM(model, tokenizer, OPRMConfig(chunk_tokens=48, max_batch_tokens=400, max_new_tokens=6))
    rng = random.Random(6)
    docs = [(text[: rng.randint(150, len(text))], meta) for text, meta in sample_documents(n_docs=2, seed=6)]
    stream = oprm.stream_answer(QUESTION, docs)
    text = "".join(stream)
    answer = stream.result
    ranking = answer.ranking
    assert ranking is not None and len(ranking.scores) >= 4
    q_ids = oprm.encode_question(QUESTION)
    for s in ranking.scores:
        expected = reference_last_logits(model, oprm.prompt(s.chunk.ids, q_ids))
        logp = torch.log_softmax(expected, -1)
        assert s.entropy == pytest.approx(float(-(logp.exp() * logp).sum()), abs=TOL), f"{family}: chunk entropy"
    entropies = sorted(s.entropy for s in ranking.scores)
    assert entropies[-1] - entropies[0] > 10 * TOL, f"{family}: chunk entropies too close to tell chunks apart"
    best = ranking.best
    assert best is not None and not answer.not_found, f"{family}: a random model must answer, else nothing is decoded"
    expected_ids = reference_greedy(model, oprm.prompt(best.chunk.ids, q_ids), 6, oprm.stop_ids)
    assert answer.usage.generated_tokens == len(expected_ids)
    assert tokenizer.decode(expected_ids, skip_special_tokens=True).strip() == answer.text
    assert text.strip() == answer.text


def _module_states(model: Any) -> list[Any]:
    return [
        (layer.temporal_block.conv1d_state, layer.temporal_block.rg_lru.recurrent_states)
        for layer in model.model.layers
        if hasattr(layer.temporal_block, "rg_lru")
    ]


def test_recurrent_gemma_state_is_a_value_and_threads_equal_serial_calls(tiny: Any) -> None:
    """RecurrentGemma keeps its state on its modules: the backend must leave nothing there, and calls from several
    threads at once (each prefilling its own prompts and decoding from them) must give exactly the serial results."""
    model, backend = tiny("recurrent_gemma")
    jobs = [_prompts(10 + i, (21, 9, 14)) for i in range(4)]
    cont = _prompts(20, (4,))[0]

    def run(prompts: list[list[int]]) -> torch.Tensor:
        ids, mask = pad_left(prompts, PAD)
        with torch.inference_mode():
            first, state = backend.prefill(ids, mask)
            more = backend.open(state).feed(torch.tensor([cont] * len(prompts)), all_logits=True)
        return torch.cat([first[:, None], more], 1)

    serial = [run(p) for p in jobs]
    assert all(s is None for pair in _module_states(model) for s in pair), "a call left state on the modules"
    results: dict[int, torch.Tensor] = {}

    def worker(i: int) -> None:
        for _ in range(3):
            results[i] = run(jobs[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(serial):
        torch.testing.assert_close(results[i], expected, atol=0, rtol=0)
    assert all(s is None for pair in _module_states(model) for s in pair), "a threaded call left state on the modules"
    distinct = float((serial[0] - serial[1]).abs().max())
    assert distinct > EFFECT, "the jobs must differ, else a mix-up between threads would not show"


def test_remote_code_list_state_model_runs_only_when_trusted(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A checkpoint with its own modeling code (``auto_map``; RWKV-6's interface: a list of state tensors mutated in
    place, no attention mask) is refused without ``trust_remote_code=True`` and runs exactly with it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from overflow_core import OPRM
    from overflow_core.errors import OverflowCoreError
    from overflow_core.testing import make_remote_code_dir

    folder = make_remote_code_dir(tmp_path / "remote", tokenizer_dir)
    with pytest.raises(OverflowCoreError, match="trust_remote_code"):
        OPRM.from_pretrained(folder)
    oprm = OPRM.from_pretrained(folder, trust_remote_code=True)
    assert oprm.backend.name == "rwkv6"
    model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()
    direct = OPRM(model, AutoTokenizer.from_pretrained(str(folder)))
    prompts = _prompts(7, (13, 5, 9))
    tail = prompts[1]
    pads = float((_logits(model, [PAD] * 8 + tail)[-1] - _logits(model, tail)[-1]).abs().max())
    assert pads > EFFECT, "unmasked pads must move this model's outputs, else the ragged prefill proves nothing"
    ids, mask = pad_left(prompts, PAD)
    for engine in (oprm, direct):
        with torch.inference_mode():
            logits, state = engine.backend.prefill(ids, mask)
            cont = engine.backend.open(engine.backend.select(state, [0])).feed(torch.tensor([[11, 12, 13]]))
        for i, p in enumerate(prompts):
            err = float((logits[i].float() - reference_last_logits(engine.model, p)).abs().max())
            assert err <= TOL, f"row {i}: {err:.2g}"
        err = float((cont[0].float() - _logits(engine.model, prompts[0] + [11, 12, 13])[-1]).abs().max())
        assert err <= TOL
    answer = oprm.answer(QUESTION, [text for text, _ in sample_documents(n_docs=1, seed=1)])
    assert answer.ranking is not None and answer.ranking.scores
