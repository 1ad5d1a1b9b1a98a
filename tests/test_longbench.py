"""The LongBench runner: files, prompts, not-found mapping, and the whole pipeline on the hand-written fixtures in
tests/fixtures/longbench (LongBench's file formats, no LongBench data) with the bundled model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core.errors import ConfigError, InputError
from overflow_core.longbench import cli, metrics
from overflow_core.longbench.data import Item, find_sources, read_items, read_v1, read_v2
from overflow_core.longbench.datasets import DATASETS, LONGBENCH_E
from overflow_core.longbench.prompts import question_for, tail_text, template_for, v2_template
from overflow_core.longbench.runner import Runner, RunSettings, load_records
from overflow_core.types import Answer, Timings, Usage

FIXTURES = Path(__file__).parent / "fixtures" / "longbench"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """The bundled model is tiny: one thread avoids oversubscribing a shared CPU (measured 10x faster under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(one_thread: None) -> Any:
    from overflow_core import OPRM

    return OPRM.from_pretrained(chunk_tokens=96)


# -- files ------------------------------------------------------------------------------------------------------------------
def test_fixtures_cover_every_dataset() -> None:
    names = {s.name for s in find_sources(FIXTURES)}
    assert names == {*DATASETS, *(f"{n}_e" for n in LONGBENCH_E), "v2"}
    for src in find_sources(FIXTURES):
        items = list(read_items(src))
        assert items and all(i.answers for i in items), src.name


def test_presets_and_unknown_names() -> None:
    assert [s.name for s in find_sources(FIXTURES, ["paper"])][:3] == ["narrativeqa", "qasper", "multifieldqa_en"]
    assert len(find_sources(FIXTURES, ["e"])) == 13
    assert [s.name for s in find_sources(FIXTURES, ["hotpotqa", "v2"])] == ["hotpotqa", "v2"]
    with pytest.raises(ConfigError, match="unknown hotpot"):
        find_sources(FIXTURES, ["hotpot"])


def test_bad_files_fail_with_one_line_naming_the_place(tmp_path: Path) -> None:
    bad = tmp_path / "hotpotqa.jsonl"
    bad.write_text('{"input": "q", "context": "c", "answers": ["a"], "_id": "1"}\n{"input": "q", "context": "c"}\n')
    with pytest.raises(InputError, match=r"hotpotqa.jsonl: line 2: expected a field 'answers'"):
        list(read_v1(bad))
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="line 1: expected one JSON object per line"):
        list(read_v1(bad))
    v2 = tmp_path / "data.json"
    v2.write_text(json.dumps([{"_id": "x", "question": "q", "context": "c", "answer": "E",
                               **{f"choice_{c}": c for c in "ABCD"}}]))
    with pytest.raises(InputError, match="item 0: expected 'answer' to be one of A, B, C, D, got 'E'"):
        list(read_v2(v2))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="found none"):
        find_sources(empty)
    with pytest.raises(InputError, match="is not a folder"):
        find_sources(tmp_path / "missing")


# -- prompts ----------------------------------------------------------------------------------------------------------------
def _item(spec_name: str, inp: str = "INPUT") -> Item:
    return Item(suite="v1", dataset=spec_name, id="x", input=inp, context="CTX", answers=("a",))


@pytest.mark.parametrize("name", list(DATASETS))
def test_plain_template_is_longbench_prompt(name: str) -> None:
    """prefix + chunk + infix + question + suffix reproduces LongBench's prompt, for every dataset."""
    spec = DATASETS[name]
    t = template_for(spec, tokenizer=None, idk=False, not_found="Error", chat=False)
    rendered = t.render("CTX", question_for(spec, _item(name)))
    expected = spec.prompt.replace("{context}", "CTX").replace("{input}", "INPUT")
    if name == "lcc":  # the newline the stripped code ended with goes back before the instruction
        expected = "Please complete the code given below. \nCTX\nNext line of code:\n"
    if name == "repobench-p":
        expected = "Please complete the code given below. \nCTX\nINPUT\nNext line of code:\n"
    assert rendered == expected


