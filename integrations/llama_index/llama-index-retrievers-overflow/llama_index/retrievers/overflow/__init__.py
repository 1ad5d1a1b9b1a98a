"""Overflow (OPRM) retriever for LlamaIndex: nodes ranked by the model's own next-token entropy."""

from llama_index.retrievers.overflow.base import OverflowRetriever, sentence_splitter
from llama_index.retrievers.overflow.nodes import (
    ENTROPY_KEY,
    IDK_KEY,
    NOT_FOUND_PROB_KEY,
    RANK_KEY,
    RETRIEVAL_SCORE_KEY,
    SCORE_KEYS,
    is_abstaining,
    node_text,
    question_of,
)

__all__ = [
    "ENTROPY_KEY",
    "IDK_KEY",
    "NOT_FOUND_PROB_KEY",
    "RANK_KEY",
    "RETRIEVAL_SCORE_KEY",
    "SCORE_KEYS",
    "OverflowRetriever",
    "is_abstaining",
    "node_text",
    "question_of",
    "sentence_splitter",
]
