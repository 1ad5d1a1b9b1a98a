"""Fixtures shared by the unit and integration tests: a tiny random engine, and the bundled model when it is installed."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from overflow_core import OPRM
from tests.engines import bundled_engine, tiny_engine

torch.set_num_threads(1)  # the machine is shared; every test here is small


@pytest.fixture(scope="session")
def engine() -> OPRM:
    """A tiny random Mamba-2 engine (chunk_tokens=48, max_new_tokens=8): plumbing only, its answers mean nothing."""
    return tiny_engine()


@pytest.fixture(scope="session")
def bundled() -> OPRM:
    """The bundled trained model; tests that assert on content use it and skip when it is not installed."""
    engine = bundled_engine()
    if engine is None:
        pytest.skip("the bundled model (overflow_core/models/default) is not installed: content tests need it")
    return engine
