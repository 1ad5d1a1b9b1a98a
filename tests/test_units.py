"""Pure units with hand-made inputs: scoring, sampling, batching, padding, the state cache."""

from __future__ import annotations

import math

import pytest
import torch

from overflow_core.backends.base import State
from overflow_core.prefill import pad_left, plan_batches
from overflow_core.sampling import sample_next
from overflow_core.scoring import Signals, entropy, idk_flags, not_found_prob, rank_order, signals, top_prob
from overflow_core.state_cache import StateCache


def test_entropy_of_uniform_and_peaked_rows() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    h = entropy(logits)
    assert h[0] == pytest.approx(math.log(4), abs=1e-6)
    assert h[1] == pytest.approx(0.0, abs=1e-6)


def test_top_prob_idk_flags_and_not_found_prob() -> None:
    logits = torch.tensor([[0.0, 5.0, 0.0], [3.0, 0.0, 0.0]])
    assert top_prob(logits)[1] == pytest.approx(math.exp(3) / (math.exp(3) + 2), abs=1e-6)
    assert idk_flags(logits, {1}).tolist() == [True, False]
    assert not_found_prob(logits, {1})[1] == pytest.approx(1 / (math.exp(3) + 2), abs=1e-6)
    assert not_found_prob(logits, [1, 2, 1])[0] == pytest.approx((math.exp(5) + 1) / (math.exp(5) + 2), abs=1e-6)
    sig = signals(logits, iter([1]))  # a one-shot iterable of ids serves every signal
    assert sig.idk.tolist() == [True, False] and sig.not_found_prob[0] > 0.9


def test_rank_order_puts_abstainers_last_and_breaks_ties_by_index() -> None:
    ent = torch.tensor([0.5, 0.1, 0.5, 0.05])
    probs = torch.tensor([0.5, 0.9, 0.5, 0.95])
    nf = torch.tensor([0.3, 0.4, 0.2, 0.9])
    idk = torch.tensor([False, False, False, True])
    sig = Signals(ent, probs, nf, idk)
    assert rank_order(sig, criterion="entropy", idk_filter=True) == [1, 0, 2, 3]
    assert rank_order(sig, criterion="entropy", idk_filter=False) == [3, 1, 0, 2]
    assert rank_order(sig, criterion="max_prob", idk_filter=True) == [1, 0, 2, 3]
    assert rank_order(sig, criterion="not_found_prob", idk_filter=True) == [2, 0, 1, 3]
    assert rank_order(sig.take([3, 2]), criterion="not_found_prob", idk_filter=False) == [1, 0]
    with pytest.raises(ValueError, match="criterion"):
        rank_order(sig, criterion="loudest", idk_filter=True)


def test_signals_fill_by_rows() -> None:
    sig = Signals.zeros(4)
    t = torch.tensor
    sig.put([3, 1], Signals(t([1.0, 2.0]), t([0.5, 0.6]), t([0.1, 0.2]), t([True, False])))
    assert sig.entropy.tolist() == [0.0, 2.0, 0.0, 1.0] and sig.idk.tolist() == [False, False, False, True]
    assert sig.not_found_prob[3] == pytest.approx(0.1) and sig.top_prob[1] == pytest.approx(0.6)


def test_greedy_sampling_is_argmax_and_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    assert sample_next(logits).tolist() == logits.argmax(-1).tolist()
    a = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert a.tolist() == b.tolist()


def test_top_k_and_top_p_restrict_the_support() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, temperature=5.0, top_k=2, generator=gen)) for _ in range(200)}
    assert draws <= {0, 1}, "top_k=2 must never draw outside the two most likely tokens"
    draws = {int(sample_next(logits, temperature=1.0, top_p=0.5, generator=gen)) for _ in range(200)}
    assert draws == {0}, "top_p=0.5 keeps only the top token when it alone holds more than half the mass"


