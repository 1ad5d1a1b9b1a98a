"""OverflowLLM: the OPRM engine's model as a LlamaIndex LLM.

A recurrent model has no hard context limit, but its fixed-size state overflows when it reads a long context whole. So
whenever LlamaIndex hands this LLM a prompt built from a template with a context and a question (the ``text_qa``,
``refine`` and ``tree_summarize`` templates of every response synthesizer, the context prompts of the chat engines),
the LLM does not read the packed prompt: it answers the question with OPRM over the context (cut into chunks, every
chunk scored with the question in one batch, the answer decoded from the chunk the model is surest about), in the
engine's own prompt format. Everything else (a plain completion, a chat) is read as given.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate, SelectorPromptTemplate
from llama_index.llms.overflow.loading import shared_engine, split_settings

from overflow_core import OPRM
from overflow_core.chunking import encode_text

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "OverflowLLM",
    "overflow_qa_template",
    "overflow_refine_template",
    "prompt_markers",
]

DEFAULT_CONTEXT_WINDOW = 32768
"""How many tokens LlamaIndex may pack into one call by default. The model never reads them whole: a packed context is
answered with OPRM, chunk by chunk, so a large window means fewer calls (one for most queries), not an overflowing
state. HuggingFaceLLM's default is 3,900, sized for a transformer's attention."""

_T = TypeVar("_T")
_DONE = object()
_CONTEXT_VARS = ("context_str", "context_msg")  # LlamaIndex's names for a template's context
_QUESTION_VAR = "query_str"


def usage(generation: Any = None) -> dict[str, Any]:
    """The usage a completion reports in ``additional_kwargs``; with no generation (the LLM was not called), the same
    keys with zeros and no finish reason."""
    if generation is None:
        return {"prompt_forward_tokens": 0, "reused_tokens": 0, "generated_tokens": 0, "finish_reason": None}
    return {
        "prompt_forward_tokens": generation.prompt_forward_tokens,
        "reused_tokens": generation.reused_tokens,
        "generated_tokens": len(generation.token_ids),
        "finish_reason": generation.finish_reason,
    }


def overflow_qa_template(engine: OPRM) -> PromptTemplate:
    """A ``text_qa_template`` that renders exactly ``engine.user_message(context_str, query_str)``.

    Given to a query engine, it makes the LLM's prompt for a retrieved node the very prompt the retriever scored, so the
    LLM's generation continues from the cached state instead of reading the node again. (An :class:`OverflowLLM` gives
    LlamaIndex's own templates the same treatment; this template is for code that formats prompts itself.)
    """
    t = engine.template
    return PromptTemplate(
        f"{t.prefix}{{context_str}}{t.infix}{{query_str}}{t.suffix}",
        function_mappings={"query_str": _stripped_query},  # user_message strips the question; so must the template
    )


def overflow_refine_template(engine: OPRM) -> PromptTemplate:
    """A ``refine_template`` in the engine's prompt format: the next context, with the answer so far as its last line."""
    t = engine.template
    return PromptTemplate(
        f"{t.prefix}{{context_msg}}\n\nEarlier answer: {{existing_answer}}{t.infix}{{query_str}}{t.suffix}",
        function_mappings={"query_str": _stripped_query},
    )


def _stripped_query(**kwargs: Any) -> str:
    return str(kwargs.get("query_str", "")).strip()


def prompt_markers(engine: OPRM) -> list[str]:
    """The markers of the engine's prompt format, as stop strings (:meth:`overflow_core.OPRM.prompt_markers`, which the
    LangChain models stop at too): the engine's stop strings, the special tokens its template uses (``<|end|>``,
    ``<|user|>``, ...), and each ``Label:`` or ``<tag>`` that opens a line of it (``"\\nQuestion:"``, ``"\\n</doc>"``).

    A model that answered and goes on writing the next question, document or turn has left the answer; these cut it.
    """
    return engine.prompt_markers()


class _PackedPrompt(str):
    """A prompt LlamaIndex built from a context and a question: the string is the engine's prompt for them (what the
    callbacks and events show), the parts ride along for the LLM to answer with OPRM."""

    context: str
    question: str
    existing_answer: str | None

    def __new__(cls, text: str, *, context: str, question: str, existing_answer: str | None = None) -> _PackedPrompt:
        obj = super().__new__(cls, text)
        obj.context, obj.question, obj.existing_answer = context, question, existing_answer
        return obj


