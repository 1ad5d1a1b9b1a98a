"""The engine end to end on tiny models: results, modes, streaming, cached continuation, threads and bad input."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core import OPRM, ConfigError, InputError, ModelLoadError, UnsupportedModelError
from overflow_core.chunking import encode_text
from overflow_core.testing import sample_documents

QUESTION = "What is the PIN of Alice Baker?"


@pytest.fixture
def docs() -> list[Any]:
    return sample_documents(n_docs=3, seed=5)


class ForwardCounter:
    """Records the number of input tokens of every forward pass of a model."""

    def __init__(self, model: Any) -> None:
        self.calls: list[int] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(int(ids.shape[-1]) * int(ids.shape[0]))

    def close(self) -> None:
        self._handle.remove()


def test_rank_returns_every_chunk_scored_and_ordered(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    ranking = oprm.rank(QUESTION, docs)
    chunks = oprm.chunk(docs)
    assert len(ranking) == len(chunks)
    assert [s.rank for s in ranking.scores] == list(range(len(chunks)))
    answering = [s.entropy for s in ranking.scores if not s.idk]
    assert answering == sorted(answering)
    assert {s.chunk.source for s in ranking.scores} == {"doc0.txt", "doc1.txt", "doc2.txt"}
    top = oprm.rank(QUESTION, docs, k=2)
    assert [s.chunk.index for s in top.scores] == [s.chunk.index for s in ranking.scores[:2]]
    json.dumps(ranking.to_dict())  # plain data all the way down


def test_answer_carries_its_work(engine: Any, docs: Any) -> None:
    answer = engine("mamba2").answer(QUESTION, docs, max_new_tokens=5)
    assert answer.mode == "oprm"
    assert (answer.ranking is not None and answer.chunk is not None) or answer.not_found
    assert answer.usage.prompt_tokens > 0 and answer.usage.padded_tokens >= answer.usage.prompt_tokens
    assert answer.usage.generated_tokens <= 5
    assert answer.timings.prefill_s > 0
    json.dumps(answer.to_dict())
    assert "Answer(" in repr(answer)


def test_stream_yields_the_answer_incrementally(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    pieces = list(oprm.stream(QUESTION, docs, max_new_tokens=6))
    assert "".join(pieces).strip() == oprm.answer(QUESTION, docs, max_new_tokens=6).text
    assert len(pieces) >= 2, "a 6-token answer from a random model must arrive in several pieces, not one at the end"


def test_decoding_continues_from_the_cached_state(engine: Any, docs: Any) -> None:
    """After prefill, every forward pass sees exactly one new token: the selected chunk is never prefilled again."""
    oprm = engine("mamba2", max_batch_tokens=100_000)
    counter = ForwardCounter(oprm.model)
    try:
        answer = oprm.answer(QUESTION, docs, max_new_tokens=6)
    finally:
        counter.close()
    n_chunks = len(oprm.chunk(docs))
    assert answer.usage.generated_tokens > 1
    prefill_calls = counter.calls[:1]
    forced = [len(s) - 1 for s in oprm.idk_ids.sequences if len(s) > 1]  # the not-found check teacher-forces these
    lengths = sorted(set(forced))  # tokenizations of one length share a feed
    check_calls = counter.calls[1 : 1 + len(lengths)]
    decode_calls = counter.calls[1 + len(lengths) :]
    assert len(forced) > len(lengths), "the tiny tokenizer writes the phrase two ways of one length: they share a feed"
    assert prefill_calls[0] == answer.usage.padded_tokens, "one forward for all chunks (budget fits them all)"
    assert check_calls == [n * forced.count(n) * n_chunks for n in lengths], "one feed per length of the phrase"
    assert decode_calls == [1] * (answer.usage.generated_tokens - 1 + (answer.usage.generated_tokens < 6)), (
        f"decode steps must feed one token each, got {decode_calls} for {n_chunks} chunks"
    )


def test_complete_reuses_the_state_cache_after_rank(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    ranking = oprm.rank(QUESTION, docs, k=1)
    best = ranking.scores[0].chunk
    prompt = oprm.encode_prompt(oprm.user_message(best.text, QUESTION))
    assert prompt == oprm.prompt(best.ids, oprm.encode_question(QUESTION))
    generation = oprm.complete(prompt, max_new_tokens=5)
    text = "".join(generation)
    assert generation.prompt_forward_tokens == 0 and generation.reused_tokens == len(prompt)
    oprm.state_cache.clear()
    fresh = oprm.complete(prompt, max_new_tokens=5)
    assert "".join(fresh) == text and fresh.token_ids == generation.token_ids
    assert fresh.prompt_forward_tokens == len(prompt)


def test_all_chunks_abstaining_gives_a_marked_not_found(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    vocab_size = oprm.model.config.vocab_size
    original = oprm.idk_ids
    oprm.idk_ids = frozenset(range(vocab_size))  # every top token now "starts the not-found answer"
    try:
        answer = oprm.answer(QUESTION, docs)
    finally:
        oprm.idk_ids = original
    assert answer.not_found and answer.text == oprm.config.not_found and answer.chunk is None
    assert answer.usage.generated_tokens == 0


def test_vanilla_and_summarize_modes(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2", max_batch_tokens=64)  # vanilla runs the long sequence in 64-token segments
    vanilla = oprm.answer(QUESTION, docs, mode="vanilla", max_new_tokens=4)
    assert vanilla.mode == "vanilla" and vanilla.ranking is None
    text = "\n\n".join(t.strip() for t, _ in docs)
    prompt = oprm.prompt(encode_text(oprm.tokenizer, text), oprm.encode_question(QUESTION))
    assert vanilla.usage.prompt_tokens == len(prompt)
    from overflow_core.reference import reference_greedy

    expected = reference_greedy(oprm.model, prompt, 4, oprm.stop_ids)
    assert vanilla.text == oprm.tokenizer.decode(expected, skip_special_tokens=True).strip()
    summary = oprm.answer(QUESTION, docs, mode="summarize", k=2, max_new_tokens=3)
    assert summary.mode == "summarize" and 1 <= len(summary.parts) <= 2
    assert summary.text == "\n".join(summary.parts)


def test_sampling_is_seeded(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    a = oprm.answer(QUESTION, docs, temperature=1.0, max_new_tokens=8, seed=3).text
    b = oprm.answer(QUESTION, docs, temperature=1.0, max_new_tokens=8, seed=3).text
    assert a == b


def test_stop_strings_end_the_answer(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    full = oprm.answer(QUESTION, docs, max_new_tokens=8).text
    assert len(full) >= 2
    stop = full[1:3]
    cut = oprm.answer(QUESTION, docs, max_new_tokens=8, stop=[stop]).text
    assert stop not in cut and full.startswith(cut)


def test_concurrent_calls_equal_serial_calls(engine: Any) -> None:
    oprm = engine("mamba2")
    questions = [
        QUESTION,
        "Who is the manager of Omar Novak?",
        "What is the home city of Uma Weber?",
        "Tell me the PIN.",
    ]
    corpora = [sample_documents(n_docs=2, seed=s) for s in range(4)]
    serial = [oprm.answer(q, d, max_new_tokens=4).text for q, d in zip(questions, corpora, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(
            pool.map(lambda qd: oprm.answer(qd[0], qd[1], max_new_tokens=4).text, zip(questions, corpora, strict=True))
        )
    assert threaded == serial


@pytest.mark.parametrize(
    ("question", "documents", "match"),
    [
        ("", ["text"], "question"),
        ("   ", ["text"], "question"),
        ("What?", [], "documents"),
        ("What?", ["   "], r"documents\[0\]"),
        ("What?", [42], r"documents\[0\]"),
    ],
)
def test_bad_input_is_named(engine: Any, question: str, documents: Any, match: str) -> None:
    with pytest.raises(InputError, match=match):
        engine("mamba2").answer(question, documents)


def test_question_longer_than_a_chunk_is_rejected(engine: Any) -> None:
    """It would go with every chunk in OPRM mode; vanilla mode reads it once after the whole context and takes it."""
    oprm = engine("mamba2")
    long = "what is it " * 100
    assert len(oprm.encode_question(long, per_chunk=False)) > oprm.config.chunk_tokens
    with pytest.raises(InputError, match="chunk_tokens"):
        oprm.rank(long, ["Some text."])
    with pytest.raises(InputError, match="chunk_tokens"):
        oprm.answer(long, ["Some text."], max_new_tokens=2)
    answer = oprm.answer(long, ["Some text."], mode="vanilla", max_new_tokens=2)
    assert answer.usage.prompt_tokens > oprm.config.chunk_tokens


def test_bad_settings_are_named(engine: Any, model_dir: Any) -> None:
    with pytest.raises(ConfigError, match="mode"):
        engine("mamba2").answer("What?", ["text"], mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="k"):
        engine("mamba2").rank("What?", ["text"], k=0)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        OPRM.from_pretrained(model_dir("mamba2"), chunk_tokens=0)
    with pytest.raises(ConfigError, match="unknown"):
        OPRM.from_pretrained(model_dir("mamba2"), chunk_size=10)


def test_missing_corrupt_and_unsupported_models(tmp_path: Path, model_dir: Any) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        OPRM.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        OPRM.from_pretrained(tmp_path / "empty")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir("mamba2"), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load"):
        OPRM.from_pretrained(broken)
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(str(llama))
    with pytest.raises(UnsupportedModelError, match="mamba2"):
        OPRM.from_pretrained(llama)
    with pytest.raises(UnsupportedModelError, match="recurrent"):
        OPRM(LlamaForCausalLM.from_pretrained(str(llama)), tokenizer=None)  # type: ignore[arg-type]


def test_model_folder_settings_are_read_and_overridden(model_dir: Any) -> None:
    folder = model_dir("mamba2", chunk_tokens=40, not_found="unknown")
    oprm = OPRM.from_pretrained(folder)
    assert oprm.config.chunk_tokens == 40 and oprm.config.not_found == "unknown"
    assert "unknown" in oprm.template.suffix
    assert OPRM.from_pretrained(folder, chunk_tokens=30).config.chunk_tokens == 30


def test_inference_mode_leaves_no_grad_state(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    oprm.answer(QUESTION, docs, max_new_tokens=2)
    assert all(p.grad is None for p in oprm.model.parameters())
    assert not torch.is_inference_mode_enabled()


def test_a_generation_can_be_resumed_from_another_thread(engine: Any, docs: Any) -> None:
    """Async adapters advance one generation from several worker threads; inference mode must not span a yield."""
    oprm = engine("mamba2")
    ranking = oprm.rank(QUESTION, docs, k=1)
    prompt = oprm.prompt(ranking.scores[0].chunk.ids, oprm.encode_question(QUESTION))
    expected = "".join(oprm.complete(prompt, max_new_tokens=6))
    pieces = iter(oprm.complete(prompt, max_new_tokens=6))
    first = next(pieces)
    assert not torch.is_inference_mode_enabled(), "a paused generation must not leave this thread in inference mode"
    with ThreadPoolExecutor(max_workers=1) as pool:
        rest = pool.submit(lambda: "".join(pieces)).result()
    assert first + rest == expected


@pytest.mark.parametrize("release", [True, False])
def test_release_memory_setting_reaches_the_prefill_loop(
    engine: Any, docs: Any, monkeypatch: pytest.MonkeyPatch, release: bool
) -> None:
    """``release_memory`` decides whether the prefill loop bounds the heap; a bound of 0 bytes above the start makes
    every batch past it trim, so the trims show that the setting arrived."""
    import overflow_core.prefill as prefill_module

    calls: list[int] = []
    monkeypatch.setattr(prefill_module, "release_freed_memory", lambda: calls.append(1) or True)
    sizes = iter(range(10**9, 10**12, 10**8))
    monkeypatch.setattr(prefill_module, "resident_bytes", lambda: next(sizes))  # grows by 100 MB per read
    oprm = engine("mamba2", max_batch_tokens=200, release_memory=release)
    oprm.rank(QUESTION, docs)
    assert (len(calls) > 1) if release else not calls


def test_complete_strips_the_leading_space_of_answers_to_engine_prompts_only(engine: Any, docs: Any) -> None:
    oprm = engine("mamba2")
    prompt = oprm.prompt(encode_text(oprm.tokenizer, docs[0][0])[:40], oprm.encode_question(QUESTION))
    raw = oprm.complete(prompt, max_new_tokens=6, lstrip=False)
    raw_text = "".join(raw)
    auto = oprm.complete(prompt, max_new_tokens=6)
    assert "".join(auto) == auto.text == raw_text.lstrip(), "an answer to the engine's prompt starts without whitespace"
    assert auto.token_ids == raw.token_ids, "stripping changes the text, never the tokens"
    plain = oprm.complete(prompt[:-1], max_new_tokens=6)
    forced = oprm.complete(prompt[:-1], max_new_tokens=6, lstrip=False)
    assert plain.token_ids == forced.token_ids and "".join(plain) == "".join(forced), "a plain completion keeps its text"