def test_plan_batches_respects_the_budget_and_covers_every_row() -> None:
    lengths = [10, 50, 20, 50, 5, 70]
    batches = plan_batches(lengths, max_batch_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 100
    assert plan_batches([300], max_batch_tokens=100) == [[0]]  # an over-long row still runs, alone


def test_pad_left() -> None:
    ids, mask = pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def _state(n: int) -> State:
    return State(tensors={"0.ssm0": torch.zeros(1, n)}, lengths=torch.tensor([n]), backend="x")


def test_state_cache_longest_prefix_and_byte_bound() -> None:
    one = _state(4)
    cache = StateCache(max_bytes=3 * (one.nbytes + 4 * 4))
    logits = torch.zeros(1, 4)
    cache.put([1, 2], _state(4), logits)
    cache.put([1, 2, 3], _state(4), logits)
    hit = cache.longest_prefix([1, 2, 3, 4])
    assert hit is not None and hit.ids == (1, 2, 3)
    assert cache.longest_prefix([2, 3]) is None
    for i in range(10):
        cache.put([9, i], _state(4), logits)
    assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 3
    disabled = StateCache(0)
    disabled.put([1], _state(4), logits)
    assert len(disabled) == 0


class _CountingBackend:
    """Stands in for a model: logits of zeros, a state of the row count."""

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        return torch.zeros(ids.shape[0], 4), ids.shape[0]


@pytest.mark.parametrize("release", [True, False])
def test_prefill_trims_the_heap_only_past_the_bound_its_first_batch_sets(
    monkeypatch: pytest.MonkeyPatch, release: bool
) -> None:
    """The first micro-batch sets the bound (size before + 2x what it added, at least 256 MiB above); later batches trim
    only when the resident set is past it. A trim after every batch (the old, slow policy) would count 4 here."""
    import overflow_core.prefill as prefill_module

    mib = 2**20
    rss = iter([1000 * mib, 1300 * mib, 1350 * mib, 1700 * mib, 1500 * mib])  # before, then after each of 4 batches
    calls: list[int] = []
    monkeypatch.setattr(prefill_module, "resident_bytes", lambda: next(rss))
    monkeypatch.setattr(prefill_module, "release_freed_memory", lambda: calls.append(1) or True)
    prompts = [[1] * 30, [1] * 40, [1] * 50, [1] * 60]
    batches = list(
        prefill_module.prefill(_CountingBackend(), prompts, max_batch_tokens=60, pad_id=0, release_memory=release)  # type: ignore[arg-type]
    )
    assert sorted(r for b in batches for r in b.rows) == [0, 1, 2, 3] and len(batches) == 4
    # bound = 1000 + max(2 * 300, 256) = 1600 MiB: only the batch that leaves 1700 MiB trims
    assert len(calls) == (1 if release else 0)


def test_heap_bound_trims_every_batch_where_the_resident_set_is_unknown() -> None:
    from overflow_core.memory import HeapBound

    calls: list[int] = []
    bound = HeapBound(rss=lambda: None, release=lambda: calls.append(1) or True)
    assert all(bound.after_batch() for _ in range(3)) and len(calls) == 3


def test_release_freed_memory_reports_whether_it_could() -> None:
    import sys

    from overflow_core.memory import release_freed_memory

    done = release_freed_memory()
    assert isinstance(done, bool)
    if sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc":
        assert done


@pytest.mark.parametrize("criterion", ["entropy", "max_prob", "not_found_prob"])
def test_chunk_scores_sort_exactly_as_ranks_with_abstainers_last(criterion: str) -> None:
    from overflow_core.scoring import ABSTAIN_PENALTY, rank_chunks
    from overflow_core.types import Chunk

    chunks = [Chunk(index=i, doc_index=0, text=f"c{i}", start=0, end=2, ids=(i,)) for i in range(4)]
    # chunk 0 abstains with the most confident distribution of all: it must still come last, and score lowest
    ent = torch.tensor([0.01, 1.5, 0.7, 2.0])
    probs = torch.tensor([0.99, 0.4, 0.6, 0.2])
    nf = torch.tensor([0.001, 0.3, 0.1, 0.5])  # chunk 0's "not found" is its top token, yet the sum is smallest
    idk = torch.tensor([True, False, False, False])
    scores = rank_chunks(chunks, Signals(ent, probs, nf, idk), criterion=criterion, idk_filter=True)
    assert [s.chunk.index for s in scores] == [2, 1, 3, 0]
    assert [s.rank for s in scores] == [0, 1, 2, 3]
    assert [s.not_found_prob for s in scores] == pytest.approx([0.1, 0.3, 0.5, 0.001])
    values = [s.score for s in scores]
    assert values == sorted(values, reverse=True)
    expected = {"entropy": -0.01, "max_prob": 0.99, "not_found_prob": -0.001}[criterion] - ABSTAIN_PENALTY
    assert scores[-1].score == pytest.approx(expected)
    unfiltered = rank_chunks(chunks, Signals(ent, probs, nf, idk), criterion=criterion, idk_filter=False)
    assert unfiltered[0].chunk.index == 0, "without the IDK filter the confident abstainer wins"


class _ScriptedSession:
    """A session whose every step makes the next scripted token the argmax."""

    def __init__(self, script: list[int], vocab: int) -> None:
        self.script, self.vocab, self.fed = script, vocab, 0

    def logits_for(self, step: int) -> torch.Tensor:
        row = torch.zeros(1, self.vocab)
        row[0, self.script[step]] = 1.0
        return row

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        self.fed += 1
        return self.logits_for(self.fed)


class _PieceTokenizer:
    eos_token_id = 0

    def __init__(self, pieces: dict[int, str]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize("lstrip", [False, True])
def test_generation_lstrip_drops_the_leading_space_from_pieces_and_text(lstrip: bool) -> None:
    from overflow_core.decode import Generation

    tokenizer = _PieceTokenizer({1: " ", 2: "44", 3: "12", 4: " \n"})
    session = _ScriptedSession([4, 1, 2, 3, 0], vocab=5)  # " \n", " ", "44", "12", EOS
    generation = Generation(
        session,  # type: ignore[arg-type]
        session.logits_for(0),
        tokenizer=tokenizer,
        max_new_tokens=10,
        stop_ids=frozenset({0}),
        lstrip=lstrip,
    )
    pieces = list(generation)
    expected = "4412" if lstrip else " \n 4412"
    assert "".join(pieces) == generation.text == expected
    assert generation.token_ids == [4, 1, 2, 3] and generation.finish_reason == "stop"
    assert all(pieces), "no empty pieces"


def test_the_default_prefill_budget_follows_the_device() -> None:
    """``max_batch_tokens=None`` is 4,096 tokens on a CPU and 16,384 on an accelerator, also after the device changes; a
    budget that was set stays."""
    from overflow_core.config import OPRMConfig

    cpu = OPRMConfig()
    assert cpu.max_batch_tokens is None and cpu.batch_tokens == 4096
    assert cpu.with_overrides(device="cuda:1").batch_tokens == 16384
    assert OPRMConfig(device="cuda", max_batch_tokens=1000).batch_tokens == 1000
    assert OPRMConfig(max_batch_tokens=1000).with_overrides(device="cuda").batch_tokens == 1000


def test_whitespace_stop_strings_are_taken_and_cut_after_the_leading_space() -> None:
    """``stop=["\\n"]``, the most common stop string of LangChain and LlamaIndex users, was refused as 'empty'. It cuts
    the answer at the first newline after the answer starts (the leading whitespace the engine strips never counts)."""
    from overflow_core.config import check_setting
    from overflow_core.decode import Generation
    from overflow_core.errors import ConfigError

    assert check_setting("stop", "\n") == ("\n",) and check_setting("stop", ["\n\n", " "]) == ("\n\n", " ")
    with pytest.raises(ConfigError, match=r"stop\[1\]: expected a non-empty string, got ''"):
        check_setting("stop", ["\n", ""])
    tokenizer = _PieceTokenizer({1: " ", 2: "44", 3: "12", 4: " \n"})
    session = _ScriptedSession([4, 2, 3, 4, 2, 0], vocab=5)  # " \n", "44", "12", " \n", "44", EOS
    generation = Generation(
        session,  # type: ignore[arg-type]
        session.logits_for(0),
        tokenizer=tokenizer,
        max_new_tokens=10,
        stop=("\n",),
        stop_ids=frozenset({0}),
        lstrip=True,
    )
    assert "".join(generation) == generation.text == "4412 " and generation.finish_reason == "stop"
    assert generation.token_ids == [4, 2, 3, 4], "stopped at the second newline, not at the leading one"


def test_ranking_cut_takes_a_positive_k_only() -> None:
    """``cut(-1)`` dropped the last chunk and ``cut(0)`` returned none, silently (slice semantics), while ``rank(k=0)``
    is refused: a top-k is refused the same way wherever it is cut."""
    from overflow_core.errors import ConfigError
    from overflow_core.types import Chunk, ChunkScore, Ranking, Timings, Usage

    chunk = Chunk(index=0, doc_index=0, text="x", start=0, end=1, ids=(1,))
    scores = [ChunkScore(chunk=chunk, rank=n, entropy=float(n), top_prob=0.5, not_found_prob=0.1, idk=False,
                         score=-float(n)) for n in range(3)]  # fmt: skip
    ranking = Ranking("q", scores, Timings(), Usage())
    assert ranking.cut(None) is ranking and len(ranking.cut(2)) == 2 and len(ranking.cut(9)) == 3
    for k in (0, -1, True, 1.0):
        with pytest.raises(ConfigError, match="k: expected a positive number of chunks"):
            ranking.cut(k)  # type: ignore[arg-type]


def test_format_markers_are_the_templates_own_labels_tags_and_special_tokens() -> None:
    """The stop strings both framework LLMs use outside the handoff (one copy, here): every marker is in the template,
    none is invented, and a special token the template does not use is left out."""
    from overflow_core.prompting import PromptTemplate, format_markers

    t = PromptTemplate(prefix="<|user|>\n<doc>\n", infix="\n</doc>\nQuestion: ", suffix="<|end|>\n<|assistant|>\nAnswer:")
    markers = format_markers(t, ["<|user|>", "<|end|>", "<|assistant|>", "<|system|>", ""])
    assert markers == ["<|user|>", "<|end|>", "<|assistant|>", "\nQuestion:", "\nAnswer:", "\n<doc>", "\n</doc>"]
    assert format_markers(PromptTemplate(prefix="", infix=" ", suffix=" ->")) == []
