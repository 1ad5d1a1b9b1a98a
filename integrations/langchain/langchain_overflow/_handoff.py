"""The state handoff: the prompt that continues the retriever's state, and a check for calls that could have and did not.

The retriever leaves the states of its top chunks in the engine's state cache, keyed by their full prompt ids. A model
call on the same engine whose prompt is one of those ids decodes without running the prompt again. Nothing else links
the two, so a prompt in other words, a system message, a second engine of the same model or a completion model fed the
chat prompt silently runs the whole prompt again. :func:`remember` keeps a short record of recent retrievals per model
(by fingerprint, so a second engine of the same model is recognised) and :func:`check` compares a model call that missed
the cache with it: when the call holds a recently retrieved chunk and its question, it warns :class:`HandoffWarning`
naming the cause and the fix, or raises :class:`HandoffError` when the model was built with ``strict_handoff=True``.
"""

from __future__ import annotations

import re
import threading
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_overflow._engines import identify
from overflow_core import OPRM, ChunkScore
from overflow_core.errors import OverflowCoreError

__all__ = ["HandoffError", "HandoffWarning", "check", "message_content", "parse_message", "remember"]

_SENTINEL = "\u2063LANGCHAIN_OVERFLOW_MESSAGE\u2063"
_RECENT_MODELS = 8  # models (fingerprints) remembered
_RECENT_RETRIEVALS = 16  # retrievals remembered per model


class HandoffWarning(UserWarning):
    """A model call ran the whole prompt although a recent retrieval's state could have been continued."""


class HandoffError(OverflowCoreError, RuntimeError):
    """Raised instead of :class:`HandoffWarning` by a model built with ``strict_handoff=True``."""


# -- the message a chat model receives ---------------------------------------------------------------------------------
_wrappings: weakref.WeakKeyDictionary[OPRM, tuple[str, str] | None] = weakref.WeakKeyDictionary()
_wrappings_lock = threading.Lock()


def _chat_wrapping(engine: OPRM) -> tuple[str, str] | None:
    """``(before, after)``: what the tokenizer's chat template puts around one user message.

    None unless the engine's prompt template is that chat template around a user message (so the message alone is the
    prompt's content).
    """
    with _wrappings_lock:
        if engine in _wrappings:
            return _wrappings[engine]
    wrapping: tuple[str, str] | None = None
    tokenizer = engine.tokenizer
    if getattr(tokenizer, "chat_template", None):
        try:
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
        except Exception:  # a template that cannot render one user message: no wrapping to strip
            rendered = None
        if isinstance(rendered, str) and rendered.count(_SENTINEL) == 1:
            bos = getattr(tokenizer, "bos_token", None)
            if bos and rendered.startswith(bos):
                rendered = rendered[len(bos) :]
            before, after = rendered.split(_SENTINEL)
            template = engine.template
            if (before or after) and template.prefix.startswith(before) and template.suffix.endswith(after):
                wrapping = (before, after)
    with _wrappings_lock:
        _wrappings[engine] = wrapping
    return wrapping


def message_content(engine: OPRM, chunk: str, question: str) -> str:
    """The text of the one human message that maps to the engine's prompt for ``chunk`` and ``question``.

    With a chat template, the user turn's content only (instruction, document, question), never the template's own
    markers: the chat model applies the template, as for any message. Without one, the engine's whole prompt.
    """
    full = engine.user_message(chunk, question)
    wrapping = _chat_wrapping(engine)
    if wrapping is None:
        return full
    before, after = wrapping
    return full[len(before) : len(full) - len(after)]


def parse_message(engine: OPRM, content: str) -> tuple[str, str] | None:
    """``(chunk, question)`` when ``content`` is :func:`message_content` output (or the engine's whole prompt), else None."""
    wrapping = _chat_wrapping(engine)
    if wrapping is not None:
        parsed = engine.template.parse(wrapping[0] + content + wrapping[1])
        if parsed is not None:
            return parsed
    return engine.template.parse(content)


# -- recent retrievals ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Retrieval:
    engine: weakref.ref[OPRM]
    question: str
    chunks: tuple[str, ...]  # texts of the chunks whose states were cached, best first
    prompts: frozenset[tuple[int, ...]]  # their full prompt ids


_recent: OrderedDict[str, deque[_Retrieval]] = OrderedDict()
_recent_lock = threading.Lock()


