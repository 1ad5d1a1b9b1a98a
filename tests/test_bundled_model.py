"""The shipped model folder: loadable offline with no arguments, small, safetensors only, its settings used by the engine;
and the evaluation and demo commands run end to end on a small sample."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from overflow_core import OPRM
from overflow_core.engine import DEFAULT_MODEL_DIR
from overflow_core.synthetic.facts import HELDOUT_ATTRIBUTES

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "model.safetensors").exists(), reason="the bundled model folder is not in this checkout"
)


@pytest.fixture(scope="module")
def bundled() -> OPRM:
    return OPRM.from_pretrained()


def test_artifact_is_small_safetensors_only_and_loads_with_auto_classes() -> None:
    files = sorted(p.name for p in DEFAULT_MODEL_DIR.iterdir())
    assert "model.safetensors" in files and "overflow.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], "no pickles in the artifact"
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 25 * 2**20, f"the bundled model must stay within 25 MB, is {size / 2**20:.1f} MiB"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR), local_files_only=True)
    assert tok.chat_template and tok.eos_token == "<|end|>"


def test_engine_uses_the_folder_settings(bundled: OPRM) -> None:
    settings = json.loads((DEFAULT_MODEL_DIR / "overflow.json").read_text())
    assert bundled.config.chunk_tokens == settings["chunk_tokens"]
    assert bundled.template.to_dict() == settings["template"]
    assert bundled.backend.name == "mamba2"
    nf = bundled.tokenizer.decode([next(iter(bundled.idk_ids))]).strip()
    assert settings["not_found"].startswith(nf), "the IDK ids must start the not-found phrase"


def test_abstains_on_a_chunk_without_the_key(bundled: OPRM) -> None:
    text = "The morning was cold, and the streets stayed empty. On Monday, the museum announced a new exhibit."
    answer = bundled.answer("What is the locker number of Nadia Okafor?", [text])
    assert answer.not_found, f"a chunk of pure filler must abstain, got {answer.text!r}"


def test_evaluation_command_runs_on_a_small_sample(tmp_path: Path, capsys: Any) -> None:
    from training.evaluate import main

    args = ["--samples", "1", "--absent", "1", "--lengths", "256,1024", "--probe", "3", "--axes", "2"]
    args += ["--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "model_eval.json").read_text())
    assert {(r["split"], r["tokens"]) for r in result["rows"]} == {
        ("seen", 256),
        ("seen", 1024),
        ("heldout", 256),
        ("heldout", 1024),
    }
    for row in result["rows"]:
        kinds = row["oprm_em_by_kind"]
        assert sum(k["n"] for k in kinds.values()) == row["samples"] and set(kinds) <= {"digits", "word", "other"}
        assert row["oprm_false_nf"] is not None and 0 <= row["oprm_false_nf"] <= 1
        assert set(row["hit_by_criterion"]) == {"entropy", "max_prob", "not_found_prob"}
        assert row["hit_by_criterion"]["entropy"] == row["hit"], "the engine's own pick, found again from its scores"
        by_kind = row["chunk_abstention_by_kind"]
        assert set(by_kind) <= {"neither", "near attribute", "attribute", "key", "key+attribute"}
        rates = [k["abstention"] * k["n"] for k in by_kind.values()]
        assert sum(rates) / sum(k["n"] for k in by_kind.values()) == pytest.approx(row["chunk_abstention"], abs=1e-4)
    assert set(result["first_token"]) == {"seen", "heldout"}
    assert all(sum(k["n"] for k in probe.values()) == 3 for probe in result["first_token"].values())
    axes = result["heldout_axes"]
    assert set(axes) == {"none", "attributes", "facts", "questions", "filler"}
    assert all(a["n"] == 2 and 0 <= a["em"] <= 1 for a in axes.values())
    by_attribute = axes["attributes"]["by_attribute"]
    assert sum(a["n"] for a in by_attribute.values()) == 2
    assert set(by_attribute) <= set(HELDOUT_ATTRIBUTES)
    em = sum(a["em"] * a["n"] for a in by_attribute.values()) / 2
    assert em == pytest.approx(axes["attributes"]["em"], abs=1e-4)
    assert (tmp_path / "model_accuracy.png").stat().st_size > 0
    assert result["chunk_tokens"] == result["train_tokens"] == 256


def test_eval_chunk_tokens_changes_the_chunks_and_keeps_the_lengths(tmp_path: Path) -> None:
    """``--chunk-tokens 128`` cuts a 256-token haystack into about twice the chunks; the lengths stay the same.
    ``--criterion`` reaches the engine: its picks are the ones ``hit_by_criterion`` finds for that criterion."""
    from training.evaluate import main

    args = ["--samples", "1", "--absent", "1", "--lengths", "256", "--probe", "0", "--axes", "0", "--out", str(tmp_path)]
    assert main([*args, "--chunk-tokens", "128", "--criterion", "not_found_prob"]) == 0
    result = json.loads((tmp_path / "model_eval.json").read_text())
    assert (result["chunk_tokens"], result["train_tokens"]) == (128, 256)
    assert {r["tokens"] for r in result["rows"]} == {256} and all(r["chunks"] >= 2 for r in result["rows"])
    assert result["criterion"] == "not_found_prob"
    assert all(r["hit_by_criterion"]["not_found_prob"] == r["hit"] for r in result["rows"])


def test_demo_runs(capsys: Any) -> None:
    from overflow_core.cli import main

    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "whole-context inference:" in out and "OPRM:" in out
    totals = re.search(r"whole-context inference: (\d+)/(\d+) right; OPRM: (\d+)/\2 right", out)
    stated = re.search(r"facts the corpus states: whole-context (\d+)/(\d+), OPRM (\d+)/\2;", out)
    assert totals and stated, out[-400:]
    v, n, o = (int(totals[i]) for i in (1, 2, 3))
    sv, ns, so = (int(stated[i]) for i in (1, 2, 3))
    assert out.count("\nQ: ") == n and 0 < ns < n and sv <= v and so <= o  # the breakdown is a part of the total


def test_evaluation_reports_the_held_out_family_beside_the_seen_splits(tmp_path: Path) -> None:
    """``--family all``: the fact world's two splits and the skill recipe's two (the compositional generator and the
    held-out format family, issue #23) at every length, each row with its own questions."""
    from overflow_core.synthetic.text import SourceMissingError, training_text
    from training.evaluate import main

    try:
        training_text()
    except SourceMissingError as e:
        pytest.skip(f"training text not installed: {e}")
    args = ["--samples", "1", "--absent", "1", "--lengths", "256", "--probe", "1", "--axes", "0", "--family", "all"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "model_eval.json").read_text())
    splits = ["facts-seen", "facts-heldout", "skill-seen", "skill-heldout"]
    assert [r["split"] for r in result["rows"]] == splits and result["family"] == "all"
    assert all(r["samples"] == 1 and r["absent_samples"] == 1 for r in result["rows"])
    assert list(result["first_token"]) == splits


