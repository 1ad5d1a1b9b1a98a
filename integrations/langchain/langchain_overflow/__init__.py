"""LangChain integration for Overflow (OPRM): model-native retrieval and an answer that continues from its state.

Example:
    >>> from overflow_core import OPRM
    >>> from langchain_core.output_parsers import StrOutputParser
    >>> from langchain_core.runnables import RunnablePassthrough
    >>> from langchain_overflow import ChatOverflow, OverflowRetriever, overflow_rag_prompt
    >>> engine = OPRM.from_pretrained()
    >>> retriever = OverflowRetriever.from_texts(["The locker number of Alice Baker is 4412."], engine, k=1)
    >>> chain = (
    ...     {"context": retriever, "question": RunnablePassthrough()}
    ...     | overflow_rag_prompt(engine)
    ...     | ChatOverflow(engine=engine)
    ...     | StrOutputParser()
    ... )
    >>> chain.invoke("What is the locker number of Alice Baker?")  # doctest: +SKIP
    '4412'
"""

from langchain_overflow.chat_models import ChatOverflow
from langchain_overflow.llms import OverflowLLM
from langchain_overflow.prompts import format_docs_for, overflow_prompt, overflow_rag_prompt
from langchain_overflow.rerankers import OverflowReranker
from langchain_overflow.retrievers import OverflowRetriever, to_document

__version__ = "0.1.0"

__all__ = [
    "ChatOverflow",
    "OverflowLLM",
    "OverflowReranker",
    "OverflowRetriever",
    "__version__",
    "format_docs_for",
    "overflow_prompt",
    "overflow_rag_prompt",
    "to_document",
]
