"""Query engines over Overflow: answer from the node the model is surest about, or say the documents do not tell."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.base.response.schema import RESPONSE_TYPE, AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.llms.overflow import OverflowLLM
from llama_index.llms.overflow.base import usage
from llama_index.llms.overflow.loading import shared_engine, split_settings
from llama_index.retrievers.overflow import OverflowRetriever, is_abstaining, node_text

from overflow_core import OPRM
from overflow_core.answering import is_not_found

__all__ = ["NOT_FOUND_ANSWER", "OverflowQueryEngine"]

NOT_FOUND_ANSWER = "Not found in the documents."
_RETRIEVER_OPTIONS = ("similarity_top_k", "use_state_index", "whole_nodes")
_ENGINE_OPTIONS = ("node_postprocessors", "not_found_answer", "streaming", "callback_manager")


class OverflowQueryEngine(BaseQueryEngine):
    """Retrieve, then answer from the best node that does not abstain, continuing from its cached state (OPRM).

    When every retrieved node abstains (the model's first answer token starts "not found"), or the model answers
    with the not-found phrase, the response is ``not_found_answer`` and ``response.metadata["not_found"]`` is True; the
    LLM is not asked to guess. ``response.metadata`` also carries the completion's usage (``prompt_forward_tokens``,
    ``reused_tokens``, ``generated_tokens``, ``finish_reason``): zeros and None when the LLM was not called.
    ``response.source_nodes`` holds every retrieved node with its score. Queries emit LlamaIndex's
    ``QueryStartEvent`` / ``QueryEndEvent`` (and the retriever's, the re-ranker's and the LLM's events inside).

    Args:
        retriever: any retriever; with a non-Overflow retriever, add an ``OverflowRerank`` to ``node_postprocessors``.
        llm: the :class:`OverflowLLM` that answers (on the same engine as the retriever, for the state handoff).
        node_postprocessors: applied in order to the retrieved nodes.
        not_found_answer: the answer when the documents do not hold one.
        streaming: return a ``StreamingResponse`` (``AsyncStreamingResponse`` from ``aquery``) whose ``response_gen``
            yields the answer as it is decoded; its ``metadata`` is complete once the stream is exhausted.

    Example:
        >>> query_engine = OverflowQueryEngine.from_documents(engine, [Document(text=long_text)])  # doctest: +SKIP
        >>> str(query_engine.query("What is the locker number of Alice Baker?"))  # doctest: +SKIP
        '4412'
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        llm: OverflowLLM,
        *,
        node_postprocessors: Sequence[BaseNodePostprocessor] = (),
        not_found_answer: str = NOT_FOUND_ANSWER,
        streaming: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever: expected a LlamaIndex BaseRetriever, got {type(retriever).__name__}")
        if not isinstance(llm, OverflowLLM):
            raise TypeError(f"llm: expected an OverflowLLM (it answers from the engine's states), got {type(llm).__name__}")
        if not isinstance(not_found_answer, str) or not not_found_answer.strip():
            raise ValueError(f"not_found_answer: expected a non-empty string, got {not_found_answer!r}")
        self.retriever = retriever
        self.llm = llm
        self.node_postprocessors = list(node_postprocessors)
        self.not_found_answer = not_found_answer
        self.streaming = streaming
        super().__init__(callback_manager=callback_manager or llm.callback_manager)

    @classmethod
    def from_documents(
        cls, engine: OPRM, documents: Sequence[BaseNode], *, similarity_top_k: int = 2, **kwargs: Any
    ) -> OverflowQueryEngine:
        """An :class:`OverflowRetriever` over ``documents`` (or nodes) and an :class:`OverflowLLM`, on one engine.

        ``kwargs`` are this class's options (``streaming``, ``not_found_answer``, ``node_postprocessors``) or the
        retriever's (``use_state_index``, ``whole_nodes``).
        """
        retriever_kwargs = {k: kwargs.pop(k) for k in _RETRIEVER_OPTIONS[1:] if k in kwargs}
        retriever = OverflowRetriever(engine, documents, similarity_top_k=similarity_top_k, **retriever_kwargs)
        return cls(retriever, OverflowLLM(engine), **kwargs)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path | None = None, documents: Sequence[BaseNode] | None = None, **kwargs: Any
    ) -> OverflowQueryEngine:
        """Load a model (``None``: the bundled one) through the core's loader and answer over ``documents`` with it.

        Keywords are the query engine's options, the retriever's (``similarity_top_k``, ...) or settings of the engine
        (whatever :meth:`OPRM.from_pretrained` takes); anything else raises ``TypeError``.

        Example:
            >>> query_engine = OverflowQueryEngine.from_pretrained(documents=documents, streaming=True)  # doctest: +SKIP
        """
        if documents is None:
            raise ValueError("documents: expected the documents (or nodes) to answer over, got none")
        own, settings = split_settings(
            "OverflowQueryEngine.from_pretrained", kwargs, (*_RETRIEVER_OPTIONS, *_ENGINE_OPTIONS)
        )
        return cls.from_documents(shared_engine(name_or_path, **settings), documents, **own)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    # -- steps ----------------------------------------------------------------------------------------------------------
    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = self.retriever.retrieve(query_bundle)
        for postprocessor in self.node_postprocessors:
            nodes = postprocessor.postprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes

    async def aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        nodes = await self.retriever.aretrieve(query_bundle)
        for postprocessor in self.node_postprocessors:
            nodes = await postprocessor.apostprocess_nodes(nodes, query_bundle=query_bundle)
        return nodes

    def _prompt(self, nodes: list[NodeWithScore], query_str: str) -> str | None:
        best = next((n for n in nodes if not is_abstaining(n)), None)
        return None if best is None else self.llm.engine.user_message(node_text(best.node), query_str)

    def _response(self, nodes: list[NodeWithScore], text: str | None, used: dict[str, Any]) -> Response:
        if text is None or is_not_found(text, self.llm.engine.config.not_found):
            return Response(self.not_found_answer, source_nodes=nodes, metadata={"not_found": True, **used})
        return Response(text.strip(), source_nodes=nodes, metadata={"not_found": False, **used})

    def _tokens(
        self, responses: Iterator[CompletionResponse], metadata: dict[str, Any]
    ) -> Generator[str, None, None]:
        gate = _NotFoundGate(self.llm.engine.config.not_found, self.not_found_answer, metadata)
        for response in responses:
            yield from gate.feed(response)
        yield from gate.end()

    async def _atokens(
        self, stream: AsyncIterator[CompletionResponse], metadata: dict[str, Any]
    ) -> AsyncGenerator[str, None]:
        gate = _NotFoundGate(self.llm.engine.config.not_found, self.not_found_answer, metadata)
        async for response in stream:
            for token in gate.feed(response):
                yield token
        for token in gate.end():
            yield token

    def _stream(self, nodes: list[NodeWithScore], prompt: str | None) -> StreamingResponse:
        metadata: dict[str, Any] = {"not_found": True, **usage()}
        if prompt is None:
            return StreamingResponse(_once(self.not_found_answer), source_nodes=nodes, metadata=metadata)
        gen = self._tokens(self.llm.stream_complete(prompt, formatted=True), metadata)
        return StreamingResponse(gen, source_nodes=nodes, metadata=metadata)

    # -- LlamaIndex's entry points (BaseQueryEngine.query / aquery wrap these with events and a trace) -------------------
    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        nodes = self.retrieve(query_bundle)
        prompt = self._prompt(nodes, query_bundle.query_str)
        if self.streaming:
            return self._stream(nodes, prompt)
        if prompt is None:
            return self._response(nodes, None, usage())
        completion = self.llm.complete(prompt, formatted=True)
        return self._response(nodes, completion.text, completion.additional_kwargs)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        nodes = await self.aretrieve(query_bundle)
        prompt = self._prompt(nodes, query_bundle.query_str)
        if self.streaming:
            metadata: dict[str, Any] = {"not_found": True, **usage()}
            if prompt is None:
                return AsyncStreamingResponse(_aiter([self.not_found_answer]), source_nodes=nodes, metadata=metadata)
            stream = await self.llm.astream_complete(prompt, formatted=True)
            return AsyncStreamingResponse(self._atokens(stream, metadata), source_nodes=nodes, metadata=metadata)
        if prompt is None:
            return self._response(nodes, None, usage())
        completion = await self.llm.acomplete(prompt, formatted=True)
        return self._response(nodes, completion.text, completion.additional_kwargs)