def test_not_found_sentence_only_in_oprm_and_where_the_paper_puts_it() -> None:
    hot = DATASETS["hotpotqa"]
    oprm = template_for(hot, None, idk=True, not_found="Error", chat=False)
    vanilla = template_for(hot, None, idk=False, not_found="Error", chat=False)
    sentence = ' If the answer does not exist in the passages, return "Error".'
    assert oprm.infix.endswith("do not output any other words." + sentence + "\n\nQuestion: ")
    assert "Error" not in vanilla.render("c", "q")
    qasper = template_for(DATASETS["qasper"], None, idk=True, not_found="Error", chat=False).render("c", "q")
    assert "unanswerable" not in qasper and qasper.count('"Error"') == 4  # LongBench's four "unanswerable"s
    gov = DATASETS["gov_report"]  # summaries get no sentence
    assert template_for(gov, None, idk=True, not_found="Error", chat=False) == template_for(
        gov, None, idk=False, not_found="Error", chat=False
    )
    v2 = v2_template(None, idk=True, not_found="Error", chat=False)
    assert v2.suffix.endswith('(insert answer here)". If the text does not hold the answer, return "Error".')


def test_chat_template_wraps_the_prompt(engine: Any) -> None:
    t = template_for(DATASETS["narrativeqa"], engine.tokenizer, idk=False, not_found="x", chat=True)
    assert t.prefix.startswith("<|user|>You are given a story") and t.suffix.endswith("Answer:<|end|><|assistant|>")
    plain = template_for(DATASETS["narrativeqa"], engine.tokenizer, idk=False, not_found="x", chat=False)
    assert plain.prefix.startswith("You are given a story")


def test_rwkv_instruction_framing_without_chat_template() -> None:
    from overflow_core.longbench.prompts import instruction_framing
    from overflow_core.prompting import PromptTemplate

    rwkv = PromptTemplate(prefix="Instruction: x\n\nInput: ", infix="\n\nQuestion: ", suffix="\n\nResponse:")
    assert instruction_framing(rwkv) and not instruction_framing(PromptTemplate("<|user|>", "q", "<|assistant|>"))
    t = template_for(DATASETS["hotpotqa"], None, idk=False, not_found="Error", chat=True, instruction=True)
    assert t.prefix.startswith("Instruction: Answer the question based on the given passages.")
    assert t.prefix.endswith("The following are given passages.\n\n\nInput: ") and t.suffix == "\nAnswer:\n\nResponse:"


def test_tail_text_keeps_the_last_tokens(engine: Any) -> None:
    from overflow_core.chunking import encode_text

    ctx = next(read_v1(FIXTURES / "lcc.jsonl")).context
    total = len(encode_text(engine.tokenizer, ctx))
    for n in (8, 20, 40):
        tail = tail_text(engine.tokenizer, ctx, n)
        assert ctx.endswith(tail) and n - 3 <= len(encode_text(engine.tokenizer, tail)) <= n < total
    assert tail_text(engine.tokenizer, ctx, total + 5) == ctx


# -- runner -------------------------------------------------------------------------------------------------------------
def _not_found_answer(*args: Any, **kwargs: Any) -> Answer:
    return Answer(text="not found", not_found=True, mode="oprm", chunk=None, ranking=None, timings=Timings(),
                  usage=Usage())


def test_not_found_maps_to_each_datasets_convention(engine: Any, tmp_path: Path) -> None:
    """qasper's "unanswerable" items score 1 when every chunk abstains; elsewhere an abstention is an empty prediction."""
    runner = Runner(engine, RunSettings(chunk_tokens=(96,)), tmp_path / "r.jsonl")
    qasper_unanswerable = list(read_v1(FIXTURES / "qasper.jsonl"))[1]
    assert qasper_unanswerable.answers == ("unanswerable",)
    hotpot = next(read_v1(FIXTURES / "hotpotqa.jsonl"))
    for name in ("qasper", "hotpotqa"):
        for mode, chunk in (("oprm", 96), ("vanilla", None)):
            runner.engine(DATASETS[name], mode, chunk).answer = _not_found_answer
    rec = runner.answer_item(qasper_unanswerable, "oprm", 96)
    assert (rec["prediction"], rec["not_found"], rec["score"]) == ("unanswerable", True, 1.0)
    rec = runner.answer_item(qasper_unanswerable, "vanilla", None)  # no sentence in vanilla: the text is scored as is
    assert (rec["prediction"], rec["not_found"], rec["score"]) == ("not found", False, 0.0)
    rec = runner.answer_item(hotpot, "oprm", 96)
    assert (rec["prediction"], rec["not_found"], rec["score"]) == ("", True, 0.0)


