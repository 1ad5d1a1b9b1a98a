"""What the state index needs from an engine, as a protocol: the index is below the engine and never imports it.

:class:`~overflow_core.engine.OPRM` satisfies it; the index reads these attributes and calls these methods only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from overflow_core.backends.base import Backend, Session
from overflow_core.config import OPRMConfig
from overflow_core.decode import Generation
from overflow_core.prefill import PrefillBatch
from overflow_core.prompting import PromptIds, PromptTemplate
from overflow_core.state_cache import StateCache
from overflow_core.types import Chunk

__all__ = ["Engine"]


class Engine(Protocol):
    """The engine surface the index uses (chunking, prompts, prefill, decoding settings, the state cache)."""

    model: Any
    tokenizer: Any
    name: str
    config: OPRMConfig
    backend: Backend
    template: PromptTemplate
    prompt_ids: PromptIds
    idk_ids: Any
    state_cache: StateCache
    device: torch.device

    def chunk(self, documents: Any) -> list[Chunk]: ...

    def encode_question(self, question: str) -> tuple[int, ...]: ...

    def prompt(self, chunk_ids: Sequence[int], question_ids: Sequence[int]) -> list[int]: ...

    def context_prompt(self, chunk_ids: Sequence[int]) -> list[int]: ...

    def prefill_batches(self, prompts: Sequence[Sequence[int]]) -> Iterator[PrefillBatch]: ...

    def decoding_config(self, overrides: Mapping[str, Any]) -> OPRMConfig: ...

    def generation(
        self, session: Session, logits: torch.Tensor, cfg: OPRMConfig, seed: int | None, *, lstrip: bool = False
    ) -> Generation: ...
