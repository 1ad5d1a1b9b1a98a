"""The bundled model's data and evaluation helpers: shared haystacks, and the evaluation's shortcuts equal the direct calls."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from overflow_core.synthetic.facts import FactWorld
from overflow_core.testing import assert_same_ranking
from training.evaluate import _vanilla_reader, chunk_kind, make_shared_haystack, value_kind

TINY = {"hidden_size": 32, "layers": 1, "state_size": 8, "head_dim": 16, "batch_size": 2, "eval_every": 0}


def _tiny_export(folder: Any) -> Any:
    """A random tiny Mamba-2 saved as a stage-1 export (``TINY`` sizes, the bundled tokenizer) in ``folder``; returns it."""
    import json

    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from training.train import TrainConfig, build_model

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    model = build_model(TrainConfig(**TINY), tok)  # type: ignore[arg-type]
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    (folder / "overflow.json").write_text(json.dumps({"trained": {"steps": 0, "seed": 0}}))
    return model


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
    from overflow_core.synthetic.facts import Fact, Question, Sample
    from training.train import encode_sample

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    for value in ("Paris", "4412", "AB-391", "Dr. Weber", "Brusikam", "12 May"):
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


def test_chunk_kind_says_what_a_chunk_shares_with_the_question() -> None:
    text = "Rosa Vidal's PIN is 4412. The vault code of Omar Novak is KX-311."
    assert chunk_kind(text, "Omar Novak", "vault code") == "key+attribute"
    assert chunk_kind(text, "Omar Novak", "PIN") == "key+attribute"
    assert chunk_kind(text, "Rosa Vidal", "badge number") == "key"
    assert chunk_kind(text, "Nadia Okafor", "pin") == "attribute"
    assert chunk_kind(text, "Nadia Okafor", "code") == "attribute"
    assert chunk_kind(text, "Nadia Okafor", "locker code") == "near attribute"
    assert chunk_kind(text, "Rosa", "vault") == "key+attribute"
    assert chunk_kind("The pinned note of Rosalind.", "Rosa", "PIN") == "neither", "whole words only"


def test_value_kind_separates_digits_words_and_the_rest() -> None:
    assert [value_kind(v) for v in ("4412", "555-0123", "Kyoto", "teacher")] == ["digits", "digits", "word", "word"]
    assert [value_kind(v) for v in ("VC-864", "Dr. Weber", "12 May", "80 kg", "A12")] == ["other"] * 5


def test_the_tokenizer_keeps_the_space_on_a_numbers_first_digit(tmp_path: Any) -> None:
    """OPRM ranks chunks by the answer's first token: " 4412" must start with a token that says "4", not a bare space
    that every chunk holding some number predicts equally well."""
    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from overflow_core.synthetic.tokenizer import train_tokenizer

    fresh = AutoTokenizer.from_pretrained(str(train_tokenizer(tmp_path / "tok", samples=300)))
    bundled = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    for tok in (fresh, bundled):
        ids = tok(" 4412", add_special_tokens=False)["input_ids"]
        assert [tok.decode([i]) for i in ids] == [" 4", "4", "1", "2"]
        assert tok.decode(tok("Room 12, floor 3.", add_special_tokens=False)["input_ids"]) == "Room 12, floor 3."


def test_training_attribute_names_share_no_word_with_the_held_out_ones() -> None:
    from overflow_core.synthetic.facts import COMPOSED_ATTRIBUTES, HELDOUT_ATTRIBUTES, TRAIN_ATTRIBUTES

    shared_on_purpose = {"code", "favorite"}  # as in "access code", "favorite color": the held-out combinations are new
    held_words = {w for name in HELDOUT_ATTRIBUTES for w in name.split()} - shared_on_purpose
    train_names = set(TRAIN_ATTRIBUTES) | set(COMPOSED_ATTRIBUTES)
    assert len(train_names) > 500
    assert not train_names & set(HELDOUT_ATTRIBUTES)
    assert not {w for name in train_names for w in name.split()} & held_words


def test_training_facts_mix_named_and_composed_attributes_and_made_up_values() -> None:
    from overflow_core.synthetic.facts import COMPOSED_ATTRIBUTES, TRAIN_ATTRIBUTES, Curriculum

    world, rng = FactWorld("train"), random.Random(5)
    facts = [f for _ in range(200) for f in world.sample(rng, Curriculum.at(0.9), n_facts=4).facts]
    assert all(f.attr in TRAIN_ATTRIBUTES or f.attr in COMPOSED_ATTRIBUTES for f in facts)
    named = sum(f.attr in TRAIN_ATTRIBUTES for f in facts)  # a few names are both ("home city")
    assert 0.25 < named / len(facts) < 0.6
    assert len({f.value for f in facts if f.value.isalpha()}) > 100, "word values must be too many to memorise"
    held = FactWorld("heldout")
    assert all(f.attr in held.attributes for f in held.sample(rng, Curriculum.at(0.9), n_facts=6).facts)


def test_hard_negatives_ask_for_what_is_not_there_in_three_ways() -> None:
    """An absent question names a present key with another attribute, a similar key with a present attribute, or another
    key with a present attribute, and never a (key, attribute) pair that is stated."""
    world, rng = FactWorld("train"), random.Random(9)
    kinds = {"same key": 0, "same attribute": 0}
    for _ in range(300):
        facts = world.facts(rng, 3, distractor_rate=0.0)
        q = world.absent_question(rng, facts, hard_rate=1.0)
        assert (q.key, q.attr) not in {(f.key, f.attr) for f in facts} and q.answer == world.not_found
        kinds["same key"] += any(q.key == f.key for f in facts)
        kinds["same attribute"] += any(q.attr == f.attr for f in facts)
    assert kinds["same key"] > 60 and kinds["same attribute"] > 120, kinds


def test_first_token_probe_reports_every_context_by_kind(engine: Any) -> None:
    from training.evaluate import first_token_probe

    oprm = engine("mamba2")
    probe = first_token_probe(oprm, FactWorld("train"), random.Random(4), 12)
    assert sum(row["n"] for row in probe.values()) == 12
    assert set(probe) <= {"digits", "word", "other"}
    for row in probe.values():
        assert 0.0 <= row["top1"] <= 1.0
        assert 0.0 < row["median_p_value"] < 1.0 and 0.0 < row["median_p_not_found"] < 1.0


def test_one_held_out_axis_at_a_time() -> None:
    from overflow_core.synthetic.facts import HELDOUT_FACT_CORES, HELDOUT_QUESTIONS, TRAIN_FACT_CORES, TRAIN_QUESTIONS

    world = FactWorld("train", held_out=("questions",))
    assert world.questions == HELDOUT_QUESTIONS and world.cores == TRAIN_FACT_CORES
    assert FactWorld("heldout").cores == HELDOUT_FACT_CORES and FactWorld("train").questions == TRAIN_QUESTIONS
    rng = random.Random(0)
    assert all(world.attribute(rng) in FactWorld("train").attributes for _ in range(50))
    assert all(FactWorld("train", held_out=("attributes",)).attribute(rng) in FactWorld("heldout").attributes for _ in range(9))
    import pytest

    with pytest.raises(ValueError, match="held_out"):
        FactWorld("train", held_out=("colours",))  # type: ignore[arg-type]


# -- stage 2: open vocabulary and key checking ----------------------------------------------------------------------------


def test_stage_one_data_is_unchanged() -> None:
    """The committed recipe must reproduce the committed weights, so the stage-1 draws are pinned: any change to the
    generator that alters them (a new draw, a reordered list) fails here and needs a retraining."""
    import hashlib

    from overflow_core.synthetic.facts import Curriculum

    digest = hashlib.sha256()
    world = FactWorld("train")
    for step in range(0, 2400, 60):
        digest.update(repr(world.sample(random.Random(step * 1_000_003), Curriculum.at(step / 2400))).encode())
    assert digest.hexdigest()[:16] == STAGE_ONE_DIGEST


STAGE_ONE_DIGEST = "647c6b53880dea7b"  # the draws of v4's stage 1 (checked against the pre-stage-2 generator)


def test_open_generators_add_no_held_out_word_or_construction() -> None:
    from overflow_core.synthetic.facts import (
        HELDOUT_ATTRIBUTE_WORDS,
        open_attribute,
        open_fact_sentence,
        open_filler,
        open_question,
    )

    rng = random.Random(11)
    names = [open_attribute(rng) for _ in range(3000)]
    assert len(set(names)) > 1500, "open attribute names must be too many to memorise"
    assert not {w for n in names for w in n.split()} & HELDOUT_ATTRIBUTE_WORDS
    sentences = [open_fact_sentence(rng, "Rosa Vidal", a, "4412") for a in names]
    forbidden_facts = ("(", "uses", "appears with", "everyone knows", "in the records")
    assert not [s for s in sentences if any(f in s.lower() for f in forbidden_facts)]
    assert all("Rosa Vidal" in s and "4412" in s for s in sentences)
    orders = {s.index("Rosa") < s.index("4412") for s in sentences}
    assert orders == {True, False}, "the value must come both before and after the key"
    questions = [open_question(rng, "Rosa Vidal", a) for a in names[:500]]
    forbidden_questions = ("could you find", "i need the", "look up", "report the", "that belongs to")
    assert not [q for q in questions if any(f in q.lower() for f in forbidden_questions)]
    fillers = [open_filler(rng) for _ in range(500)]
    forbidden_filler = {"cups", "stir", "minutes", "valve", "switch", "panel", "cable", "filter", "press", "reset", "check"}
    assert not {w.strip(".").lower() for f in fillers for w in f.split()} & forbidden_filler


def test_open_values_follow_the_attribute_head_and_stay_fixed_per_name() -> None:
    from overflow_core.synthetic.facts import open_value

    rng = random.Random(3)
    assert all(open_value("brusik number", rng).isdigit() for _ in range(20))
    assert all(open_value("castle color", rng).isalpha() for _ in range(20))
    kinds = {value_kind(open_value("talemo", rng)) for _ in range(20)}
    assert len(kinds) == 1, "a headless made-up name always takes one kind of value"


def test_open_share_mixes_open_data_into_the_training_split_only() -> None:
    from overflow_core.synthetic.facts import COMPOSED_ATTRIBUTES, TRAIN_ATTRIBUTES, Curriculum

    rng = random.Random(8)
    world = FactWorld("train", open_share=0.3)
    facts = [f for _ in range(100) for f in world.sample(rng, Curriculum.key_checking(), n_facts=4).facts]
    listed = sum(f.attr in TRAIN_ATTRIBUTES or f.attr in COMPOSED_ATTRIBUTES for f in facts)
    assert 0.55 < listed / len(facts) < 0.85
    held = FactWorld("heldout", open_share=0.3)
    assert all(f.attr in held.attributes for f in held.sample(rng, Curriculum.key_checking(), n_facts=6).facts)
    one_axis = FactWorld("train", held_out=("attributes",), open_share=1.0)
    assert all(one_axis.attribute(rng) in held.attributes for _ in range(20))
    import pytest

    with pytest.raises(ValueError, match="open_share"):
        FactWorld("train", open_share=1.5)


def test_key_checking_curriculum_asks_about_stated_attributes_of_other_keys_and_near_attributes() -> None:
    """Stage 2's absent questions mostly name an attribute the context states, for a key it does not state it for, or an
    attribute one word away from a stated one; stage 1's never name a near attribute."""
    from overflow_core.synthetic.facts import Curriculum

    def kinds(cur: Curriculum) -> tuple[int, float, float]:
        rng, world = random.Random(4), FactWorld("train")
        absent, same_attr, near = 0, 0, 0
        for _ in range(200):
            sample = world.sample(rng, cur)
            stated = {(f.key, f.attr) for f in sample.facts}
            for q in sample.questions:
                if not q.present:
                    assert (q.key, q.attr) not in stated
                    absent += 1
                    same_attr += any(f.attr == q.attr for f in sample.facts)
                    words = set(q.attr.split())
                    near += any(f.attr != q.attr and len(words & set(f.attr.split())) >= 1 for f in sample.facts)
        return absent, same_attr / absent, near / absent

    absent, same_attr, near = kinds(Curriculum.key_checking())
    assert absent > 600 and same_attr > 0.3 and near > 0.3, (absent, same_attr, near)
    _, stage_one_same, _ = kinds(Curriculum.at(0.9))
    assert stage_one_same < same_attr


