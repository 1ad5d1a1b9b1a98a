"""The ``oprm`` command: answers, JSON output, stdin, and one clear line plus exit code 2 for every user mistake."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from overflow_core.cli import main
from overflow_core.testing import sample_documents


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    paths = []
    for text, meta in sample_documents(n_docs=2, seed=11):
        path = tmp_path / meta["source"]
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    return paths


def test_ask_prints_answer_source_and_scores(model_dir: Any, files: list[str], capsys: Any) -> None:
    code = main(["ask", "-q", "What is the PIN of Alice Baker?", *files, "--model", str(model_dir("mamba2"))])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("answer: ")
    assert "rank" in out and "entropy" in out and "prefill" in out


def test_ask_draws_no_weight_loading_bar(model_dir: Any, files: list[str], capsys: Any) -> None:
    """transformers' "Loading weights" bar is noise on a command line's stderr; the library API keeps it (control)."""
    from transformers.utils import logging as hf_logging

    from overflow_core import OPRM

    hf_logging.enable_progress_bar()
    try:
        OPRM.from_pretrained(model_dir("mamba2"))
        assert "Loading weights" in capsys.readouterr().err, "the control: the bar is drawn outside the command line"
        assert main(["ask", "-q", "What is the PIN of Alice Baker?", *files, "--model", str(model_dir("mamba2"))]) == 0
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()


def test_ask_json_is_machine_readable(model_dir: Any, files: list[str], capsys: Any) -> None:
    code = main(["ask", "-q", "What is the PIN?", *files, "--model", str(model_dir("mamba2")), "--json", "--mode", "oprm"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(data) >= {"text", "not_found", "chunk", "ranking", "timings", "usage"}
    sources = {s["chunk"]["source"] for s in data["ranking"]["scores"]}
    assert sources == set(files)


def test_ask_reads_stdin(model_dir: Any, monkeypatch: Any, capsys: Any) -> None:
    text = sample_documents(n_docs=1, seed=2)[0][0]
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code = main(["ask", "-q", "What is the PIN?", "-", "--model", str(model_dir("mamba2")), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["ranking"]["scores"][0]["chunk"]["source"] == "<stdin>"


def _error(argv: list[str], capsys: Any) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, f"expected exit code 2, got {code}"
    assert "Traceback" not in captured.err
    return captured.err


def test_user_mistakes_exit_2_with_one_clear_line(model_dir: Any, files: list[str], tmp_path: Path, capsys: Any) -> None:
    model = ["--model", str(model_dir("mamba2"))]
    assert "no such file" in _error(["ask", "-q", "What?", str(tmp_path / "missing.txt"), *model], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "empty" in _error(["ask", "-q", "What?", str(empty), *model], capsys)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x89PNG\x00\x00\x01\x02")
    assert "binary" in _error(["ask", "-q", "What?", str(binary), *model], capsys)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    assert "UTF-8" in _error(["ask", "-q", "What?", str(latin), *model], capsys)
    assert "question" in _error(["ask", "-q", "   ", *files, *model], capsys)
    assert "chunk_tokens" in _error(["ask", "-q", "why " * 200, *files, *model], capsys)
    assert "at least one file" in _error(["ask", "-q", "What?", *model], capsys)
    assert "does not exist" in _error(["ask", "-q", "What?", *files, "--model", str(tmp_path / "nomodel")], capsys)
    assert "chunk_tokens" in _error(["ask", "-q", "What?", *files, *model, "--chunk-tokens", "0"], capsys)


def test_index_then_ask_from_the_index(model_dir: Any, files: list[str], tmp_path: Path, capsys: Any) -> None:
    model = ["--model", str(model_dir("mamba2"))]
    out = tmp_path / "corpus.idx"
    assert main(["index", *files, "--out", str(out), *model]) == 0
    assert "indexed" in capsys.readouterr().out
    assert main(["ask", "-q", "What is the PIN?", "--index", str(out), *model, "--json"]) == 0
    from_index = json.loads(capsys.readouterr().out)
    assert main(["ask", "-q", "What is the PIN?", *files, *model, "--json"]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert from_index["text"] == from_files["text"]
    assert from_index["usage"]["reused_tokens"] > 0


def test_a_full_disk_during_an_index_save_is_one_line_and_leaves_nothing(
    model_dir: Any, files: list[str], tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """The system refusing a write (ENOSPC here) is reported in one line with exit 1, not a traceback, and the folder
    holds no half-written index."""
    import errno

    import overflow_core.index.storage as storage

    def full(path: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(storage, "write_shard", full)
    out = tmp_path / "corpus.idx"
    assert main(["index", *files, "--out", str(out), "--model", str(model_dir("mamba2"))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("oprm index: error: No space left on device")
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() or not any(p.suffix == ".safetensors" for p in out.iterdir())
