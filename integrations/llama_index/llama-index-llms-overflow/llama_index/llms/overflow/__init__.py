"""Overflow (OPRM) LLM for LlamaIndex: a recurrent model that answers packed context prompts chunk by chunk."""

from llama_index.llms.overflow.base import (
    DEFAULT_CONTEXT_WINDOW,
    OverflowLLM,
    overflow_qa_template,
    overflow_refine_template,
    prompt_markers,
)
from llama_index.llms.overflow.loading import shared_engine

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "OverflowLLM",
    "overflow_qa_template",
    "overflow_refine_template",
    "prompt_markers",
    "shared_engine",
]
