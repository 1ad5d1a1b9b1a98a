"""Query engines over Overflow: answer from the node the model is surest about, or say the documents do not tell."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field
from llama_index.core.indices.prompt_helper import DEFAULT_PADDING, ChatPromptHelper, PromptHelper
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import CustomQueryEngine, RetrieverQueryEngine
from llama_index.core.response_synthesizers import CompactAndRefine
from llama_index.core.schema import BaseNode, NodeWithScore
from llama_index.llms.overflow import OverflowLLM, overflow_qa_template, overflow_refine_template
from llama_index.llms.overflow.base import usage
from llama_index.retrievers.overflow import OverflowRetriever, is_abstaining, node_text

from overflow_core import OPRM

__all__ = ["NOT_FOUND_ANSWER", "OverflowQueryEngine", "retriever_query_engine"]

NOT_FOUND_ANSWER = "Not found in the documents."


class OverflowQueryEngine(CustomQueryEngine):
    """Retrieve, then answer from the best node that does not abstain, continuing from its cached state (OPRM).

    When every retrieved node abstains (the model's first answer token starts "not found"), or the model answers
    with the not-found phrase, the response is ``not_found_answer`` and ``response.metadata["not_found"]`` is True; the
    LLM is not asked to guess. ``response.metadata`` also carries the completion's usage (``prompt_forward_tokens``,
    ``reused_tokens``, ``generated_tokens``, ``finish_reason``): zeros and None when the LLM was not called.
    ``response.source_nodes`` holds every retrieved node with its score.

    Args:
        retriever: any retriever; with a non-Overflow retriever, add an ``OverflowRerank`` to ``node_postprocessors``.
        llm: the :class:`OverflowLLM` that answers (on the same engine as the retriever, for the state handoff).
        node_postprocessors: applied in order to the retrieved nodes.
        not_found_answer: the answer when the documents do not hold one.

    Example:
        >>> query_engine = OverflowQueryEngine.from_documents(engine, [Document(text=long_text)])  # doctest: +SKIP
        >>> str(query_engine.query("What is the locker number of Alice Baker?"))  # doctest: +SKIP
        '4412'
    """

    retriever: BaseRetriever
    llm: OverflowLLM
    node_postprocessors: list[BaseNodePostprocessor] = Field(default_factory=list)
    not_found_answer: str = Field(default=NOT_FOUND_ANSWER, min_length=1)

    @classmethod
    def from_documents(
        cls, engine: OPRM, documents: Sequence[BaseNode], *, similarity_top_k: int = 2, **kwargs: Any
    ) -> OverflowQueryEngine:
        """An :class:`OverflowRetriever` over ``documents`` (or nodes) and an :class:`OverflowLLM`, on one engine."""
        retriever = OverflowRetriever(engine, documents, similarity_top_k=similarity_top_k)
        return cls(retriever=retriever, llm=OverflowLLM(engine), **kwargs)

    def _postprocess(self, nodes: list[NodeWithScore], query_str: str) -> list[NodeWithScore]:
        for postprocessor in self.node_postprocessors:
            nodes = postprocessor.postprocess_nodes(nodes, query_str=query_str)
        return nodes

    def _prompt(self, nodes: list[NodeWithScore], query_str: str) -> str | None:
        best = next((n for n in nodes if not is_abstaining(n)), None)
        return None if best is None else self.llm.engine.user_message(node_text(best.node), query_str)

    def _response(self, nodes: list[NodeWithScore], text: str | None, usage: dict[str, Any]) -> Response:
        not_found = self.llm.engine.config.not_found.strip().lower()
        if text is None or text.strip().lower().startswith(not_found):
            return Response(self.not_found_answer, source_nodes=nodes, metadata={"not_found": True, **usage})
        return Response(text.strip(), source_nodes=nodes, metadata={"not_found": False, **usage})

    def custom_query(self, query_str: str) -> Response:
        nodes = self._postprocess(self.retriever.retrieve(query_str), query_str)
        prompt = self._prompt(nodes, query_str)
        if prompt is None:
            return self._response(nodes, None, usage())
        completion = self.llm.complete(prompt, formatted=True)
        return self._response(nodes, completion.text, completion.additional_kwargs)

    async def acustom_query(self, query_str: str) -> Response:
        nodes = await self.retriever.aretrieve(query_str)
        for postprocessor in self.node_postprocessors:
            nodes = await postprocessor.apostprocess_nodes(nodes, query_str=query_str)
        prompt = self._prompt(nodes, query_str)
        if prompt is None:
            return self._response(nodes, None, usage())
        completion = await self.llm.acomplete(prompt, formatted=True)
        return self._response(nodes, completion.text, completion.additional_kwargs)


def retriever_query_engine(
    retriever: BaseRetriever,
    llm: OverflowLLM,
    *,
    node_postprocessors: Sequence[BaseNodePostprocessor] = (),
    streaming: bool = False,
) -> RetrieverQueryEngine:
    """A ``RetrieverQueryEngine`` set up for the state handoff, with ``llm`` passed everywhere (never ``Settings.llm``).

    The synthesizer (``CompactAndRefine``, LlamaIndex's default) gets a text QA template that renders
    ``engine.user_message(context_str, query_str)``, a refine template in the same format and a prompt helper that
    counts in the model's tokens. Give it one node per query (``similarity_top_k=1``, or ``OverflowRerank(top_n=1)``
    after any retriever): the LLM's prompt is then the one the retriever scored, and decoding starts from its cached
    state. Several nodes are packed into one chunk's window as LlamaIndex does (and refined window by window when they
    overflow it), which the model reads afresh. To answer from the best of several nodes, and to say "not found" when
    they all abstain, use :class:`OverflowQueryEngine`.

    Example:
        >>> retriever = OverflowRetriever(engine, nodes, similarity_top_k=1)  # doctest: +SKIP
        >>> query_engine = retriever_query_engine(retriever, OverflowLLM(engine))  # doctest: +SKIP
        >>> str(query_engine.query("What is the locker number of Alice Baker?"))  # doctest: +SKIP
        '4412'
    """
    synthesizer = CompactAndRefine(
        llm=llm,
        prompt_helper=PromptHelper.from_llm_metadata(llm.metadata, tokenizer=llm.count_tokens),
        chat_prompt_helper=ChatPromptHelper.from_llm_metadata(llm.metadata, tokenizer=llm.count_tokens),
        text_qa_template=overflow_qa_template(llm.engine),
        refine_template=overflow_refine_template(llm.engine),
        response_padding_size=DEFAULT_PADDING,  # not 500: the window is one chunk's prompt (see OverflowLLM.metadata)
        streaming=streaming,
    )
    return RetrieverQueryEngine(
        retriever=retriever, response_synthesizer=synthesizer, node_postprocessors=list(node_postprocessors)
    )