def test_the_next_demo_corpus_states_each_fact_once_in_phrasings_no_generator_uses(tmp_path: Path) -> None:
    """``python -m overflow_core.demo --build-plain DIR``: six stated facts, each value in its hand-written sentence;
    the two absent questions ask about nothing the corpus states; no question or needle sentence fits a template of
    the fact world or of the held-out family."""
    from overflow_core.demo import load_corpus
    from overflow_core.demo.plain import NEEDLES, build_plain_corpus
    from overflow_core.synthetic.facts import HELDOUT_FACT_CORES, HELDOUT_QUESTIONS, TRAIN_FACT_CORES, TRAIN_QUESTIONS
    from overflow_core.synthetic.heldout import FACT_TEMPLATES, QUESTION_TEMPLATES

    docs, questions = load_corpus(build_plain_corpus(tmp_path / "plain"))
    text = "\n".join(d.text for d in docs)
    assert len(docs) == 4 and len(questions) == 8
    assert [q["answer"] for q in questions].count("not found") == 2
    for key, attr, value, sentence, _ in NEEDLES:
        assert value in sentence and text.count(sentence.rstrip(".")) == 1 and f"the {attr} of {key} is" not in text
    assert "Nadia Ellis" not in text and "phone number" not in text
    old = [t.replace("{key}", "{K}").replace("{attr}", "{A}").replace("{value}", "{V}") for t in
           TRAIN_FACT_CORES + HELDOUT_FACT_CORES + TRAIN_QUESTIONS + HELDOUT_QUESTIONS]  # fmt: skip
    for template in old + list(FACT_TEMPLATES + QUESTION_TEMPLATES):
        for key, attr, value, sentence, question in NEEDLES:
            # the template filled with this fact's own key and attribute (case aside): would it give these words?
            filled = re.escape(template).replace(r"\{K\}", re.escape(key)).replace(r"\{A\}", re.escape(attr))
            pattern = re.compile(filled.replace(r"\{V\}", re.escape(value)), re.IGNORECASE)
            assert not pattern.fullmatch(sentence) and not pattern.fullmatch(question), (template, question)
