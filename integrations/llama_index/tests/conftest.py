"""Fixtures: a tiny random engine for plumbing, the bundled model for content, and a guard against Settings.llm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_index.core
import pytest
import torch
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.settings import _Settings

from overflow_core import OPRM
from overflow_core.engine import DEFAULT_MODEL_DIR
from overflow_core.testing import make_tiny_model_dir, make_tokenizer_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# anything that reaches for tiktoken (token counters, chat memory) finds llama-index-core's bundled files offline
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Mamba-2 model folder (chunk_tokens 48, 8 new tokens in its settings)."""
    tokenizer_dir = make_tokenizer_dir(tmp_path_factory.mktemp("tok"))
    return Path(make_tiny_model_dir(tmp_path_factory.mktemp("model"), tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path) -> OPRM:
    """A random tiny Mamba-2 engine: meaningless answers, real plumbing."""
    return OPRM.from_pretrained(tiny_model_dir)


@pytest.fixture
def events() -> Iterator[list[Any]]:
    """Every LlamaIndex instrumentation event emitted during the test, in order."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    seen: list[Any] = []

    class Collect(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            seen.append(event)

    root = get_dispatcher()
    handler = Collect()
    root.add_event_handler(handler)
    yield seen
    root.event_handlers.remove(handler)


@pytest.fixture(scope="session")
def bundled() -> OPRM:
    """The bundled trained model; content tests skip (saying why) while it is not installed."""
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        pytest.skip(f"the bundled model is not installed at {DEFAULT_MODEL_DIR}; content tests need it")
    return OPRM.from_pretrained()


@pytest.fixture(autouse=True)
def _clear_state_caches(request: pytest.FixtureRequest) -> None:
    """Each test starts with cold state caches, so a cache hit in a test comes from that test's own retrieval."""
    for name in ("tiny_engine", "bundled"):
        if name in request.fixturenames:
            request.getfixturevalue(name).state_cache.clear()


class ForbiddenLLM(CustomLLM):
    """What ``Settings.llm`` returns under the guard: any use fails the test."""

    @property
    def metadata(self) -> LLMMetadata:
        raise AssertionError("Settings.llm was used")

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise AssertionError("Settings.llm was used")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise AssertionError("Settings.llm was used")


@pytest.fixture(autouse=True)
def settings_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every test: record any read of ``Settings.llm`` / ``Settings.embed_model`` (which default to hosted models) and
    fail if there was one. Our classes must be passed explicitly everywhere."""
    reads: list[str] = []

    def forbidden(name: str) -> property:
        def get(self: Any) -> Any:
            reads.append(name)
            return ForbiddenLLM()

        def set_(self: Any, value: Any) -> None:
            raise AssertionError(f"a test or the library set Settings.{name}")

        return property(get, set_)

    monkeypatch.setattr(_Settings, "llm", forbidden("llm"))
    monkeypatch.setattr(_Settings, "embed_model", forbidden("embed_model"))
    yield reads
    assert not reads, f"Settings.{reads[0]} was read: something fell back to LlamaIndex's global default model"


@pytest.fixture
def spy_complete(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``spy_complete(engine)`` -> the list of every ``Generation`` that ``engine.complete`` returns during the test."""

    def spy(engine: OPRM) -> list[Any]:
        made: list[Any] = []
        original = engine.complete

        def complete(prompt_ids: Any, **kwargs: Any) -> Any:
            generation = original(prompt_ids, **kwargs)
            made.append(generation)
            return generation

        monkeypatch.setattr(engine, "complete", complete)
        return made

    return spy
