"""Overflow (OPRM) query engine for LlamaIndex: answer over long documents from the chunk the model is surest about."""

from llama_index.query_engine.overflow.base import NOT_FOUND_ANSWER, OverflowQueryEngine

__all__ = ["NOT_FOUND_ANSWER", "OverflowQueryEngine"]
