"""LongBench prompts as engine templates: ``prefix + chunk + infix + question + suffix``.

The engine wraps every chunk in one template (see :mod:`overflow_core.prompting`); here a LongBench prompt is cut into
that shape. ``{context}`` becomes the chunk (the whole context in vanilla mode) and the item's ``input`` the question;
everything else is the dataset's fixed text, so OPRM and vanilla see exactly LongBench's prompt around their text. For
the five datasets whose prompt takes no ``input`` (gov_report, multi_news, vcsum, passage_count, lcc) the text after the
context is the question, so every chunk is still followed by the instruction, as the paper's script does.

The engine strips the whitespace around a chunk and a question. Where LongBench's prompt joins them with nothing in
between (lcc: ``{context}Next line of code``; repobench-p: ``{context}{input}Next line of code``) the newline the code
ended with is put back, so the instruction never lands on a line of code.

In OPRM mode the not-found sentence goes in as the paper's script places it (after the closing instruction, before
``Question:``; qasper's ``"unanswerable"`` becomes the not-found phrase); datasets without one (summaries, few-shot,
counting, code) get none. The chat template, when the tokenizer has one, wraps the whole prompt as one user turn.
"""

from __future__ import annotations

from typing import Any

from overflow_core.chunking import encode_text
from overflow_core.errors import ConfigError
from overflow_core.longbench.data import Item
from overflow_core.longbench.datasets import V2, DatasetSpec
from overflow_core.prompting import PromptTemplate

__all__ = ["instruction_framing", "question_for", "supports_idk", "tail_text", "template_for", "v2_template"]

_CTX = "\u2063LONGBENCH_CONTEXT\u2063"
_Q = "\u2063LONGBENCH_QUESTION\u2063"


def _with_idk(spec: DatasetSpec, not_found: str) -> str:
    prompt = spec.prompt
    if spec.idk_replaces:
        return prompt.replace(f'"{spec.idk_replaces}"', f'"{not_found}"')
    if spec.idk_before:
        head, sep, tail = prompt.rpartition(spec.idk_before)
        return head + spec.idk_sentence.replace("{nf}", not_found) + sep + tail
    return prompt


def supports_idk(spec: DatasetSpec) -> bool:
    """Whether the dataset has a place for the not-found sentence (QA and retrieval do; summaries, code... do not)."""
    return bool(spec.idk_before or spec.idk_replaces)


def _lead(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


def _trail(text: str) -> str:
    return text[len(text.rstrip()) :]


def _parts(spec: DatasetSpec, idk: bool, not_found: str) -> tuple[str, str, str]:
    """``(before, infix, suffix)`` around the chunk and the question, before any chat framing."""
    prompt = _with_idk(spec, not_found) if idk else spec.prompt
    before, rest = prompt.split("{context}")
    if spec.has_input:
        between, after = rest.split("{input}")
        infix = between if between[:1].isspace() else "\n" + between
        suffix = after if not after or after[:1].isspace() else "\n" + after
        return before, infix, suffix
    return before, _lead(rest) or "\n", _trail(rest)


def question_for(spec: DatasetSpec, item: Item) -> str:
    """What goes between the template's infix and suffix: the item's input, or the dataset's closing instruction."""
    if spec.has_input:
        return item.input.strip()
    return spec.prompt.split("{context}")[1].strip()


def instruction_framing(template: PromptTemplate) -> bool:
    """Whether an engine template uses the ``Instruction: ... Input: ... Response:`` framing (the paper's RWKV prompt,
    for a tokenizer without a chat template); LongBench prompts then get the same framing."""
    return template.prefix.startswith("Instruction: ") and template.suffix.rstrip().endswith("Response:")


def _framed(
    tokenizer: Any, before: str, infix: str, suffix: str, chat: bool, instruction: bool = False
) -> PromptTemplate:
    if not chat or not getattr(tokenizer, "chat_template", None):
        if chat and instruction:  # the paper's RWKV framing: Instruction: <prompt head>\n\nInput: <chunk>...\n\nResponse:
            return PromptTemplate(prefix=f"Instruction: {before}\n\nInput: ", infix=infix, suffix=f"{suffix}\n\nResponse:")
        return PromptTemplate(prefix=before, infix=infix, suffix=suffix)
    content = f"{before}{_CTX}{infix}{_Q}{suffix}"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(rendered, str) or rendered.count(_CTX) != 1 or rendered.count(_Q) != 1:
        raise ConfigError("the tokenizer's chat template did not render the LongBench prompt verbatim")
    bos = getattr(tokenizer, "bos_token", None)
    if bos and rendered.startswith(bos):
        rendered = rendered[len(bos) :]  # the engine adds the BOS id itself
    prefix, rest = rendered.split(_CTX)
    infix_, suffix_ = rest.split(_Q)
    return PromptTemplate(prefix=prefix, infix=infix_, suffix=suffix_)


def template_for(
    spec: DatasetSpec, tokenizer: Any, *, idk: bool, not_found: str, chat: bool, instruction: bool = False
) -> PromptTemplate:
    """The engine template of ``spec``: LongBench's prompt, the not-found sentence when ``idk``, in the chat template
    when ``chat`` and the tokenizer has one (else, with ``instruction``, in the ``Instruction/Input/Response`` framing).

    Example:
        >>> from overflow_core.longbench.datasets import DATASETS
        >>> t = template_for(DATASETS["hotpotqa"], tokenizer=None, idk=False, not_found="Error", chat=False)
        >>> t.suffix
        '\\nAnswer:'
    """
    before, infix, suffix = _parts(spec, idk and supports_idk(spec), not_found)
    return _framed(tokenizer, before, infix, suffix, chat, instruction)


def v2_template(
    tokenizer: Any, *, idk: bool, not_found: str, chat: bool, instruction: bool = False
) -> PromptTemplate:
    """LongBench v2's 0-shot prompt as a template; the question is :meth:`V2Spec.question` of the item."""
    suffix = V2.after + (V2.idk_sentence.replace("{nf}", not_found) if idk else "")
    return _framed(tokenizer, V2.before, V2.between, suffix, chat, instruction)


def tail_text(tokenizer: Any, text: str, n_tokens: int) -> str:
    """The end of ``text`` that encodes to at most ``n_tokens`` tokens, cut at a token boundary (code completion keeps
    only the last chunk, as the paper does for LCC)."""
    if n_tokens < 1:
        raise ConfigError(f"n_tokens: expected a positive number of tokens, got {n_tokens}")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= n_tokens:
        return text
    first = len(offsets) - n_tokens
    piece = text[offsets[first][0] :]
    while first < len(offsets) - 1 and len(encode_text(tokenizer, piece)) > n_tokens:
        first += 1  # the piece encoded alone (as the engine's chunker reads it) can take more tokens than inside the text
        piece = text[offsets[first][0] :]
    return piece