class _KeptQuestion(str):
    """A condense-question prompt the LLM answers with the follow-up message itself (``condense_questions=False``)."""

    question: str

    def __new__(cls, text: str, *, question: str) -> _KeptQuestion:
        obj = super().__new__(cls, text)
        obj.question = question
        return obj


class _Run:
    """One generation: iterate its text pieces; ``text`` and ``usage`` are complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], finish: Callable[[], dict[str, Any]]) -> None:
        self._pieces, self._finish = pieces, finish
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    def usage(self) -> dict[str, Any]:
        return self._finish()


async def _aiter_in_thread(make: Callable[[], Iterator[_T]]) -> AsyncGenerator[_T, None]:
    """Run the blocking iterator ``make()`` to its end on one worker thread, handing its items to async code.

    One thread for the whole iteration: the engine's decoding loop holds thread-local torch state (inference mode)
    across its yields, so it must not be resumed from another thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))

    def run() -> None:
        try:
            for item in make():
                put(item)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            put(_DONE, exc)
        else:
            put(_DONE)

    loop.run_in_executor(None, contextvars.copy_context().run, run)
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()


class OverflowLLM(CustomLLM):
    """The engine's model as a LlamaIndex LLM (a completion model; chat goes through the tokenizer's chat template).

    **Packed prompts.** When LlamaIndex formats a template that has a context (``context_str`` or ``context_msg``) and a
    question (``query_str``), as every response synthesizer and every context chat engine does, the LLM answers the
    question with OPRM over the context in the engine's own prompt format (``context_mode="oprm"``, the default):

    - a context that fits one engine chunk is one prompt, ``engine.user_message(context, question)``; when a retriever
      or re-ranker on the same engine just scored it, decoding starts from the cached state (no prompt token re-read);
    - a longer context (several nodes packed by ``compact`` or ``tree_summarize``) is cut into chunks, every chunk is
      scored with the question in one batch, and the answer is decoded from the chunk the model is surest about; when
      every chunk abstains the answer is the engine's not-found phrase;
    - a refine step keeps the answer so far unless it is the not-found phrase (the earlier node, ranked higher by the
      retriever, wins), and otherwise answers from the new context: refine ends with the answer of the best-ranked
      node that holds one.

    ``context_mode="prompt"`` turns this off: the template is formatted as LlamaIndex does and read whole.
    The chat history a chat engine puts beside the context is not read in a packed prompt; the question is the user's
    latest message. A condense-question prompt (``question`` + ``chat_history``) is answered with the follow-up
    message itself unless ``condense_questions=True`` (rewriting is a free-form task the bundled model was not trained
    for; a capable instruction-tuned model can do it).

    ``metadata.context_window`` (``context_window=``, default :data:`DEFAULT_CONTEXT_WINDOW`) is how much LlamaIndex
    packs into one call; ``num_output`` is ``max_new_tokens``. Generation stops at the engine's stop strings and at
    the markers of its prompt format (:func:`prompt_markers`) unless ``stop=`` says otherwise.

    Each response's ``additional_kwargs`` hold ``prompt_forward_tokens`` (prompt tokens run through the model),
    ``reused_tokens`` (prompt tokens whose state came from the cache), ``generated_tokens`` and ``finish_reason``; an
    OPRM answer adds ``oprm_chunks`` (chunks scored) and ``not_found``.

    Example:
        >>> llm = OverflowLLM.from_pretrained()  # the bundled model; or OverflowLLM(engine)  # doctest: +SKIP
        >>> llm.complete(llm.engine.user_message(node_text, "What is the locker number of Alice Baker?")).text  # doctest: +SKIP
        '4412'
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default="", description="The engine's model name.")
    context_window: int = Field(
        default=DEFAULT_CONTEXT_WINDOW, gt=0, description="Most tokens LlamaIndex packs into one call."
    )
    max_new_tokens: int | None = Field(default=None, description="Most tokens to generate (None: the engine's).", ge=0)
    temperature: float | None = Field(default=None, description="Sampling temperature; 0 is greedy.", ge=0)
    seed: int | None = Field(default=None, description="Seeds sampling when temperature > 0.")
    stop: list[str] | None = Field(
        default=None, description="Stop strings (None: the engine's and its prompt format's markers)."
    )
    context_mode: Literal["oprm", "prompt"] = Field(
        default="oprm", description="'oprm': answer context + question templates with OPRM; 'prompt': read them whole."
    )
    condense_questions: bool = Field(
        default=False, description="Let the model rewrite follow-ups in condense prompts (else keep them as asked)."
    )
    _engine: OPRM = PrivateAttr()

    def __init__(self, engine: OPRM, **kwargs: Any) -> None:
        if isinstance(engine, (str, Path)) or not hasattr(engine, "rank"):  # a path where the engine goes
            raise TypeError(
                f"engine: expected an overflow_core.OPRM (or use OverflowLLM.from_pretrained(path)), got "
                f"{type(engine).__name__}"
            )
        kwargs.setdefault("model_name", engine.name)
        super().__init__(**kwargs)
        self._engine = engine

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, **kwargs: Any) -> OverflowLLM:
        """Load a model (``None``: the bundled one) through the core's loader and wrap it, like ``HuggingFaceLLM``.

        Keywords are this class's options (``context_window``, ``max_new_tokens``, ``temperature``, ``seed``, ``stop``,
        ...) or settings of the engine (``device``, ``dtype``, ``chunk_tokens``, ... : whatever
        :meth:`OPRM.from_pretrained` takes); anything else raises ``TypeError``. Classes built with ``from_pretrained``
        and the same model and engine settings share one engine.

        Example:
            >>> llm = OverflowLLM.from_pretrained(max_new_tokens=16, chunk_tokens=256)  # doctest: +SKIP
        """
        own, settings = split_settings("OverflowLLM.from_pretrained", kwargs, set(cls.model_fields))
        return cls(shared_engine(name_or_path, **settings), **own)

    @classmethod
    def class_name(cls) -> str:
        return "OverflowLLM"

    @property
    def engine(self) -> OPRM:
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        num_output = self.max_new_tokens if self.max_new_tokens is not None else self._engine.config.max_new_tokens
        return LLMMetadata(
            context_window=self.context_window,
            num_output=num_output,
            model_name=self.model_name,
            is_chat_model=False,
        )

    def count_tokens(self, text: str) -> list[int]:
        """The model's token ids for ``text`` (a tokenizer for LlamaIndex's ``PromptHelper`` and node parsers)."""
        return list(self._engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- recognising packed prompts -------------------------------------------------------------------------------------
    def _get_prompt(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        """LlamaIndex's hook between a template and :meth:`complete`: templates with a context and a question become
        the engine's prompt for them, carrying the parts (see the class docstring)."""
        template = prompt.select(llm=self) if isinstance(prompt, SelectorPromptTemplate) else prompt
        variables = {**template.kwargs, **prompt_args}
        question = variables.get(_QUESTION_VAR)
        context = next((variables[v] for v in _CONTEXT_VARS if v in variables), None)
        if isinstance(context, (list, tuple)) and all(isinstance(c, str) for c in context):
            context = "\n\n".join(context)  # SimpleSummarize passes its (truncated) context as a list of strings
        packed = isinstance(question, str) and question.strip() and isinstance(context, str) and context.strip()
        if self.context_mode == "oprm" and packed:
            existing = variables.get("existing_answer")
            return _PackedPrompt(
                self._engine.user_message(str(context), str(question)),
                context=str(context),
                question=str(question).strip(),
                existing_answer=None if existing is None else str(existing),
            )
        follow_up = variables.get("question")
        if not self.condense_questions and "chat_history" in variables and isinstance(follow_up, str):
            return _KeptQuestion(super()._get_prompt(prompt, **prompt_args), question=follow_up)
        return super()._get_prompt(prompt, **prompt_args)

    # -- generation -----------------------------------------------------------------------------------------------------
    def _decoding(self, kwargs: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        decoding = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, **kwargs}
        seed = decoding.pop("seed", self.seed)
        if decoding.get("stop") is None:
            decoding["stop"] = self.stop if self.stop is not None else prompt_markers(self._engine)
        decoding["stop"] = tuple(decoding["stop"])
        return seed, {k: v for k, v in decoding.items() if v is not None}

    def _generate(self, ids: Sequence[int], kwargs: dict[str, Any], lstrip: bool | None = None) -> _Run:
        seed, decoding = self._decoding(kwargs)
        generation = self._engine.complete(ids, seed=seed, lstrip=lstrip, **decoding)
        return _Run(iter(generation), lambda: usage(generation))

    def _fixed(self, text: str, **extra: Any) -> _Run:
        return _Run(iter([text] if text else []), lambda: {**usage(), **extra})

    def _answer(self, context: str, question: str, kwargs: dict[str, Any]) -> _Run:
        """OPRM over ``context``: one chunk continues its (possibly cached) prompt; several are scored, best decoded."""
        context_ids = encode_text(self._engine.tokenizer, context.strip())
        if len(context_ids) <= self._engine.config.chunk_tokens:  # one chunk: its prompt, maybe cached
            ids = self._engine.prompt(context_ids, self._engine.encode_question(question))
            run = self._generate(ids, kwargs, lstrip=True)
            return _Run(iter(run), lambda: {**run.usage(), "oprm_chunks": 1, "not_found": self._is_not_found(run.text)})
        seed, decoding = self._decoding(kwargs)
        stream = self._engine.stream_answer(question, [context], seed=seed, **decoding)

        def finish() -> dict[str, Any]:
            answer = stream.result
            return {
                "prompt_forward_tokens": answer.usage.prompt_tokens,
                "reused_tokens": answer.usage.reused_tokens,
                "generated_tokens": answer.usage.generated_tokens,
                "finish_reason": None,
                "oprm_chunks": len(stream.result.ranking or ()),
                "not_found": answer.not_found,
            }

        return _Run(iter(stream), finish)

    def _one_chunk(self, context: str) -> bool:
        return len(encode_text(self._engine.tokenizer, context.strip())) <= self._engine.config.chunk_tokens

    def _is_not_found(self, text: str) -> bool:
        return text.strip().lower().startswith(self._engine.config.not_found.strip().lower())

    def _refine(self, packed: _PackedPrompt, kwargs: dict[str, Any]) -> _Run:
        existing = packed.existing_answer or ""
        if existing.strip() and not self._is_not_found(existing):
            return self._fixed(existing, refine="kept")  # the higher-ranked node already answered
        run = self._answer(packed.context, packed.question, kwargs)
        text = "".join(run)  # not streamed: a not-found answer gives way to the answer so far
        meta = run.usage()
        if self._is_not_found(text) and existing.strip():
            return self._fixed(existing, **{**meta, "refine": "kept"})
        return self._fixed(text, **{**meta, "refine": "replaced"})

    def _prompt_run(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> _Run:
        if isinstance(prompt, _KeptQuestion):
            return self._fixed(prompt.question.strip())
        if isinstance(prompt, _PackedPrompt):
            if prompt.existing_answer is not None:
                return self._refine(prompt, kwargs)
            return self._answer(prompt.context, prompt.question, kwargs)
        parsed = self._engine.template.parse(prompt) if self.context_mode == "oprm" else None
        if parsed is not None and parsed[1].strip() and not self._one_chunk(parsed[0]):
            return self._answer(parsed[0], parsed[1], kwargs)  # the engine's own format around a long context
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        return self._generate(self._engine.encode_prompt(prompt), kwargs)

    def _message_run(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Run:
        ids = self._engine.encode_messages([{"role": m.role.value, "content": m.content or ""} for m in messages])
        return self._generate(ids, kwargs, lstrip=True)

    @staticmethod
    def _complete(run: _Run) -> CompletionResponse:
        for _ in run:
            pass
        return CompletionResponse(text=run.text, additional_kwargs=run.usage())

    @staticmethod
    def _stream(run: _Run) -> CompletionResponseGen:
        text = ""
        for piece in run:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield CompletionResponse(text=text, delta="", additional_kwargs=run.usage())

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(self._prompt_run(prompt, formatted, kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream(self._prompt_run(prompt, formatted, kwargs))

    @staticmethod
    def _chat_response(response: CompletionResponse) -> ChatResponse:
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
            delta=response.delta,
            additional_kwargs=response.additional_kwargs,
        )

    def _stream_chat(self, run: _Run) -> ChatResponseGen:
        for response in self._stream(run):
            yield self._chat_response(response)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat_response(self._complete(self._message_run(messages, kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(self._message_run(messages, kwargs))

    # -- async: the model runs in worker threads so the event loop stays free --------------------------------------------
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(lambda: self._complete(self._prompt_run(prompt, formatted, kwargs)))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return _aiter_in_thread(lambda: self._stream(self._prompt_run(prompt, formatted, kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        response = await asyncio.to_thread(lambda: self._complete(self._message_run(messages, kwargs)))
        return self._chat_response(response)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return _aiter_in_thread(lambda: self._stream_chat(self._message_run(messages, kwargs)))