def remember(engine: OPRM, question: str, cached: Sequence[ChunkScore]) -> None:
    """Record that ``engine`` just scored ``question`` and left the states of the ``cached`` chunks in its cache."""
    if not cached:
        return
    try:
        q_ids = engine.encode_question(question)
    except OverflowCoreError:
        return
    record = _Retrieval(
        engine=weakref.ref(engine),
        question=question,
        chunks=tuple(s.chunk.text for s in cached),
        prompts=frozenset(tuple(engine.prompt(s.chunk.ids, q_ids)) for s in cached),
    )
    key = identify(engine).fingerprint
    with _recent_lock:
        queue = _recent.setdefault(key, deque(maxlen=_RECENT_RETRIEVALS))
        queue.append(record)
        _recent.move_to_end(key)
        while len(_recent) > _RECENT_MODELS:
            _recent.popitem(last=False)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _mentions(text_words: set[str], text_joined: str, question: str, chunk: str) -> bool:
    """``text`` holds ``question`` (word for word) and most of ``chunk``'s words (any wording or formatting around them)."""
    q = " ".join(_words(question))
    if not q or q not in text_joined:
        return False
    chunk_words = set(_words(chunk))
    return bool(chunk_words) and len(chunk_words & text_words) >= 0.8 * len(chunk_words)


def _missed(
    engine: OPRM, prompt_ids: Sequence[int], text: str, kind: str, n_messages: int, has_system: bool
) -> str | None:
    key = identify(engine).fingerprint
    with _recent_lock:
        records = list(_recent.get(key, ()))
    if not records:
        return None
    ids = tuple(prompt_ids)
    words = _words(text)
    word_set, joined = set(words), " ".join(words)
    for record in reversed(records):  # newest first
        other_engine = record.engine() is not engine
        if ids in record.prompts:
            if other_engine:
                return (
                    "the retriever ran on another engine of the same model: each engine has its own state cache, so "
                    "this one ran the whole prompt again. Build both from one engine (ChatOverflow(engine=retriever."
                    "engine), or one model= string: equal model= and settings share one engine)"
                )
            return (
                "the retriever's state for this prompt is no longer in the engine's state cache (evicted, or "
                f"state_cache_bytes={engine.config.state_cache_bytes} is too small or 0), so the whole prompt ran again"
            )
        if not any(_mentions(word_set, joined, record.question, chunk) for chunk in record.chunks):
            continue
        if kind == "llm" and text.lstrip().startswith(("Human:", "System:")):
            cause = (
                "OverflowLLM got a chat prompt rendered as text ('Human: ...'); with OverflowLLM use "
                "format_docs_for(engine), or use ChatOverflow with overflow_rag_prompt(engine)"
            )
        elif kind == "chat" and (has_system or n_messages > 1):
            cause = (
                "the messages are not the one human message of overflow_rag_prompt(engine) (a system message or "
                "earlier turns come with it), so they are not the prompt the retriever scored; drop them, or use "
                "create_overflow_chain(retriever)"
            )
        else:
            helper = "format_docs_for(engine)" if kind == "llm" else "overflow_rag_prompt(engine)"
            cause = (
                "the prompt holds a retrieved chunk and its question in other words than the engine's prompt (an "
                f"ordinary prompt template?), so it is not the prompt the retriever scored; use {helper}, or "
                "create_overflow_chain(retriever)"
            )
        if other_engine:
            cause += "; also, the retriever ran on another engine of the same model: share one engine"
        return cause
    return None


def check(
    model: Any,
    engine: OPRM,
    prompt_ids: Sequence[int],
    forward_tokens: int,
    text: str,
    *,
    kind: str,
    n_messages: int = 1,
    has_system: bool = False,
) -> None:
    """Warn (or raise, with ``model.strict_handoff``) when a call ran a prompt whose state a retrieval had cached.

    ``forward_tokens``: prompt tokens the call ran through the model.
    """
    if forward_tokens == 0:
        return
    cause = _missed(engine, prompt_ids, text, kind, n_messages, has_system)
    if cause is None:
        return
    # no token count in the warning: one text per cause, so Python's warning filter shows it once, not on every call
    message = f"{type(model).__name__}: no state handoff, the whole prompt was run again: {cause}"
    if getattr(model, "strict_handoff", False):
        raise HandoffError(f"{message} ({forward_tokens} prompt tokens)")
    warnings.warn(message, HandoffWarning, stacklevel=4)
