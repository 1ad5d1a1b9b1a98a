"""Settings for checkpoints that carry no ``overflow.json``: the paper's defaults, and presets for the paper's four models.

The paper (arXiv 2505.07793, its LongBench script) runs every model the same way: chunks of 2,000 tokens, at most 20 new
tokens for a QA answer, a task instruction before the chunk, the sentence "If the answer does not exist in the passages,
return "Error"" after it, the chat framing of the model's own template, and the answer cut at the template's end
marker. :func:`paper_settings` derives all of that from what the tokenizer and the config say (whether there is a chat
template, which marker closes a turn); nothing here is a token id written down per model.

A :class:`Preset` names one of the paper's models, says how to recognise it (repo id, folder name, ``model_type``) and
adds what differs from the paper's defaults for it (Falcon3-Mamba runs without the IDK filter; RWKV has no chat template
and uses the ``Instruction: / Input: / Response:`` framing). Everything is overridable: the checkpoint's
``overflow.json`` beats a preset, and keyword arguments beat both (see :func:`overflow_core.loading.load`).

This module knows nothing about weights, devices or the hub.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overflow_core.errors import ConfigError
from overflow_core.prompting import PromptTemplate

__all__ = [
    "PAPER_CHUNK_TOKENS",
    "PAPER_INSTRUCTION",
    "PAPER_MAX_NEW_TOKENS",
    "PAPER_NOT_FOUND",
    "PRESETS",
    "Preset",
    "apply_framing",
    "chat_end_marker",
    "find_preset",
    "paper_settings",
    "preset_settings",
]

PAPER_CHUNK_TOKENS = 2000  # the reference script tries 1000, 2000 and 3000; 2000 is its default
PAPER_MAX_NEW_TOKENS = 20  # LongBench QA tasks (summaries get 250-500: pass max_new_tokens=... per call)
PAPER_INSTRUCTION = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
)
PAPER_NOT_FOUND = "Error"  # one token in the paper's vocabularies; the IDK filter looks for the tokens that start it
_ANSWER_SENTINEL = "\u2063OVERFLOW_ANSWER\u2063"


def chat_end_marker(tokenizer: Any) -> str | None:
    """The string the chat template puts right after an assistant message (``<|im_end|>``, ``<end_of_turn>``), or None.

    Found by rendering a user turn and an assistant turn and reading what follows the assistant's text up to the first
    whitespace; ``None`` when the tokenizer has no chat template, the template cannot render that conversation, or
    nothing follows the reply.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _ANSWER_SENTINEL}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # templates raise their own errors (role order, missing system turn...)
        return None
    if not isinstance(rendered, str) or _ANSWER_SENTINEL not in rendered:
        return None
    tail = rendered.split(_ANSWER_SENTINEL, 1)[1].strip()
    marker = tail.split(None, 1)[0] if tail else ""
    return marker or None


def paper_settings(tokenizer: Any, hf_config: Any = None) -> dict[str, Any]:
    """The paper's settings for a model, chosen by its tokenizer and config.

    ``chunk_tokens`` 2,000 (less when the config's ``max_position_embeddings`` says the model was trained shorter),
    ``max_new_tokens`` 20, the paper's QA instruction and its not-found answer ``"Error"``, the IDK filter on, and
    ``stop`` at the chat template's end marker when there is a chat template (the prompt then uses the template's
    framing; without one it is the plain ``Instruction: ... Answer:`` framing). The tokenizer's EOS always stops.
    """
    settings: dict[str, Any] = {
        "chunk_tokens": PAPER_CHUNK_TOKENS,
        "max_new_tokens": PAPER_MAX_NEW_TOKENS,
        "instruction": PAPER_INSTRUCTION,
        "not_found": PAPER_NOT_FOUND,
        "idk_filter": True,
    }
    trained = getattr(hf_config, "max_position_embeddings", None)
    if isinstance(trained, int) and 0 < trained < PAPER_CHUNK_TOKENS + 256:
        settings["chunk_tokens"] = max(64, trained - 256)  # room for the instruction, the question and the answer
    marker = chat_end_marker(tokenizer)
    if marker is not None:
        settings["stop"] = (marker,)
    return settings


def _rwkv_framing(instruction: str, not_found: str) -> PromptTemplate:
    """The reference script's RWKV prompt: ``Instruction: ... Input: <chunk> ... Question: ... Response:``."""
    return PromptTemplate(
        prefix=f"Instruction: {instruction}\n\nInput: ",
        infix=f'\n\nIf the answer does not exist in the passages, return "{not_found}".\n\nQuestion: ',
        suffix="\n\nResponse:",
    )


