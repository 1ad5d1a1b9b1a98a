"""Prompting: wrap a chunk and a question as ``prefix + chunk + infix + question + suffix``.

The split is the point of this module. Everything up to and including ``infix`` depends only on the chunk, never on the
question, so the recurrent state after it can be computed once and reused for any question (see :mod:`overflow_core.index`).
Each part is tokenized on its own and the ids are concatenated, so the token ids of ``prefix + chunk + infix`` never change
with the question either.

With a tokenizer that has a chat template the parts are cut out of the rendered template; otherwise a plain instruction
template is used. The "not found" phrase and the token ids that start it are derived from the tokenizer, never hard-coded.
This module knows nothing about models or tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from overflow_core.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_NOT_FOUND",
    "PromptIds",
    "PromptTemplate",
    "build_template",
    "encode_template",
    "not_found_token_ids",
]

DEFAULT_INSTRUCTION = "Read the document and answer the question."
DEFAULT_NOT_FOUND = "not found"
_CONTEXT_SENTINEL = "\u2063OVERFLOW_CONTEXT\u2063"
_QUESTION_SENTINEL = "\u2063OVERFLOW_QUESTION\u2063"


@dataclass(frozen=True)
class PromptTemplate:
    """The three fixed strings around a chunk and a question.

    The full prompt is ``prefix + chunk + infix + question + suffix``; the answer follows ``suffix``.

    Example:
        >>> t = PromptTemplate(prefix="Doc:\\n", infix="\\nQ: ", suffix="\\nA:")
        >>> t.render("The sky is blue.", "What colour is the sky?")
        'Doc:\\nThe sky is blue.\\nQ: What colour is the sky?\\nA:'
    """

    prefix: str
    infix: str
    suffix: str

    def render(self, chunk: str, question: str) -> str:
        """The prompt as one string (for display and for the vanilla baseline's readers)."""
        return f"{self.prefix}{chunk}{self.infix}{question}{self.suffix}"

    def parse(self, prompt: str) -> tuple[str, str] | None:
        """``(chunk, question)`` if ``prompt`` is this template filled in, else None (the inverse of :meth:`render`)."""
        if not (prompt.startswith(self.prefix) and prompt.endswith(self.suffix)) or not self.infix:
            return None
        body = prompt[len(self.prefix) : len(prompt) - len(self.suffix)]
        chunk, sep, question = body.rpartition(self.infix)
        return (chunk, question) if sep else None

    def to_dict(self) -> dict[str, str]:
        return {"prefix": self.prefix, "infix": self.infix, "suffix": self.suffix}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        missing = {"prefix", "infix", "suffix"} - set(data)
        if missing:
            raise ConfigError(f"prompt template: expected keys prefix, infix, suffix; missing {sorted(missing)}")
        return cls(prefix=str(data["prefix"]), infix=str(data["infix"]), suffix=str(data["suffix"]))


@dataclass(frozen=True)
class PromptIds:
    """Token ids of the template's parts, tokenized one part at a time."""

    prefix: tuple[int, ...]
    infix: tuple[int, ...]
    suffix: tuple[int, ...]

    @property
    def overhead(self) -> int:
        """Tokens the template adds around a chunk and a question."""
        return len(self.prefix) + len(self.infix) + len(self.suffix)


def _user_content(instruction: str, not_found: str) -> str:
    return (
        f"{instruction}\n<doc>\n{_CONTEXT_SENTINEL}\n</doc>\nQuestion: {_QUESTION_SENTINEL}\n"
        f'If the document does not say, answer "{not_found}".'
    )


def build_template(
    tokenizer: Any,
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    not_found: str = DEFAULT_NOT_FOUND,
    use_chat_template: bool | None = None,
) -> PromptTemplate:
    """Derive the prompt template for ``tokenizer``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        instruction: the task instruction placed before the document.
        not_found: the phrase the model is told to answer when the document does not hold the answer.
        use_chat_template: ``None`` uses the tokenizer's chat template when it has one; ``True`` requires one.

    Returns:
        A :class:`PromptTemplate` whose prefix/infix/suffix are cut out of the rendered chat template, or a plain
        ``Instruction / Document / Question / Answer`` template.
    """
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has_chat:
        raise ConfigError("use_chat_template=True, but the tokenizer has no chat_template")
    content = _user_content(instruction, not_found)
    if has_chat and use_chat_template is not False:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(rendered, str) or rendered.count(_CONTEXT_SENTINEL) != 1:
            raise ConfigError("the tokenizer's chat template did not render the user message verbatim")
        bos = getattr(tokenizer, "bos_token", None)
        if bos and rendered.startswith(bos):
            rendered = rendered[len(bos) :]  # the BOS id is added once, as a token, by encode_template
    else:
        rendered = content.replace(f"{instruction}\n", f"Instruction: {instruction}\n", 1) + "\nAnswer:"
    prefix, rest = rendered.split(_CONTEXT_SENTINEL)
    infix, suffix = rest.split(_QUESTION_SENTINEL)
    return PromptTemplate(prefix=prefix, infix=infix, suffix=suffix)


def _encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    if not text:
        return ()
    return tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_template(tokenizer: Any, template: PromptTemplate) -> PromptIds:
    """Tokenize each part of ``template`` on its own. A BOS token, when the tokenizer adds one, opens the prefix."""
    prefix = _encode(tokenizer, template.prefix)
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is not None and probe and probe[0] == bos_id and (not prefix or prefix[0] != bos_id):
        prefix = (int(bos_id), *prefix)
    return PromptIds(
        prefix=prefix, infix=_encode(tokenizer, template.infix), suffix=_encode(tokenizer, template.suffix)
    )


def not_found_token_ids(tokenizer: Any, not_found: str) -> frozenset[int]:
    """Ids of the tokens that can start the answer ``not_found`` right after the prompt.

    The answer may be tokenized with or without a leading space (``"Error"`` and ``" Error"`` are different tokens in
    most vocabularies); the first token of each variant counts. Case is kept as given: the prompt tells the model the
    exact phrase, and adding case variants would flag real answers that merely start with the same letter.
    """
    phrase = not_found.strip()
    if not phrase:
        raise ConfigError("not_found: expected a non-empty phrase")
    variants = {phrase, " " + phrase}
    ids: set[int] = set()
    for variant in variants:
        encoded = _encode(tokenizer, variant)
        if encoded:
            ids.add(encoded[0])
    if not ids:
        raise InputError(f"not_found: the tokenizer encodes {not_found!r} to no tokens")
    return frozenset(ids)
