"""The benchmark harness's own code, on tiny random models: task generation, JSONL loading, metrics, methods, one small run.

These check the harness, not the model: a tiny random model answers nothing right, so accuracies here are whatever they
are; what is checked is that every figure is computed from the right inputs and lands in the output files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from overflow_core import ConfigError, InputError
from overflow_core.bench import metrics
from overflow_core.bench.memory import PeakRss, current_rss
from overflow_core.bench.methods import BM25RAG, EmbeddingRAG, make_methods, require
from overflow_core.bench.runner import BenchSpec, headline, run
from overflow_core.bench.tasks import TASKS, Evidence, Item, generate, load_jsonl

QUESTION = "What is the locker number of Alice Baker?"


def fake_encoder(texts: Any) -> np.ndarray:
    """Bag of a few words: a text mentioning ``Alice Baker`` and ``locker`` points the same way as the question."""
    words = ("alice", "baker", "locker", "weather", "train")
    v = np.array([[t.lower().count(w) for w in words] + [0.01] for t in texts], dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tok(engine: Any) -> Any:
    return engine("mamba2").tokenizer


# -- tasks ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_generate_is_seeded_and_evidence_points_at_the_answer(task: str, tok: Any) -> None:
    a = generate(task, 600, 2, tok, seed=7)
    b = generate(task, 600, 2, tok, seed=7)
    c = generate(task, 600, 2, tok, seed=8)
    assert a == b, "the same seed must give the same items (reproducible runs)"
    assert [i.question for i in a] != [i.question for i in c] or [i.documents for i in a] != [i.documents for i in c]
    for item in a:
        assert item.task == task and item.length == 600
        assert 300 < item.context_tokens < 1000, f"context of {item.context_tokens} tokens for a 600-token target"
        if task == "absent":
            assert item.absent and item.evidence is None
            continue
        ev = item.evidence
        assert ev is not None
        span = item.documents[ev.doc][0][ev.start : ev.end]
        assert span.lower() == item.answers[0].lower(), "evidence must span the answer value"


def test_evidence_finds_a_value_that_opens_its_sentence_capitalised() -> None:
    from overflow_core.bench.tasks import _evidence

    sentence = "Teacher is the job of Quinn Novak."
    docs: list[tuple[str, dict[str, Any]]] = [("Filler first.", {}), (f"The day was calm. {sentence} The bus was late.", {})]
    ev = _evidence(docs, 1, sentence, "teacher")
    assert ev.doc == 1 and docs[1][0][ev.start : ev.end] == "Teacher"


def test_multi_and_multidoc_add_their_distractors(tok: Any) -> None:
    for item in generate("multi", 600, 3, tok, seed=1):
        text = " ".join(t for t, _ in item.documents)
        assert text.count(item.attr) >= 5, "multi: the needle and four facts about similar keys share the attribute"
    for item in generate("multidoc", 2000, 3, tok, seed=1):
        docs = [i for i, (t, _) in enumerate(item.documents) if item.key in t]
        assert len(docs) >= 2, "multidoc: the asked key must appear in several documents"


def test_generate_rejects_bad_arguments(tok: Any) -> None:
    with pytest.raises(InputError, match="task"):
        generate("nope", 600, 1, tok)
    with pytest.raises(InputError, match="split"):
        generate("single", 600, 1, tok, split="dev")


# -- JSONL ------------------------------------------------------------------------------------------------------------
def test_load_jsonl(tmp_path: Path, tok: Any) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"context": "Alice Baker's locker number is 4412.", "question": QUESTION, "answers": ["4412"], "id": "q1"},
        {"context": ["Doc one.", "Doc two."], "question": "Who?", "answers": []},
    ]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    items = load_jsonl(path, tok)
    assert [i.id for i in items] == ["q1", "mine-3"]
    assert items[0].answers == ("4412",) and not items[0].absent
    assert items[1].absent and len(items[1].documents) == 2
    assert items[0].context_tokens > 0 and items[0].task == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("{not json\n", r"bad\.jsonl:1: expected a JSON object, could not parse"),
        ("[1, 2]\n", "got list"),
        ('{"context": "x", "question": "q"}\n', "missing answers"),
        ('{"context": "", "question": "q", "answers": []}\n', "context"),
        ('{"context": "x", "question": " ", "answers": []}\n', "question"),
        ('{"context": "x", "question": "q", "answers": "4412"}\n', "answers"),
        ('{"context": "x", "question": "q", "answers": []}\n{oops\n', r"bad\.jsonl:2:"),
    ],
)
def test_load_jsonl_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_jsonl(path)


def test_load_jsonl_missing_and_binary(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="UTF-8"):
        load_jsonl(tmp_path / "bin.jsonl")


# -- metrics ----------------------------------------------------------------------------------------------------------
def _item(answers: tuple[str, ...] = ("4412",), evidence: Evidence | None = None) -> Item:
    return Item("x", "single", 100, (("text", {}),), QUESTION, answers, evidence, 10)


def test_exact_match_and_normalize() -> None:
    assert metrics.normalize("  The  Answer. ") == "the answer"
    assert metrics.exact_match("4412.", ["4412"])
    assert metrics.exact_match("Dr. Weber", ["dr. weber"])
    assert not metrics.exact_match("4412 or 12", ["4412"])
    assert not metrics.exact_match("anything", [])


def test_chunk_hit_uses_the_evidence_span() -> None:
    item = _item(evidence=Evidence(doc=1, start=50, end=54))
    assert metrics.chunk_hit(1, 40, 60, "...", item)
    assert not metrics.chunk_hit(1, 52, 90, "... 4412 ...", item), "a chunk holding part of the value is not a hit"
    assert not metrics.chunk_hit(0, 0, 100, "4412 by chance", item), "the value elsewhere is not the evidence"
    assert metrics.chunk_hit(0, 0, 9, "has 4412 here", _item()), "without evidence, the text decides"
    assert not metrics.chunk_hit(0, 0, 9, "4412", _item(answers=())), "absent items have no hits"
    assert metrics.hit_at_k([False, False, True], 3) and not metrics.hit_at_k([False, False, True], 2)
    with pytest.raises(ValueError):
        metrics.hit_at_k([True], 0)


def test_aggregate_by_hand() -> None:
    base = {"task": "t", "length": 1, "method": "m", "hit1": None, "hit3": None, "rss_delta": 5, "rss_peak": 9}
    recs = [
        {**base, "absent": False, "em": True, "hit1": True, "hit3": True, "not_found": False, "prefill_s": 1.0,
         "select_s": 0.5, "decode_s": 0.5, "total_s": 2.0, "prompt_tokens": 100, "context_tokens": 80},
        {**base, "absent": False, "em": False, "hit1": False, "hit3": True, "not_found": True, "prefill_s": 3.0,
         "select_s": 0.5, "decode_s": 0.5, "total_s": 4.0, "prompt_tokens": 300, "context_tokens": 220},
        {**base, "absent": True, "em": None, "not_found": True, "prefill_s": 0.0, "select_s": 0.0, "decode_s": 0.0,
         "total_s": 0.0, "prompt_tokens": 0, "context_tokens": 0, "rss_delta": 7},
    ]
    (row,) = metrics.aggregate(recs, ("task", "length", "method"))
    assert (row["n"], row["n_present"], row["n_absent"]) == (3, 2, 1)
    assert row["em"] == 0.5 and row["hit1"] == 0.5 and row["hit3"] == 1.0
    assert row["not_found_rate"] == 1.0 and row["false_not_found_rate"] == 0.5
    assert row["prefill_tokens_per_s"] == 100.0  # 400 tokens over 4 s
    assert row["tokens_per_s"] == 50.0  # 300 context tokens over 6 s
    assert row["rss_delta_max"] == 7


def test_flops_and_roofline() -> None:
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(100, 8)
            self.mix = torch.nn.Linear(8, 8)  # 72 parameters
            self.head = torch.nn.Linear(8, 100, bias=False)
            self.head.weight = self.embed.weight  # tied, as in the bundled model

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.head

    assert metrics.flops_per_token(Tiny()) == 2 * 72
    assert metrics.roofline_fraction(2e6, 1e4, 1e11) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        metrics.roofline_fraction(1, 1, 0)
    peak = metrics.gemm_peak((64,), reps=2)
    assert peak["flops"] > 0 and peak["size"] == 64


def test_peak_rss_sees_an_allocation() -> None:
    with PeakRss(interval_s=0.001) as m:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, written, so resident
        time.sleep(0.02)
        del block
    assert m.delta >= 48 * 2**20, f"a 64 MiB array must show in the peak, got {m.delta / 2**20:.1f} MiB"
    assert m.before > 0 and current_rss() > 0


# -- methods ----------------------------------------------------------------------------------------------------------
def _docs_item(tok: Any) -> Item:
    docs = (
        ("The weather was calm. The train passed the bridge. " * 4, {"source": "a"}),
        ("Alice Baker's locker number is 4412. The locker is by the door.", {"source": "b"}),
        ("The train stood near the station. The weather was cold. " * 4, {"source": "c"}),
    )
    text = docs[1][0]
    return Item("m", "single", 0, docs, QUESTION, ("4412",), Evidence(1, text.find("4412"), text.find("4412") + 4), 0)


def test_rag_baselines_retrieve_the_right_chunk(engine: Any, tok: Any) -> None:
    oprm = engine("mamba2")
    item = _docs_item(tok)
    for method in (EmbeddingRAG(oprm, encoder=fake_encoder), BM25RAG(oprm)):
        method.prepare()
        out = method.run(item)
        assert out.chosen is not None and out.chosen.doc_index == 1, f"{method.name} must pick the fact's chunk"
        assert metrics.chunk_hit(out.chosen.doc_index, out.chosen.start, out.chosen.end, out.chosen.text, item)
        assert out.select_s > 0 and out.prompt_tokens > 0 and out.total_s >= out.prefill_s


def test_missing_extra_names_the_pip_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
        require("surely_not_an_installed_module_xyz", "a test")
    with pytest.raises(ConfigError, match="methods"):
        make_methods(None, ["oprm", "magic"])


# -- one small run ----------------------------------------------------------------------------------------------------
def test_small_run_writes_json_and_markdown(engine: Any, tmp_path: Path) -> None:
    from overflow_core.bench import report

    oprm = engine("mamba2")
    spec = BenchSpec(
        lengths=(256, 600),
        samples={256: 1, 600: 1},
        long_from=10_000,
        index_max_tokens=None,
        sections=("accuracy", "throughput", "questions"),
        throughput_tokens=500,
        throughput_reps=1,
        question_tokens=400,
        questions=2,
        gemm_sizes=(64,),
    )
    result = run(spec, oprm, encoder=fake_encoder)
    methods = result["settings"]["methods"]
    assert len(result["records"]) == 2 * len(TASKS) * len(methods)
    assert {r["method"] for r in result["records"]} == set(methods)
    for r in result["records"]:
        assert r["total_s"] >= r["prefill_s"] + r["decode_s"] - 1e-6
        assert (r["em"] is None) == r["absent"]
    h = result["headline"]
    assert h["longest_length"] == 600 and "oprm_vs_vanilla_prefill_time" in h and "per_question_with_index_s" in h
    assert 0 < result["throughput"]["oprm_roofline"] < 1
    pl = result["prefill_longest"]
    assert pl["length"] == 600 and pl["items"] == len(TASKS), "OPRM and vanilla prefill compared on the same items"
    paths = report.write(result, tmp_path, "bench_test", plots=False)
    saved = json.loads((tmp_path / "bench_test.json").read_text())
    assert saved["machine"]["usable_cpus"] >= 1 and saved["gemm"]["flops"] > 0
    page = (tmp_path / "bench_test.md").read_text()
    assert "| 600 | single |" in page and "## Prefill throughput" in page and "## Per-question latency" in page
    assert "speedup_oprm_prefill" in result["throughput"] and "the baseline (before issue #26: transformers' SSD scan" in page
    assert [p.name for p in paths] == ["bench_test.json", "bench_test.md"]
    assert headline(result) == h


@pytest.mark.slow
def test_scaling_point_in_a_subprocess(model_dir: Any) -> None:
    from overflow_core.bench.scaling import run_point

    point = run_point({"model": str(model_dir("mamba2")), "tokens": 600, "threads": 1, "max_batch_tokens": 300,
                       "chunking": True, "allocator": "mmap"})
    assert point["chunks"] >= 5 and point["max_batch_tokens"] == 300 and point["allocator"] == "mmap"
    assert point["rss_peak"] >= point["rss_before"] > 0 and point["prefill_tokens_per_s"] > 0
    assert point["chunking_rss_delta"] >= 0


def test_cli_bad_jsonl_is_one_line_and_exit_2(model_dir: Any, tmp_path: Path, capsys: Any) -> None:
    from overflow_core.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x"}\n')
    code = main(["bench", "--jsonl", str(bad), "--model", str(model_dir("mamba2")), "--out", str(tmp_path),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "missing question, answers" in err and "Traceback" not in err


def test_a_jsonl_run_writes_files_of_its_own_name() -> None:
    from overflow_core.bench.cli import _run_parser, output_name

    name = lambda *argv: output_name(_run_parser().parse_args(list(argv)))  # noqa: E731
    assert (name(), name("--quick"), name("--jsonl", "data/my.jsonl")) == ("bench", "bench_quick", "bench_my")
    assert name("--jsonl", "my.jsonl", "--name", "x") == "x"


def test_cli_spec_profiles() -> None:
    from overflow_core.bench.cli import _run_parser, spec_from_args

    quick = spec_from_args(_run_parser().parse_args(["--quick"]))
    assert quick.lengths == (256, 2048) and quick.samples == {256: 1, 2048: 1} and quick.index_max_tokens is None
    full = spec_from_args(_run_parser().parse_args(["--index-max-tokens", "0"]))
    assert full.long_from == 100_000 and full.index_max_tokens is None and full.scaling_lengths[-1] >= 2**20
    custom = spec_from_args(_run_parser().parse_args(["--lengths", "300,900", "--samples", "3", "--jsonl", "x"]))
    assert custom.samples == {300: 3, 900: 3} and custom.sections == ("accuracy",)
    with pytest.raises(SystemExit):
        _run_parser().parse_args(["--methods", "oprm,magic"])
    assert sys.executable


def test_long_lengths_and_index_limit_and_shared_points(engine: Any) -> None:
    from overflow_core.bench.runner import Run

    oprm = engine("mamba2")
    spec = BenchSpec(lengths=(256, 600), samples={256: 1, 600: 1}, long_from=500, long_tasks=("single",),
                     index_max_tokens=300, sections=("accuracy", "scaling", "memory"), scaling_lengths=(300, 1200),
                     memory_budgets=(300, 600), memory_tokens=1200, mmap_tokens=None)
    r = Run(spec, oprm)
    r.load()
    assert [i.task for i in r.items if i.length == 600] == ["single"], "long lengths use only the long tasks"
    scaling, memory = r._point_specs()
    budget = oprm.config.batch_tokens
    assert [p["max_batch_tokens"] for p in scaling] == [budget, budget]
    unique = {json.dumps(p, sort_keys=True) for p in scaling + memory}
    assert len(unique) == 2 + 4
    methods = len(r.method_names)
    n_calls = sum(r._runs(i, m) for i in r.items for m in r.method_names)
    assert n_calls == len(r.items) * methods - sum(i.length > 300 for i in r.items), "oprm+index skipped above 300"
    assert r.steps() == 1 + n_calls + len(unique)


def test_pooled_headline_names_the_item_count_of_a_method_that_ran_on_fewer_items() -> None:
    from overflow_core.bench.report import headline_lines

    h: dict[str, Any] = {"longest_length": 16384}
    for key in ("oprm", "vanilla", "oprm_index", "embedding_rag", "bm25_rag"):
        h.update({f"{key}_em_longest": 0.0, f"{key}_not_found_rate_longest": 1.0, f"{key}_em_all": 0.25})
        h[f"{key}_n_present_all"] = 48 if key == "oprm_index" else 72
    pooled = next(line for line in headline_lines({"headline": h}) if "pooled" in line)
    assert "(72 answerable items)" in pooled and "OPRM+index 25% (of 48 items)" in pooled
    assert "BM25 RAG 25%," in pooled, "methods that ran on every item carry no count"


def test_baseline_prefill_is_the_prefill_before_issue_26_and_is_undone(engine: Any, monkeypatch: Any) -> None:
    """Inside ``baseline_prefill`` the backend runs transformers' scan and the heap is trimmed after every micro-batch;
    after it, the fast scan and the bounded trim are back. A baseline that changed nothing would compare a run with
    itself, so both effects are checked."""
    import overflow_core.prefill as prefill_module
    from overflow_core.backends import ssd
    from overflow_core.bench.scaling import baseline_prefill

    oprm = engine("mamba2", max_batch_tokens=200)
    assert oprm.backend.fast_scan, "the tiny Mamba-2 runs the library's scan by default"
    trims: list[int] = []
    scans: list[int] = []
    monkeypatch.setattr(prefill_module, "release_freed_memory", lambda: trims.append(1) or True)
    real = ssd.chunk_scan
    monkeypatch.setattr(ssd, "chunk_scan", lambda *a, **k: scans.append(1) or real(*a, **k))
    docs = [("word " * 400, {"source": "a"})]
    with baseline_prefill(oprm):
        assert oprm.backend.fast_scan is False
        ranking = oprm.rank("What is it?", docs)
    assert not scans and len(trims) >= 2, f"baseline: transformers' scan and a trim per batch ({len(trims)} trims)"
    assert len(ranking.scores) > 2, "several chunks, so several micro-batches of 200 tokens"
    trims.clear()
    oprm.rank("What is it?", docs)
    assert oprm.backend.fast_scan and scans, "after the block the fast scan is back"
    assert len(trims) <= 1, "and the heap is trimmed only past its bound"
    default = engine("mamba2")  # the default budget (4,096 on a CPU) was 16,384 before #26
    with baseline_prefill(default):
        assert default.config.batch_tokens == 16384
    assert default.config.max_batch_tokens is None and default.config.batch_tokens == 4096


def test_gpu_bench_dry_runs_on_the_cpu_with_the_kernels_blocked(
    model_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``oprm bench gpu`` end to end where there is no GPU: a child process per configuration, the kernels blocked in
    the 'off' one (so a machine that has them measures the torch path there), figures written as JSON."""
    from overflow_core.bench.gpu import main as gpu_main

    out = tmp_path / "gpu.json"
    assert gpu_main(["--model", str(model_dir("mamba2")), "--tokens", "300", "--kernels", "off", "--reps", "1",
                     "--out", str(out)]) == 0  # fmt: skip
    assert "no CUDA device: a dry run on the CPU" in capsys.readouterr().err, "said before the minutes of a dry run"
    (result,) = json.loads(out.read_text())
    assert result["kernels"] == "off" and not any(result["kernels_importable"].values())
    assert result["device"].startswith("cpu (dry run") and result["dtype"] == "float32"
    (point,) = result["points"]
    assert point["oprm_prompt_tokens"] > point["vanilla_prompt_tokens"] > 200 and point["oprm_rank_s"] > 0
    assert gpu_main(["--kernels", "sideways"]) == 2
