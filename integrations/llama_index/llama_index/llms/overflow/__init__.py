"""Overflow (OPRM) LLM for LlamaIndex: the engine's model, continuing from the retriever's cached states."""

from llama_index.llms.overflow.base import OverflowLLM, overflow_qa_template, overflow_refine_template

__all__ = ["OverflowLLM", "overflow_qa_template", "overflow_refine_template"]
