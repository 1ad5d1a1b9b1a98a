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

import contextlib
import itertools
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overflow_core.errors import ConfigError, InputError
from overflow_core.types import check_text

__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_NOT_FOUND",
    "MAX_NOT_FOUND_TOKENS",
    "NotFoundIds",
    "PromptIds",
    "PromptTemplate",
    "build_template",
    "control_token_ids",
    "encode_chat",
    "encode_template",
    "encode_text",
    "format_markers",
    "not_found_token_ids",
]

_LABEL = re.compile(r"^[ \t]*([A-Z][A-Za-z ]{0,30}:)", re.M)  # "Question:" at a line start
_TAG = re.compile(r"^[ \t]*(</?[A-Za-z][\w-]*>)[ \t]*$", re.M)  # "<doc>" alone on a line

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
    def from_dict(cls, data: Mapping[str, Any]) -> PromptTemplate:
        """The template from ``{"prefix", "infix", "suffix"}`` (strings; no other keys)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"template: expected a {{prefix, infix, suffix}} object, got {type(data).__name__}")
        missing = {"prefix", "infix", "suffix"} - set(data)
        extra = set(data) - {"prefix", "infix", "suffix"}
        if missing or extra:
            raise ConfigError(
                f"template: expected keys prefix, infix, suffix; missing {sorted(missing)}, unknown {sorted(map(str, extra))}"
            )
        for key in ("prefix", "infix", "suffix"):
            if not isinstance(data[key], str):
                raise ConfigError(f"template.{key}: expected a string, got {type(data[key]).__name__}")
        return cls(prefix=data["prefix"], infix=data["infix"], suffix=data["suffix"])


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
    _refuse_control_text(tokenizer, instruction=instruction, not_found=not_found)
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


@dataclass(frozen=True)
class _Controls:
    ids: frozenset[int]
    strings: tuple[str, ...]  # their texts, longest first


_CONTROLS: weakref.WeakKeyDictionary[Any, _Controls] = weakref.WeakKeyDictionary()


def _controls(tokenizer: Any) -> _Controls:
    try:
        return _CONTROLS[tokenizer]
    except (KeyError, TypeError):
        pass
    template = getattr(tokenizer, "chat_template", None)
    template_text = template if isinstance(template, str) else str(template or "")
    found: dict[int, str] = {}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for i, token in decoder.items():
        content = str(getattr(token, "content", token))
        if getattr(token, "special", False) or (content and content in template_text):
            found[int(i)] = content
    names, ids = list(getattr(tokenizer, "all_special_tokens", ())), list(getattr(tokenizer, "all_special_ids", ()))
    for name, i in zip(names, ids, strict=len(names) == len(ids)):
        found.setdefault(int(i), str(name))
    unk = getattr(tokenizer, "unk_token_id", None)
    found.pop(-1 if unk is None else int(unk), None)  # UNK is what ordinary unknown text becomes: not a control
    controls = _Controls(
        ids=frozenset(found), strings=tuple(sorted({s for s in found.values() if s}, key=len, reverse=True))
    )
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced is simply not cached
        _CONTROLS[tokenizer] = controls
    return controls


def control_token_ids(tokenizer: Any) -> frozenset[int]:
    """The ids user text must never produce: every special token of ``tokenizer`` (BOS, EOS, pad, chat-template markers,
    additional specials) and every added token whose text appears in its chat template. The unknown token is not one:
    it is what ordinary characters outside a vocabulary become."""
    return _controls(tokenizer).ids


def _encode_plain(tokenizer: Any, text: str, **kwargs: Any) -> Any:
    """``tokenizer(text)`` with the literal text of special tokens read as ordinary characters."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True, **kwargs)


