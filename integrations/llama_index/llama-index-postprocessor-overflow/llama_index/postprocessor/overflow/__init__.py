"""Overflow (OPRM) node post-processor for LlamaIndex: re-rank any retriever's nodes by the model's entropy."""

from llama_index.postprocessor.overflow.base import OverflowRerank

__all__ = ["OverflowRerank"]