class _NotFoundGate:
    """Streams an answer, holding back its start until it is clear whether it is the not-found phrase (which becomes
    the query engine's ``not_found_answer``); fills ``metadata`` with ``not_found`` and the completion's usage.

    The rule is the non-streaming one, :func:`overflow_core.answering.is_not_found`: the answer is "not found" when it
    starts with the phrase. While the text so far could still become the phrase it is held back; an answer that ends
    there ("No", "not") is an answer. Whitespace at the end is held back too and dropped when the stream ends, so the
    streamed text is exactly the non-streaming response's.
    """

    def __init__(self, phrase: str, not_found_answer: str, metadata: dict[str, Any]) -> None:
        self.phrase, self.not_found_answer, self.metadata = phrase, not_found_answer, metadata
        self.held, self.decided = "", False

    def feed(self, response: CompletionResponse) -> list[str]:
        self.metadata.update(response.additional_kwargs)
        delta = response.delta or ""
        if self.decided:
            return self._release(delta) if not self.metadata["not_found"] else []
        self.held += delta
        head = self.held.lstrip()
        if is_not_found(head, self.phrase):
            self.decided, self.metadata["not_found"] = True, True
            return [self.not_found_answer]
        if head and not self.phrase.strip().lower().startswith(head.lower()):  # can no longer become the phrase
            self.decided, self.metadata["not_found"] = True, False
            self.held = ""
            return self._release(head)
        return []

    def _release(self, text: str) -> list[str]:
        """``text`` after what was held back, up to its trailing whitespace (held until more text follows)."""
        text = self.held + text
        out = text.rstrip()
        self.held = text[len(out) :]
        return [out] if out else []

    def end(self) -> list[str]:
        if self.decided:
            return []
        held = self.held.strip()  # the stream ended inside (a prefix of) the phrase, or empty
        self.metadata["not_found"] = is_not_found(held, self.phrase)
        if self.metadata["not_found"]:
            return [self.not_found_answer]
        return [held] if held else []


def _once(text: str) -> Generator[str, None, None]:
    yield text


async def _aiter(items: Sequence[str]) -> AsyncGenerator[str, None]:
    for item in items:
        yield item