def _split_controls(text: str, strings: Sequence[str]) -> list[str]:
    """``text`` cut inside every occurrence of a control token's text (after its first character), so no piece holds one."""
    cuts: set[int] = set()
    for s in strings:
        if len(s) < 2:
            continue
        at = text.find(s)
        while at >= 0:
            cuts.add(at + 1)
            at = text.find(s, at + 1)
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def encode_text(tokenizer: Any, text: str) -> tuple[int, ...]:
    """The ids of ``text`` alone, as user text: no special tokens added, and none read out of the text.

    A document or question holding the literal text of a special token (``"<|end|>"``, ``"<|im_start|>"``, the pad or
    EOS token) gets the ids of those characters, never the special id, so user text cannot fake a turn of the prompt or
    end it early. The template parts the engine writes itself are encoded elsewhere (:func:`~overflow_core.prompting.
    encode_template`) and keep their special ids.

    Raises:
        InputError: the text is not a string or is not valid Unicode (a lone surrogate), or the tokenizer can encode
            some character of it only as one of its special tokens.
    """
    check_text("text", text)
    if not text:
        return ()
    ids = tuple(int(i) for i in _encode_plain(tokenizer, text)["input_ids"])
    controls = _controls(tokenizer)
    if controls.ids.isdisjoint(ids):
        return ids
    # an added token that is not "special" is matched even so (or the vocabulary spells a special one): encode the text
    # in pieces cut inside each occurrence; the pieces decode to the same text
    ids = tuple(
        int(i)
        for piece in _split_controls(text, controls.strings)
        for i in _encode_plain(tokenizer, piece)["input_ids"]
    )
    leaked = sorted(controls.ids.intersection(ids))
    if leaked:
        names = [tokenizer.convert_ids_to_tokens(i) for i in leaked]
        raise InputError(f"text: this tokenizer encodes part of {text[:40]!r} only as its special token(s) {names}")
    return ids


def _refuse_control_text(tokenizer: Any, **texts: str) -> None:
    """Settings that go into the prompt as text (the instruction, the not-found phrase) must not spell a control token:
    the template is encoded with its special tokens, so one there would become a real turn marker or EOS."""
    for name, text in texts.items():
        hit = next((c for c in _controls(tokenizer).strings if len(c) > 1 and c in text), None)
        if hit is not None:
            raise ConfigError(f"{name}: expected plain text, got {text!r}, which holds the special token {hit!r}")


_MESSAGE_SENTINEL = "\u2063OVERFLOW_MESSAGE_{}\u2063"


