"""OverflowLLM: a plain LangChain completion model (string in, string out) over an Overflow engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from langchain_overflow import _handoff
from langchain_overflow._common import OverflowGenerationParams, generation_info, iterate_in_thread, usage

__all__ = ["OverflowLLM"]


class OverflowLLM(OverflowGenerationParams, LLM):
    """A completion model over an :class:`overflow_core.OPRM` engine.

    The prompt string is encoded with ``engine.encode_prompt``: a prompt rendered by
    :func:`langchain_overflow.format_docs_for` (``engine.user_message(chunk, question)``) maps to exactly the ids the
    retriever scored, so decoding continues from the cached state of that chunk. ``generate()`` reports token counts and
    ``prompt_forward_tokens`` in each generation's ``generation_info``. Constructors, the checked decoding fields, where
    the output stops (``stop_at_prompt_markers``), copies and pickles, the fingerprinted ``model_name`` and the handoff
    check (:class:`HandoffWarning`, ``strict_handoff``) are as for :class:`ChatOverflow`; fed the chat
    prompt of :func:`overflow_rag_prompt` (which LangChain renders as ``"Human: ..."`` text), it warns and names
    :func:`format_docs_for` as the prompt to use.

    Example:
        >>> from overflow_core import OPRM
        >>> from langchain_overflow import OverflowLLM
        >>> llm = OverflowLLM(engine=OPRM.from_pretrained(), max_tokens=16)
        >>> llm.invoke("The locker number of Alice Baker is")  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    @property
    def _llm_type(self) -> str:
        return "overflow"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop if stop is not None else self.stop, **kwargs)
        params["ls_provider"] = "overflow"
        model = kwargs.get("model")
        params["ls_model_name"] = model if isinstance(model, str) else self._model_name
        return params

    def _start(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[list[int], Any]:
        prompt_ids = self.engine.encode_prompt(prompt)
        generation = self._complete(prompt_ids, stop, kwargs)
        forward = int(getattr(generation, "prompt_forward_tokens", 0))
        _handoff.check(self, self.engine, prompt_ids, forward, prompt, kind="llm")
        return prompt_ids, generation

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            prompt_ids, generation = self._start(prompt, stop, kwargs)
            text = "".join(generation)
            info = {**generation_info(self._model_name, generation), "usage": usage(prompt_ids, generation)}
            generations.append([Generation(text=text, generation_info=info)])
        return LLMResult(generations=generations, llm_output={"model_name": self._model_name})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        prompt_ids, generation = self._start(prompt, stop, kwargs)
        for piece in generation:
            chunk = GenerationChunk(text=piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        info = {**generation_info(self._model_name, generation), "usage": usage(prompt_ids, generation)}
        yield GenerationChunk(text="", generation_info=info)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        sync_manager = run_manager.get_sync() if run_manager is not None else None
        async for chunk in iterate_in_thread(lambda: self._stream(prompt, stop, sync_manager, **kwargs)):
            yield chunk
