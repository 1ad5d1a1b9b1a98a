"""``oprm models``: the supported families, and whether a model folder would run (read from config.json, no weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overflow_core.backends import FAMILIES, UNSUPPORTED
from overflow_core.cli import main


def test_models_lists_every_family_with_backend_and_continuation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for f in FAMILIES.values():
        line = next(x for x in out.splitlines() if x.split()[:1] == [f.model_type])
        assert f.backend in line and f.continuation in line, line
    for model_type in UNSUPPORTED:
        assert f"  {model_type}: " in out


def test_models_path_says_how_a_folder_would_run(model_dir: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", str(model_dir("mamba"))]) == 0
    out = capsys.readouterr().out
    assert "model_type 'mamba'" in out and "continuation token by token" in out and "would run: yes" in out


def test_models_path_says_why_a_folder_would_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["models", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "'llama'" in out and "no weights" in out and "no tokenizer" in out and "would run: no" in out
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "rwkv7", "auto_map": {"AutoConfig": "x.Y"}}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert main(["models", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "flash-linear-attention" in out and "trust_remote_code=True" in out


def test_models_path_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", str(tmp_path / "missing")]) == 2
    assert main(["models", str(tmp_path)]) == 2
    (tmp_path / "config.json").write_text("{not json")
    assert main(["models", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("oprm models: error: ") for line in err)