def _render_chat(tokenizer: Any, messages: list[Any]) -> str:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except Exception as exc:  # jinja raises its own errors for roles or orders a template does not accept
        raise InputError(
            f"messages: the tokenizer's chat template refused them ({type(exc).__name__}: {exc})"
        ) from None


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Ids of chat ``messages`` through the tokenizer's chat template, ready for the assistant's reply.

    What the template writes (role markers, turn ends) keeps its special ids; every message's content is user text
    (:func:`~overflow_core.chunking.encode_text`), so a message cannot fake a turn. A BOS the template writes first is
    left out, as in :func:`build_template` (the engine adds the BOS id itself).

    Raises:
        InputError: a message without a string ``role`` and ``content``, or a template that does not render message
            contents verbatim while a content holds the text of a special token.
    """
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InputError(f"messages[{i}]: expected a {{'role': str, 'content': str}} mapping, got {m!r:.80}")
        check_text(f"messages[{i}].content", m["content"])
    masked = [{**m, "content": _MESSAGE_SENTINEL.format(i)} for i, m in enumerate(messages)]
    rendered = _render_chat(tokenizer, masked)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and rendered.startswith(bos):
        rendered = rendered[len(bos) :]
    ids: list[int] = []
    rest = rendered
    for i, m in enumerate(messages):
        before, sep, rest = rest.partition(_MESSAGE_SENTINEL.format(i))
        if not sep or _MESSAGE_SENTINEL.format(i) in rest:
            break
        ids += [*_encode(tokenizer, before), *encode_text(tokenizer, m["content"])]
    else:
        return ids + list(_encode(tokenizer, rest))
    # the template changes the content it renders: render it as it is, refusing what would smuggle a control token
    for i, m in enumerate(messages):
        hit = next((c for c in _controls(tokenizer).strings if len(c) > 1 and c in m["content"]), None)
        if hit is not None:
            raise InputError(
                f"messages[{i}].content: holds the special token {hit!r}, and this chat template does not render "
                "contents verbatim, so it cannot be kept as plain text"
            )
    rendered = _render_chat(tokenizer, list(messages))
    if bos and rendered.startswith(bos):
        rendered = rendered[len(bos) :]
    return list(_encode(tokenizer, rendered))


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


MAX_NOT_FOUND_TOKENS = 16  # the not-found check teacher-forces at most this many tokens of the phrase


class NotFoundIds(frozenset):  # type: ignore[type-arg]
    """The ids that can start the not-found answer (this set, as before) and, in ``sequences``, the whole answer's ids
    for each way it can be tokenized right after the prompt (at most :data:`MAX_NOT_FOUND_TOKENS` each).

    The first token alone is not specific with every tokenizer: with a byte- or character-level vocabulary it is a space
    or one letter, which most answers start with. The scorer (:func:`overflow_core.selection.batch_signals`) therefore
    teacher-forces each sequence and flags a chunk only when greedy decoding would write the whole phrase.
    """

    sequences: tuple[tuple[int, ...], ...]

    def __new__(cls, sequences: Iterable[Sequence[int]]) -> NotFoundIds:
        seqs = tuple(tuple(int(i) for i in s) for s in sequences if len(s) > 0)
        obj = super().__new__(cls, {s[0] for s in seqs})
        obj.sequences = seqs
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotFoundIds, (self.sequences,))

    def __repr__(self) -> str:
        return f"NotFoundIds(sequences={self.sequences!r})"


def not_found_token_ids(tokenizer: Any, not_found: str) -> NotFoundIds:
    """The token ids of the answer ``not_found`` right after the prompt: a set of the ids that can start it, whose
    ``sequences`` hold the whole answer's ids per tokenization (see :class:`NotFoundIds`).

    The answer may be tokenized with or without a leading space (``"Error"`` and ``" Error"`` are different tokens in
    most vocabularies); both variants count. A variant whose ids extend another's is dropped (the shorter one already
    accounts for it). Case is kept as given: the prompt tells the model the exact phrase, and adding case variants
    would flag real answers that merely start with the same letters.
    """
    phrase = not_found.strip()
    if not phrase:
        raise ConfigError("not_found: expected a non-empty phrase")
    found: set[tuple[int, ...]] = set()
    for variant in (phrase, " " + phrase):
        encoded = _encode(tokenizer, variant)[:MAX_NOT_FOUND_TOKENS]
        if encoded:
            found.add(tuple(encoded))
    if not found:
        raise InputError(f"not_found: the tokenizer encodes {not_found!r} to no tokens")
    minimal = [s for s in found if not any(o != s and s[: len(o)] == o for o in found)]
    return NotFoundIds(sorted(minimal))


def format_markers(template: PromptTemplate, special_tokens: Iterable[str] = ()) -> list[str]:
    r"""The markers of a prompt format, as stop strings: the ``special_tokens`` its template uses (``<|end|>``,
    ``<|user|>``, ...), and each ``Label:`` or ``<tag>`` that opens a line of it (``"
Question:"``, ``"
</doc>"``).

    A model that answered and goes on writing the next question, document or turn has left the answer; these cut it.

    Example:
        >>> format_markers(PromptTemplate(prefix="<doc>\n", infix="\n</doc>\nQuestion: ", suffix="\nAnswer:"))
        ['\nQuestion:', '\nAnswer:', '\n<doc>', '\n</doc>']
    """
    text = template.prefix + template.infix + template.suffix
    special = [s for s in special_tokens if s and s in text]
    lines = [f"\n{m}" for m in (*_LABEL.findall(text), *_TAG.findall(text))]
    return list(dict.fromkeys([*special, *lines]))
