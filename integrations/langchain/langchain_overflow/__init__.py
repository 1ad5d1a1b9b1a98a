"""LangChain integration for Overflow (OPRM): model-native retrieval and an answer that continues from its state.

Example:
    >>> from langchain_core.output_parsers import StrOutputParser
    >>> from langchain_overflow import ChatOverflow, OverflowRetriever, create_overflow_chain
    >>> chat = ChatOverflow.from_pretrained(max_tokens=16)  # the bundled model
    >>> retriever = OverflowRetriever.from_texts(["The locker number of Alice Baker is 4412."], chat.engine, k=1)
    >>> chain = create_overflow_chain(retriever, chat) | StrOutputParser()
    >>> chain.invoke("What is the locker number of Alice Baker?")  # doctest: +SKIP
    '4412'
"""

from langchain_overflow._documents import EmptyDocumentWarning
from langchain_overflow._engines import EngineIdentity
from langchain_overflow._handoff import HandoffError, HandoffWarning
from langchain_overflow.chains import OverflowChainInput, create_overflow_chain
from langchain_overflow.chat_models import ChatOverflow
from langchain_overflow.llms import OverflowLLM
from langchain_overflow.prompts import format_docs_for, overflow_message, overflow_prompt, overflow_rag_prompt
from langchain_overflow.rerankers import OverflowReranker
from langchain_overflow.retrievers import OverflowRetriever, QueryError, to_document
from langchain_overflow.tools import create_overflow_retriever_tool

__version__ = "0.1.0"

__all__ = [
    "ChatOverflow",
    "EmptyDocumentWarning",
    "EngineIdentity",
    "HandoffError",
    "HandoffWarning",
    "OverflowChainInput",
    "OverflowLLM",
    "OverflowReranker",
    "OverflowRetriever",
    "QueryError",
    "__version__",
    "create_overflow_chain",
    "create_overflow_retriever_tool",
    "format_docs_for",
    "overflow_message",
    "overflow_prompt",
    "overflow_rag_prompt",
    "to_document",
]
