"""Overflow (OPRM) retriever for LlamaIndex: nodes ranked by the model's own next-token entropy."""

from llama_index.retrievers.overflow.base import OverflowRetriever, sentence_splitter
from llama_index.retrievers.overflow.nodes import (
    ENTROPY_KEY,
    IDK_KEY,
    NOT_FOUND_PROB_KEY,
    RANK_KEY,
    SCORE_KEYS,
    is_abstaining,
    node_text,
)

__all__ = [
    "ENTROPY_KEY",
    "IDK_KEY",
    "NOT_FOUND_PROB_KEY",
    "RANK_KEY",
    "SCORE_KEYS",
    "OverflowRetriever",
    "is_abstaining",
    "node_text",
    "sentence_splitter",
]