def test_near_attributes_differ_in_one_word() -> None:
    from overflow_core.synthetic.facts import near_attribute

    rng = random.Random(2)
    for attr in ("locker number", "PIN", "best friend", "night hangar code", "talemo"):
        for _ in range(30):
            near = near_attribute(rng, attr)
            assert near != attr and set(near.split()) & set(attr.split()), (attr, near)


def test_stage_two_continues_an_export_and_resumes_to_the_same_weights(tmp_path: Any) -> None:
    """Stage 2 starts from a model folder; a run stopped after one step and resumed ends with the weights of a run that
    was never stopped (the data for step s is a function of the seed and s)."""
    import json
    from dataclasses import replace

    import pytest
    import torch
    from safetensors.torch import load_file

    from training.train import TrainConfig, export, train

    sizes = TINY
    init = tmp_path / "stage1"
    _tiny_export(init)
    cfg = TrainConfig(**sizes, steps=2, stage=2, init=str(init), open_share=0.3, warmup=1)  # type: ignore[arg-type]
    train(tmp_path / "whole", cfg)
    train(tmp_path / "split", replace(cfg, steps=1))
    train(tmp_path / "split", cfg)
    whole = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "checkpoint" / "model.safetensors"))
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    start = load_file(str(init / "model.safetensors"))
    assert not torch.equal(whole["backbone.embeddings.weight"], start["backbone.embeddings.weight"])
    settings = json.loads((export(tmp_path / "whole", tmp_path / "out") / "overflow.json").read_text())
    assert settings["trained"]["stage"] == 2 and settings["trained"]["continued_from"] == {"steps": 0, "seed": 0}
    with pytest.raises(ValueError, match="only stage 2"):
        TrainConfig(stage=2)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        train(tmp_path / "bad", replace(cfg, init=str(tmp_path)))


