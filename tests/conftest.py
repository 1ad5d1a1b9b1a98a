"""Fixtures: tiny random-initialised models of every supported family, saved to and loaded from local folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core.testing import FAMILIES, make_tiny_model_dir, make_tokenizer_dir, sample_documents

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

__all__ = ["FAMILIES", "sample_documents"]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenizer_dir(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Any:
    """``model_dir(family, **settings)`` -> a folder with a tiny random model, the tokenizer and ``overflow.json``."""
    made: dict[str, Path] = {}

    def make(family: str = "mamba2", **settings: Any) -> Path:
        key = repr((family, sorted(settings.items())))
        if key not in made:
            made[key] = make_tiny_model_dir(
                tmp_path_factory.mktemp(f"model-{family}"), tokenizer_dir, family, **settings
            )
        return made[key]

    return make


@pytest.fixture(scope="session")
def engine(model_dir: Any) -> Any:
    """``engine(family, **settings)`` -> an OPRM engine over a tiny model (cached per arguments)."""
    from overflow_core import OPRM

    made: dict[str, Any] = {}

    def make(family: str = "mamba2", **settings: Any) -> Any:
        key = repr((family, sorted(settings.items())))
        if key not in made:
            made[key] = OPRM.from_pretrained(model_dir(family), **settings)
        return made[key]

    return make