def test_engines_get_the_dataset_prompt_and_budget(engine: Any, tmp_path: Path) -> None:
    runner = Runner(engine, RunSettings(chunk_tokens=(96,), budget="paper"), tmp_path / "r.jsonl")
    hot_oprm = runner.engine(DATASETS["hotpotqa"], "oprm", 96)
    hot_vanilla = runner.engine(DATASETS["hotpotqa"], "vanilla", None)
    assert 'return "not found"' in hot_oprm.template.infix and hot_oprm.config.idk_filter
    assert "not found" not in hot_vanilla.template.infix and not hot_vanilla.config.idk_filter
    assert hot_oprm.config.chunk_tokens == 96 and hot_oprm.config.max_new_tokens == 20  # the paper's QA budget
    gov = runner.engine(DATASETS["gov_report"], "oprm", 96)
    assert not gov.config.idk_filter and gov.config.max_new_tokens == 500


# -- the whole pipeline -----------------------------------------------------------------------------------------------------
def _main(out: Path, *extra: str) -> int:
    return cli.main(["--data", str(FIXTURES), "--out", str(out), "--chunk-tokens", "96", "--max-new-tokens", "4",
                     "--no-progress", *extra])


@pytest.fixture(scope="module")
def full_run(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("longbench") / "results.jsonl"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = _main(out, "--limit", "1")
    return {"code": code, "out": out, "stdout": buf.getvalue()}


def test_pipeline_runs_every_dataset_and_prints_the_table(full_run: dict[str, Any]) -> None:
    assert full_run["code"] == 0
    records = load_records(full_run["out"])
    assert len(records) == 2 * (21 + 13 + 1)  # one item of every file, vanilla and oprm@96
    assert not [r for r in records if r["error"]]
    stdout = full_run["stdout"]
    for needle in ("### LongBench", "**Avg (en)**", "### LongBench-E", "### LongBench v2", "Δ oprm@96", "gov_report (n=1)"):
        assert needle in stdout
    out = full_run["out"]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["runs"] == ["vanilla", "oprm@96"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert out.with_suffix(".md").read_text().startswith("Model `overflow-default`")


def test_pipeline_scores_are_the_metrics_of_the_predictions(full_run: dict[str, Any]) -> None:
    records = load_records(full_run["out"])
    summary = json.loads(full_run["out"].with_suffix(".summary.json").read_text())
    for rec in records:
        if rec["suite"] == "v2":
            assert rec["score"] == float(metrics.extract_choice(rec["prediction"]) == rec["answers"][0])
            continue
        spec = DATASETS[rec["dataset"]]
        item = next(i for i in read_v1(FIXTURES / f"{spec.name}{'_e' if rec['suite'] == 'e' else ''}.jsonl")
                    if i.id == rec["id"])
        expected = metrics.score(spec.metric, rec["prediction"], item.answers, item.all_classes,
                                 first_line=spec.first_line)
        assert rec["score"] == pytest.approx(expected)
        if rec["suite"] == "v1":
            assert summary["v1"]["datasets"][rec["dataset"]][rec["run"]]["score"] == round(100 * rec["score"], 2)


def test_pipeline_follows_the_papers_handling(full_run: dict[str, Any]) -> None:
    by = {r["key"]: r for r in load_records(full_run["out"])}
    assert by["v1/lcc/lcc-fx-0/oprm@96"]["chunks"] == 1  # code completion: only the last chunk
    assert by["v1/lcc/lcc-fx-0/oprm@96"]["prompt_tokens"] < by["v1/lcc/lcc-fx-0/vanilla"]["prompt_tokens"]
    gov = by["v1/gov_report/gov_report-fx-0/oprm@96"]
    assert gov["chunks"] > 1 and gov["parts"] == gov["chunks"]  # every chunk decoded and joined
    hot = by["v1/hotpotqa/hotpotqa-fx-0/oprm@96"]
    assert hot["chunks"] > 1 and hot["generated_tokens"] <= 4  # one chunk decoded
    assert by["v1/hotpotqa/hotpotqa-fx-0/vanilla"]["chunks"] is None


def test_resume_skips_scored_items_and_refuses_other_settings(
    full_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from overflow_core.engine import OPRM

    out = full_run["out"]
    before = out.read_text()

    def never(*args: Any, **kwargs: Any) -> Answer:
        raise AssertionError("an item already in --out was answered again")

    monkeypatch.setattr(OPRM, "answer", never)
    assert _main(out, "--limit", "1") == 0
    assert out.read_text() == before
    capsys.readouterr()
    assert _main(out, "--limit", "1", "--budget", "paper") == 2
    err = capsys.readouterr().err
    assert "holds results made with other settings (budget 'longbench' here vs 'paper' now)" in err
    assert out.read_text() == before  # nothing lost or overwritten


def test_limit_extends_a_run_and_length_buckets_fill(one_thread: None, tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    assert _main(out, "--datasets", "hotpotqa_e,lcc_e", "--limit", "2", "--mode", "oprm") == 0
    assert len(load_records(out)) == 2 * 1 * 2
    assert _main(out, "--datasets", "hotpotqa_e,lcc_e", "--limit", "3", "--mode", "oprm", "--no-plot") == 0
    assert len(load_records(out)) == 2 * 1 * 3  # only the third items were added
    e = json.loads(out.with_suffix(".summary.json").read_text())["e"]
    assert all(e["datasets"]["hotpotqa"]["oprm@96"][b] is not None for b in ("0-4k", "4-8k", "8k+"))
    # a crash in the middle of writing the last record: that record is redone, the file stays one record a line
    whole = out.read_text()
    last = whole.splitlines()[-1]
    out.write_text(whole[: len(whole) - len(last) // 2 - 1])
    assert len(load_records(out)) == 2 * 1 * 3 - 1
    assert _main(out, "--datasets", "hotpotqa_e,lcc_e", "--limit", "3", "--mode", "oprm", "--no-plot") == 0
    records = load_records(out)
    assert len(records) == 2 * 1 * 3 and len({r["key"] for r in records}) == 6
    assert json.loads(out.read_text().splitlines()[-1])["key"] == json.loads(last)["key"]


def test_cli_mistakes_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["--data", str(FIXTURES), "--out", str(tmp_path / "o.jsonl"), "--datasets", "hotpot"]) == 2
    assert "unknown hotpot" in capsys.readouterr().err
    assert cli.main(["--data", str(FIXTURES), "--out", str(tmp_path / "o.jsonl"), "--mode", "fast"]) == 2
    assert "--mode: expected oprm and/or vanilla" in capsys.readouterr().err
    assert cli.main(["--data", str(FIXTURES), "--out", str(tmp_path)]) == 2
    assert "got a folder" in capsys.readouterr().err
    garbage = tmp_path / "g.jsonl"
    garbage.write_text('{"something": "else"}\n')
    assert cli.main(["--data", str(FIXTURES), "--out", str(garbage), "--report-only"]) == 2
    assert "not a LongBench result" in capsys.readouterr().err
    assert cli.main(["--data", str(FIXTURES), "--out", str(garbage), "--datasets", "hotpotqa"]) == 2  # before loading
    assert "not a LongBench result" in capsys.readouterr().err
    assert garbage.read_text() == '{"something": "else"}\n'


def test_oprm_cli_hands_off(capsys: pytest.CaptureFixture[str]) -> None:
    from overflow_core.cli import main

    with pytest.raises(SystemExit):
        main(["longbench", "--help"])
    assert "--chunk-tokens" in capsys.readouterr().out


def test_a_users_file_as_out_is_refused_never_truncated(tmp_path: Path) -> None:
    """A text file without a final newline was taken for a crash's half-written record, 'redone' (truncated) and
    overwritten with results, exit 0. Only a last line begun as this runner begins a record is redone."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my important notes")
    with pytest.raises(InputError, match="is it a LongBench results file"):
        load_records(notes)
    assert notes.read_text() == "my important notes"
    image = tmp_path / "plot.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8 text"):
        load_records(image)
    cut = tmp_path / "run.jsonl"
    cut.write_text('{"key": "hotpotqa-0-oprm", "sc')  # a crash in the first record: redone
    assert load_records(cut) == []