def test_fast_chunk_scan_equals_the_transformers_scan() -> None:
    """``training.ssd.chunk_scan`` against transformers' ``mamba2_chunk_scan``: outputs, final states and every gradient,
    for one and several groups, a length that is and one that is not a whole number of chunks, with and without an
    initial state. Tolerance: float32 sums of up to 150 products in another order, so about 1e-5 of the values' scale."""
    import torch
    from transformers.models.mamba2 import modeling_mamba2

    from training.ssd import chunk_scan

    torch.manual_seed(0)
    for b, length, h, p, g, n, q, init in [
        (2, 150, 4, 8, 1, 16, 32, False),
        (2, 64, 4, 8, 2, 16, 32, True),
        (3, 100, 6, 4, 3, 8, 16, True),
        (1, 5, 2, 4, 1, 4, 8, False),
    ]:
        x = torch.randn(b, length, h, p, requires_grad=True)
        dt = torch.randn(b, length, h, requires_grad=True)
        a = (-torch.rand(h)).requires_grad_()
        bm = torch.randn(b, length, g, n, requires_grad=True)
        cm = torch.randn(b, length, g, n, requires_grad=True)
        d = torch.randn(h, requires_grad=True)
        bias = torch.randn(h, requires_grad=True)
        s0 = torch.randn(b, h, p, n) if init else None
        results = []
        for scan in (modeling_mamba2.mamba2_chunk_scan, chunk_scan):
            y, s = scan(x, dt, a, bm, cm, q, D=d, dt_bias=bias, initial_states=s0, dt_softplus=True, return_final_states=True)
            grads = torch.autograd.grad((y * torch.cos(y)).sum() + s.sin().sum(), [x, dt, a, bm, cm, d, bias])
            results.append((y, s, grads))
        (y1, s1, g1), (y2, s2, g2) = results
        assert y2.shape == y1.shape and s2.shape == s1.shape
        torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(s2, s1, rtol=1e-4, atol=1e-4)
        for mine, theirs in zip(g2, g1, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_fast_chunk_scan_is_installed_only_inside_its_block_and_keeps_the_model_output() -> None:
    """A tiny Mamba-2 gives the same logits with and without the fast scan, and transformers' function is back after."""
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM
    from transformers.models.mamba2 import modeling_mamba2

    from training.ssd import chunk_scan, fast_chunk_scan

    torch.manual_seed(0)
    config = Mamba2Config(
        vocab_size=64, hidden_size=32, state_size=8, num_heads=4, head_dim=16, n_groups=1, num_hidden_layers=2,
        chunk_size=16,
    )  # fmt: skip
    model = Mamba2ForCausalLM(config).train()
    ids = torch.randint(0, 64, (2, 40))
    original = modeling_mamba2.mamba2_chunk_scan
    reference = model(input_ids=ids).logits
    with fast_chunk_scan():
        assert modeling_mamba2.mamba2_chunk_scan is chunk_scan
        fast = model(input_ids=ids).logits
    assert modeling_mamba2.mamba2_chunk_scan is original
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def test_stage_two_settings_override_the_key_checking_curriculum() -> None:
    """``--absent-rate``, ``--hard-negative-rate`` and ``--negative-mix`` change stage 2's curriculum and nothing else;
    they are refused with stage 1 and checked for range; a mix read back from config.json (a list) becomes a tuple."""
    import pytest

    from overflow_core.synthetic.facts import Curriculum
    from training.train import TrainConfig

    base = TrainConfig(stage=2, init="x").curriculum(0.5)
    assert base == Curriculum.key_checking()
    cfg = TrainConfig(stage=2, init="x", absent_rate=0.6, hard_negative_rate=0.7, negative_mix=[0.1, 0.35, 0.7])  # type: ignore[arg-type]
    cur = cfg.curriculum(0.5)
    assert (cur.absent_rate, cur.hard_negative_rate, cur.negative_mix) == (0.6, 0.7, (0.1, 0.35, 0.7))
    assert cur.distractor_mix == base.distractor_mix and cur.max_facts == base.max_facts
    with pytest.raises(ValueError, match="stage-2 settings"):
        TrainConfig(absent_rate=0.5)
    with pytest.raises(ValueError, match="absent_rate"):
        TrainConfig(stage=2, init="x", absent_rate=1.5)
    with pytest.raises(ValueError, match="rising thresholds"):
        TrainConfig(stage=2, init="x", negative_mix=(0.5, 0.2, 0.9))


def test_noise_filler_draws_random_vocabulary_pieces_on_the_training_split_only() -> None:
    """``FactWorld(noise_share=...)`` replaces that share of filler sentences by random vocabulary pieces (so tokens the
    generated prose never uses are trained as inputs) and never spells a special token's text; never on the held-out
    split; refused without pieces."""
    import pytest

    from overflow_core.synthetic.facts import noise_sentence

    pieces = ("(", ")", "%", "q", "Ġfoo", "'")
    r = random.Random(0)
    for _ in range(50):
        text = noise_sentence(r, pieces)
        assert text.endswith(".") and 4 <= len(text) - 1 <= 12 * 4
        assert set(text[:-1]) <= set("()%q'Ġfo ")
    special = ("<|", "end", "|>", "(")
    texts = [noise_sentence(r, special) for _ in range(500)]
    assert not any("<|" in t for t in texts), "a noise sentence must never spell a special token's opening"
    assert any("end" in t for t in texts)
    noisy = FactWorld("train", noise_share=0.5, noise_pieces=pieces)
    fillers = [noisy.filler(random.Random(i)) for i in range(200)]
    share = sum(any(p in f for p in ("(", ")", "%", "Ġfoo")) for f in fillers) / len(fillers)
    assert 0.3 < share < 0.7, f"expected about half of the filler to be noise, got {share}"
    held = FactWorld("heldout", noise_share=0.5, noise_pieces=pieces)
    assert not any("Ġfoo" in held.filler(random.Random(i)) for i in range(200))
    with pytest.raises(ValueError, match="noise_share"):
        FactWorld("train", noise_share=0.2)


def test_free_values_take_any_kind_whatever_the_attribute_name() -> None:
    """``FactWorld(free_value_share=...)`` draws that share of values from every training kind, so a "... code" can hold
    digits or a person; never on the held-out split."""
    import pytest

    from overflow_core.synthetic.facts import free_value

    rng = random.Random(4)
    values = [free_value(rng) for _ in range(2000)]
    assert {value_kind(v) for v in values} == {"digits", "word", "other"}
    free = FactWorld("train", free_value_share=1.0)
    kinds = {value_kind(free.value(rng, "access code")) for _ in range(200)}
    assert kinds == {"digits", "word", "other"}, f"an attribute's name must not fix the kind, got {kinds}"
    fixed = FactWorld("train")
    assert {value_kind(fixed.value(rng, "access code")) for _ in range(200)} == {"other"}
    held = FactWorld("heldout", free_value_share=1.0)
    assert all(held.value(rng, "zip code").isdigit() for _ in range(50))
    with pytest.raises(ValueError, match="free_value_share"):
        FactWorld("train", free_value_share=-0.1)


def test_symbol_attributes_are_random_pieces_without_held_out_words(tmp_path: Any) -> None:
    """``FactWorld(symbol_share=...)`` names that share of attributes with one to three random vocabulary pieces: no
    held-out attribute word, no line break, no special token's text; the name reads back as the same tokens in a fact
    and in a question about it (``symbol_attribute``); refused without pieces."""
    import pytest

    from overflow_core.synthetic.facts import HELDOUT_ATTRIBUTE_WORDS, symbol_attribute
    from training.train import _pieces

    pieces = (" zip", " mentor", "<|", "end", "|>", "\n", "qu", " fl", "ight", "(", " park", "ing", "ary")
    rng = random.Random(2)
    names = [symbol_attribute(rng, pieces) for _ in range(2000)]
    assert len(set(names)) > 100
    for name in names:
        assert name == name.strip() and "\n" not in name and "<|" not in name
        assert not set(name.lower().split()) & HELDOUT_ATTRIBUTE_WORDS, name
    assert any(" " in n for n in names) and any(" " not in n for n in names)
    world = FactWorld("train", symbol_share=0.5, noise_pieces=pieces)
    attrs = [world.attribute(rng) for _ in range(400)]
    assert 0.35 < sum(a in set(names) or "ight" in a or "qu" in a for a in attrs) / len(attrs) < 0.75
    with pytest.raises(ValueError, match="symbol_share"):
        FactWorld("train", symbol_share=0.2)
    held = FactWorld("heldout", symbol_share=1.0, noise_pieces=pieces)
    assert all(a in held.attributes for a in (held.attribute(rng) for _ in range(50)))

    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    real = FactWorld("train", symbol_share=1.0, noise_pieces=_pieces(tokenizer))

    def inside(part: list[int], whole: list[int]) -> bool:
        return any(whole[i : i + len(part)] == part for i in range(len(whole) - len(part) + 1))

    same = 0
    for seed in range(200):
        r = random.Random(seed)
        fact = real.fact(r, "Rosa Vidal", real.attribute(r))
        question = real.question(r, fact.key, fact.attr, fact.value, present=True)
        ids = tokenizer(" " + fact.attr)["input_ids"]
        same += inside(ids, tokenizer(fact.sentence)["input_ids"]) and inside(ids, tokenizer(question.text)["input_ids"])
    # the rest differ only where a sentence's first letter is capitalised, as for any attribute name
    assert same / 200 > 0.85, f"a symbol name must read as the same tokens in fact and question, got {same / 200}"


def test_padding_batches_to_a_multiple_adds_only_weightless_pads() -> None:
    """``_batch(..., multiple)`` draws the same rows and only widens the batch with pads of weight 0."""
    import torch
    from transformers import AutoTokenizer

    from overflow_core.engine import DEFAULT_MODEL_DIR
    from training.train import PAD_MULTIPLE, TrainConfig, _batch

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    cfg, world = TrainConfig(batch_size=4), FactWorld("train")
    ids, weights = _batch(tok, world, random.Random(3), cfg, 0.9)
    padded_ids, padded_weights = _batch(tok, world, random.Random(3), cfg, 0.9, PAD_MULTIPLE)
    width = ids.shape[1]
    assert padded_ids.shape[1] % PAD_MULTIPLE == 0 and width <= padded_ids.shape[1] < width + PAD_MULTIPLE
    assert torch.equal(padded_ids[:, :width], ids) and torch.equal(padded_weights[:, :width], weights)
    assert (padded_ids[:, width:] == tok.pad_token_id).all() and (padded_weights[:, width:] == 0).all()


def test_compiled_training_takes_the_steps_of_eager_training(tmp_path: Any) -> None:
    """``--compile`` (torch.compile, batches padded to a whole number of chunks) trains to the weights eager training
    reaches from the same start and seed, to float32 rounding (amplified by AdamW's early steps, whose size barely depends
    on the gradient's): the same data, the same loss, the same updates."""

    import pytest
    import torch
    from safetensors.torch import load_file

    from training.train import TrainConfig, train

    sizes = TINY
    init = tmp_path / "init"
    _tiny_export(init)
    for name, compiled in (("eager", False), ("compiled", True)):
        cfg = TrainConfig(**sizes, steps=2, stage=2, init=str(init), warmup=1, compile=compiled)  # type: ignore[arg-type]
        train(tmp_path / name, cfg)
    eager = load_file(str(tmp_path / "eager" / "checkpoint" / "model.safetensors"))
    compiled_weights = load_file(str(tmp_path / "compiled" / "checkpoint" / "model.safetensors"))
    start = load_file(str(init / "model.safetensors"))
    assert eager.keys() == compiled_weights.keys()
    for k in eager:  # AdamW's first steps are about lr (2.5e-3) a weight; rounding moves a rare one by ~1e-5
        torch.testing.assert_close(compiled_weights[k], eager[k], rtol=1e-3, atol=1e-4)
    assert not torch.equal(eager["backbone.embeddings.weight"], start["backbone.embeddings.weight"])  # steps were taken
    with pytest.raises(ValueError, match="fast scan"):
        TrainConfig(compile=True, bf16=True, fast_scan=False)


def test_a_non_finite_step_is_skipped_and_never_checkpointed(tmp_path: Any, monkeypatch: Any) -> None:
    """A batch whose loss is NaN leaves the weights as they were (its update is skipped and logged), and a model with
    non-finite weights is refused at checkpoint time, with the last good checkpoint kept."""
    import json

    import pytest
    import torch
    from safetensors.torch import load_file

    from training import train as train_module
    from training.train import TrainConfig, _save_checkpoint, train

    sizes = TINY
    init = tmp_path / "init"
    model = _tiny_export(init)
    real = train_module.weighted_loss
    monkeypatch.setattr(train_module, "weighted_loss", lambda *a: real(*a) * float("nan"))
    run = tmp_path / "run"
    train(run, TrainConfig(**sizes, steps=1, stage=2, init=str(init), warmup=1))  # type: ignore[arg-type]
    after = load_file(str(run / "checkpoint" / "model.safetensors"))
    start = load_file(str(init / "model.safetensors"))
    assert all(torch.equal(after[k], start[k]) for k in after), "a NaN step must not move any weight"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r.get("skipped") == "non-finite loss or gradient norm" and r["step"] == 1 for r in log)

    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(FloatingPointError, match="step 7: expected finite weights"):
        _save_checkpoint(run, model, opt, 7, 1.0)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 1
    assert not (run / "checkpoint.tmp").exists()