@dataclass(frozen=True)
class Preset:
    """One of the paper's models: how to recognise it and what it changes on top of :func:`paper_settings`.

    Attributes:
        name: what ``preset=`` takes.
        title: the model's name in the paper.
        repo_ids: hub ids that select it (compared case-insensitively; a folder whose name is the id's last part too).
        model_types: ``config.model_type`` values that select it when neither repo id nor folder name did.
        settings: engine settings on top of the paper's defaults.
        framing: builds the prompt template from the final instruction and not-found answer, for models without a chat
            template whose paper framing is not the plain one; ``None`` uses the tokenizer's chat template.
        notes: what a user should know (remote code, gated access, which backend runs it).
    """

    name: str
    title: str
    repo_ids: tuple[str, ...]
    model_types: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    framing: Callable[[str, str], PromptTemplate] | None = None
    notes: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "falcon-mamba-7b-instruct",
            "Falcon-Mamba-Inst-7B",
            ("tiiuae/falcon-mamba-7b-instruct",),
            ("falcon_mamba",),
            notes="chat framing <|im_start|>user ... <|im_end|> <|im_start|>assistant from its tokenizer",
        ),
        Preset(
            "falcon3-mamba-7b-instruct",
            "Falcon3-Mamba-Inst-7B",
            ("tiiuae/Falcon3-Mamba-7B-Instruct",),
            (),  # same model_type and shapes as Falcon-Mamba: recognised by repo id or folder name only
            settings={"idk_filter": False},  # the reference script turns the IDK filter off for this model only
            notes="as Falcon-Mamba, without the IDK filter",
        ),
        Preset(
            "recurrentgemma-9b-it",
            "RecurrentGemma-IT-9B",
            ("google/recurrentgemma-9b-it",),
            ("recurrent_gemma",),
            notes="gated on the hub (accept the licence, pass token=); chat framing <start_of_turn>user ... "
            "<end_of_turn> <start_of_turn>model from its tokenizer, BOS once",
        ),
        Preset(
            "rwkv6-finch-7b",
            "RWKV6-Finch-7B",
            ("RWKV/v6-Finch-7B-HF",),
            ("rwkv6",),
            framing=_rwkv_framing,
            notes="ships its own modeling code (trust_remote_code=True); no chat template: Instruction/Input/Response",
        ),
    )
}
SPECIAL = ("auto", "paper", "none")


def find_preset(repo_id: str | None, folder: str | Path | None, hf_config: Any = None) -> Preset | None:
    """The preset a checkpoint asks for: by hub repo id, else by folder name, else by ``config.model_type``."""
    if repo_id:
        for p in PRESETS.values():
            if repo_id.lower() in (r.lower() for r in p.repo_ids):
                return p
    if folder is not None:
        name = Path(folder).name.lower()
        for p in PRESETS.values():
            if name in (r.split("/")[-1].lower() for r in p.repo_ids):
                return p
    model_type = getattr(hf_config, "model_type", None)
    for p in PRESETS.values():
        if model_type in p.model_types:
            return p
    return None


def preset_settings(
    preset: str | None,
    *,
    tokenizer: Any,
    hf_config: Any = None,
    repo_id: str | None = None,
    folder: str | Path | None = None,
    has_settings_file: bool = False,
) -> tuple[Preset | str | None, dict[str, Any]]:
    """The preset layer of a checkpoint's settings: ``(what was chosen, settings)``.

    Args:
        preset: ``None`` or ``"auto"`` (recognise the model; a checkpoint with its own ``overflow.json`` gets nothing
            here, one without gets its preset or else the paper's defaults), ``"paper"`` (the paper's defaults only),
            ``"none"`` (nothing: :class:`~overflow_core.config.OPRMConfig` defaults), or a name from :data:`PRESETS`.
        has_settings_file: whether the checkpoint has an ``overflow.json``.

    Returns:
        The chosen :class:`Preset`, ``"paper"`` or ``None``, and its settings (``framing`` not yet applied: see
        :func:`apply_framing`).
    """
    if preset is None or preset == "auto":
        if has_settings_file:
            return None, {}
        chosen = find_preset(repo_id, folder, hf_config)
        if chosen is None:
            return "paper", paper_settings(tokenizer, hf_config)
        return chosen, {**paper_settings(tokenizer, hf_config), **chosen.settings}
    if preset == "none":
        return None, {}
    if preset == "paper":
        return "paper", paper_settings(tokenizer, hf_config)
    if preset in PRESETS:
        p = PRESETS[preset]
        return p, {**paper_settings(tokenizer, hf_config), **p.settings}
    raise ConfigError(f"preset: expected one of {', '.join([*SPECIAL, *PRESETS])}, got {preset!r}")


def apply_framing(chosen: Preset | str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the preset's prompt framing filled in, unless a template was given (``overflow.json`` or a
    keyword): the framing uses the final ``instruction`` and ``not_found``, so overriding either keeps them in step."""
    if not isinstance(chosen, Preset) or chosen.framing is None or settings.get("template") is not None:
        return settings
    return {
        **settings,
        "template": chosen.framing(
            settings.get("instruction", PAPER_INSTRUCTION), settings.get("not_found", PAPER_NOT_FOUND)
        ),
    }