def test_model_sizes_come_from_the_cli_or_the_init_model_and_a_mismatch_is_refused(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """``--hidden-size`` / ``--layers`` size a stage-1 model; stage 2 takes its sizes from ``--init`` unless told
    otherwise; a stage 2 whose sizes do not fit the init model, or a resume with other sizes than its checkpoint's, is
    refused with the sizes named (before any file of the run is touched); impossible sizes are refused."""
    from dataclasses import replace

    import pytest

    from training import train as train_module
    from training.train import TrainConfig, init_architecture, main, train

    init = tmp_path / "init"
    _tiny_export(init)
    assert init_architecture(init) == {"hidden_size": 32, "layers": 1, "state_size": 8, "head_dim": 16}
    seen: list[TrainConfig] = []
    monkeypatch.setattr(train_module, "train", lambda run, cfg, **_: seen.append(cfg))
    main(["--run", str(tmp_path / "a"), "--stage", "2", "--init", str(init)])
    main(["--run", str(tmp_path / "b"), "--hidden-size", "384", "--layers", "6"])
    assert (seen[0].hidden_size, seen[0].layers) == (32, 1)
    assert (seen[1].hidden_size, seen[1].layers) == (384, 6) and seen[1].stage == 1
    monkeypatch.undo()

    cfg = TrainConfig(**TINY, steps=1, stage=2, init=str(init), warmup=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"--init .*hidden_size 32 \(now 64\)"):
        train(tmp_path / "wide", replace(cfg, hidden_size=64))
    assert not (tmp_path / "wide").exists()
    run = tmp_path / "run"
    train(run, cfg)
    stored = (run / "config.json").read_text()
    with pytest.raises(ValueError, match=r"the checkpoint in .*layers 1 \(now 2\)"):
        train(run, replace(cfg, layers=2, init="", stage=1))
    assert (run / "config.json").read_text() == stored, "a refused resume must leave the run as it was"
    with pytest.raises(ValueError, match=r"init .*config\.json"):
        init_architecture(tmp_path)
    with pytest.raises(ValueError, match="inner width"):
        TrainConfig(hidden_size=40, head_dim=32)
    with pytest.raises(ValueError, match="layers: expected a positive size, got 0"):
        main(["--run", str(tmp_path / "c"), "--layers", "0"])


def test_time_training_step_builds_the_asked_sizes() -> None:
    """``ssd.time_training_step`` times the width and depth it is given (a tiny one here), on every scan variant."""
    from training.ssd import time_training_step

    timings = time_training_step(steps=1, batch=1, length=64, hidden_size=32, layers=1)
    assert set(timings) == {"transformers", "chunk_scan", "chunk_scan+bf16"} and all(t > 0 for t in timings.values())


def test_filler_probe_variants_change_the_words_or_the_order_of_the_filler_only() -> None:
    import re

    from overflow_core.synthetic.facts import TRAIN_FILLERS, Curriculum
    from training.evaluate import HELDOUT_FILLER_WORDS, shuffled_words, with_new_words

    # the premise: no training text of either stage uses a word of HELDOUT_FILLER_WORDS
    seen: set[str] = set()
    rng = random.Random(12)
    for i in range(600):
        stage1 = FactWorld("train").sample(rng, Curriculum.at(i / 600))
        stage2 = FactWorld("train", open_share=0.3).sample(rng, Curriculum.key_checking(i / 600))
        for sample in (stage1, stage2):
            text = " ".join([sample.context, *(q.text for q in sample.questions)])
            seen |= set(re.findall(r"[a-z]+", text.lower()))
    assert not set(HELDOUT_FILLER_WORDS) & seen
    reordered = 0
    for k in range(300):  # the words of the sentence the same draw gives, in another order
        filler = TRAIN_FILLERS[k % len(TRAIN_FILLERS)]
        sentence, mixed = filler(random.Random(k)), shuffled_words(filler)(random.Random(k))
        assert sorted(mixed.lower().rstrip(".").split()) == sorted(sentence.lower().rstrip(".").split())
        assert not mixed[0].islower() and mixed.endswith(".")
        reordered += mixed.lower() != sentence.lower()
    assert reordered > 250
    for share in (0.25, 0.5, 0.75):
        words = [w.lower() for _ in range(400) for w in with_new_words(share)(rng).rstrip(".").split()]
        new = sum(w in HELDOUT_FILLER_WORDS for w in words) / len(words)
        assert abs(new - share) < 0.05, (share, new)


def test_filler_probe_asks_the_same_facts_whatever_the_filler(engine: Any) -> None:
    from training.evaluate import FILLER_VARIANTS, filler_probe, filler_probe_question, filler_world

    for i in range(20):
        drawn = [filler_probe_question(filler_world(fillers), i) for fillers in FILLER_VARIANTS.values()]
        assert len({q.text for _, _, q in drawn}) == 1 and len({f.value for _, f, _ in drawn}) == 1
        assert all(f.sentence in context for context, f, _ in drawn)
        assert len({context for context, _, _ in drawn}) == len(FILLER_VARIANTS), "only the filler may differ"
    probe = filler_probe(engine("mamba2"), 2)
    assert set(probe) == set(FILLER_VARIANTS)
    assert all(row["n"] == 2 and 0.0 <= row["em"] <= 1.0 and 0.0 <= row["not_found"] <= 1.0 for row in probe.values())
    assert filler_probe(engine("mamba2"), 0) == {}


def test_composed_recipe_resumes_exactly_from_a_snapshot_and_checks_both_families(tmp_path: Any) -> None:
    """The skill recipe (``--data composed``): a run stopped after two steps, snapshotted, and resumed elsewhere from the
    snapshot ends with the weights of a run never stopped; the log keeps each step once; the in-training checks report
    the seen and held-out families' present, hard-negative and per-chunk figures."""
    import json
    import shutil
    from dataclasses import replace

    import pytest
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from overflow_core.synthetic.text import SourceMissingError, training_text
    from overflow_core.synthetic.tokenizer import train_tokenizer
    from training.skill import composed_corpus, skill_checks
    from training.train import TrainConfig, build_model, encode_sample, snapshot, train

    try:
        training_text()
    except SourceMissingError as e:
        pytest.skip(f"training text not installed: {e}")
    tok = train_tokenizer(tmp_path / "tok", vocab_size=2048, texts=composed_corpus(20, 1))
    cfg = TrainConfig(  # type: ignore[arg-type]
        **{**TINY, "checkpoint_every": 2}, steps=4, curriculum_steps=4, warmup=1, data="composed", schedule="wsd"
    )
    for name in ("whole", "split"):
        shutil.copytree(tok, tmp_path / name / "tokenizer")
    train(tmp_path / "whole", cfg)
    train(tmp_path / "split", replace(cfg, steps=2))
    snap = snapshot(tmp_path / "split", tmp_path / "snap")
    train(tmp_path / "resumed", cfg, resume_from=snap)
    whole = load_file(str(tmp_path / "whole" / "checkpoint" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    first = json.loads((tmp_path / "snap" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and state["cpu_s"] > first["cpu_s"] > 0, "CPU time adds up over resumes"
    with pytest.raises(ValueError, match="composed"):
        TrainConfig(data="composed", stage=2, init="x")

    tokenizer = AutoTokenizer.from_pretrained(str(tok))
    checks = skill_checks(build_model(cfg, tokenizer), tokenizer, encode_sample, seed=0, n=2, batch=2)
    assert set(checks) == {f"{f}/{k}" for f in ("seen", "heldout") for k in ("present", "hard", "chunk")}


def test_wsd_schedule_holds_the_peak_then_decays_over_the_last_share() -> None:
    from training.train import TrainConfig, _lr

    cfg = TrainConfig(steps=1000, warmup=100, lr=1e-3, min_lr_ratio=0.1, schedule="wsd", decay_share=0.2)
    assert _lr(cfg, 0) == 1e-5 and _lr(cfg, 100) == _lr(cfg, 799) == 1e-3
    assert abs(_lr(cfg, 900) - 0.55e-3) < 1e-9 and abs(_lr(cfg, 1000) - 1e-4) < 1e-12
    longer = TrainConfig(steps=2000, warmup=100, lr=1e-3, schedule="wsd", decay_share=0.2)
    assert _lr(longer, 900) == 1e-3, "extending a wsd run only moves its decay"


def test_a_resumed_run_drops_the_log_lines_after_its_checkpoint(tmp_path: Any) -> None:
    """Steps after the last checkpoint run again on resume, so their log lines go (a line cut by a kill too)."""
    import json

    from training.train import _truncate_log

    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (10, 20, 30)] + [json.dumps({"step": 20, "eval": {}})]
    log.write_text("\n".join(lines) + '\n{"step": 4')
    _truncate_log(log, 20)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [10, 20, 20]


def test_sigterm_stops_a_run_after_its_step_with_a_checkpoint(tmp_path: Any, monkeypatch: Any) -> None:
    """``kill <pid>`` (SIGTERM) lets the step in progress finish, checkpoints it and returns: nothing is lost."""
    import json
    import os
    import signal

    from training import train as train_module
    from training.train import TrainConfig, train

    init = tmp_path / "init"
    _tiny_export(init)
    real_lr = train_module._lr

    def lr_then_kill(cfg: Any, step: int) -> float:
        if step == 1:  # during the second step
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(cfg, step)

    monkeypatch.setattr(train_module, "_lr", lr_then_kill)
    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    cfg = TrainConfig(**{**TINY, "checkpoint_every": 100}, steps=5, stage=2, init=str(init), warmup=1)  # type: ignore[arg-type]
    train(run, cfg)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
    assert "SIGTERM" in (run / "log.jsonl").read_text().splitlines()[-1]
    assert signal.getsignal(signal.SIGTERM) is before, "the handler is put back"


def test_evaluate_refuses_a_missing_model_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/model.md once named a folder a clone does not have: it became a hub download and a traceback."""
    from training.evaluate import main

    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "v10-export"), "--quick"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("v10-export' is not one"), err
