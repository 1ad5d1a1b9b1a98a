"""Backends: one per architecture family, behind the :class:`~overflow_core.backends.base.Backend` protocol.

:func:`resolve_backend` picks the backend from ``model.config.model_type`` through one table, :data:`FAMILIES`; the engine
never branches on model type. Each row's flags are measured, not guessed: ``tests/test_families.py`` re-derives
``token_by_token`` on a tiny model of the family (block vs token-by-token continuation error) and fails if the table
disagrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overflow_core.backends.base import Backend, Session, State
from overflow_core.backends.dynamic import DynamicCacheBackend
from overflow_core.errors import UnsupportedModelError

__all__ = [
    "FAMILIES",
    "SUPPORTED",
    "UNSUPPORTED",
    "Backend",
    "CheckpointReport",
    "DynamicCacheBackend",
    "Family",
    "Session",
    "State",
    "describe_checkpoint",
    "family_of",
    "family_table",
    "resolve_backend",
]


@dataclass(frozen=True)
class Family:
    """One supported ``model_type``.

    Attributes:
        model_type: ``config.model_type`` as transformers spells it (also the type of a hub checkpoint's config.json).
        backend: ``"dynamic"`` (state in a transformers ``DynamicCache``), ``"recurrent_gemma"``, ``"rwkv"`` or
            ``"xlstm"`` (state kept elsewhere; one module each).
        token_by_token: continuations are fed one token at a time (a multi-token block from a stored state is wrong).
        attention: the state holds attention keys/values (it keeps the attention mask and grows with the prompt).
        label: the family's usual name.
        examples: public checkpoints of the family.
        text_type: for a multimodal wrapper config (``qwen3_5``), the ``model_type`` of the text model that
            ``AutoModelForCausalLM`` builds from it.
    """

    model_type: str
    backend: str
    token_by_token: bool
    attention: bool
    label: str
    examples: str = ""
    text_type: str | None = None

    @property
    def continuation(self) -> str:
        """``"token by token"`` or ``"block"``: how a stored state is continued."""
        return "token by token" if self.token_by_token else "block"


def _f(
    model_type: str,
    backend: str,
    token_by_token: bool,
    attention: bool,
    label: str,
    examples: str = "",
    text_type: str | None = None,
) -> Family:
    return Family(model_type, backend, token_by_token, attention, label, examples, text_type)


# Every row is exercised by tests/test_families.py on a tiny model whose outputs depend measurably on history.
FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        _f("mamba2", "dynamic", False, False, "Mamba-2", "state-spaces/mamba2-2.7b, the bundled model"),
        _f("mamba", "dynamic", True, False, "Mamba", "state-spaces/mamba-2.8b-hf"),
        _f("falcon_mamba", "dynamic", True, False, "Falcon-Mamba", "tiiuae/falcon-mamba-7b-instruct"),
        _f("bamba", "dynamic", False, True, "Bamba", "ibm-ai-platform/Bamba-9B"),
        _f("zamba", "dynamic", False, True, "Zamba", "Zyphra/Zamba-7B-v1"),
        _f("zamba2", "dynamic", False, True, "Zamba2", "Zyphra/Zamba2-2.7B-instruct"),
        _f("falcon_h1", "dynamic", False, True, "Falcon-H1", "tiiuae/Falcon-H1-1.5B-Instruct"),
        _f("jamba", "dynamic", True, True, "Jamba", "ai21labs/AI21-Jamba-Mini-1.7"),
        _f("granitemoehybrid", "dynamic", False, True, "Granite-4.0-H", "ibm-granite/granite-4.0-h-tiny"),
        _f("nemotron_h", "dynamic", False, True, "Nemotron-H", "nvidia/NVIDIA-Nemotron-Nano-9B-v2"),
        _f("lfm2", "dynamic", False, True, "LFM2", "LiquidAI/LFM2-1.2B"),
        _f("lfm2_moe", "dynamic", False, True, "LFM2-MoE", "LiquidAI/LFM2-8B-A1B"),
        _f("lfm3", "dynamic", False, True, "LFM3 (sliding-window layers)", "LiquidAI LFM3 checkpoints"),
        _f("qwen3_next", "dynamic", False, True, "Qwen3-Next", "Qwen/Qwen3-Next-80B-A3B-Instruct"),
        _f("qwen3_5_text", "dynamic", False, True, "Qwen3.5 (text)", "Qwen3.5 dense checkpoints"),
        _f("qwen3_5", "dynamic", False, True, "Qwen3.5", "Qwen3.5 dense checkpoints", "qwen3_5_text"),
        _f("qwen3_5_moe_text", "dynamic", False, True, "Qwen3.5-MoE (text)", "Qwen3.5 MoE checkpoints"),
        _f("qwen3_5_moe", "dynamic", False, True, "Qwen3.5-MoE", "Qwen3.5 MoE checkpoints", "qwen3_5_moe_text"),
        _f("olmo_hybrid", "dynamic", False, True, "OLMo-Hybrid", "allenai OLMo hybrid checkpoints"),
        _f("kimi_linear", "dynamic", False, True, "Kimi-Linear", "moonshotai/Kimi-Linear-48B-A3B-Instruct"),
        _f("bailing_hybrid", "dynamic", False, True, "Bailing-Hybrid (Ring/Ling linear)", "inclusionAI Ring-linear"),
        _f("lara_mini", "dynamic", False, True, "Lara-Mini (sliding-window layers)", ""),
        _f("zaya", "dynamic", False, True, "ZAYA", "Zyphra ZAYA checkpoints"),
        _f("inkling_text", "dynamic", False, True, "Inkling (linear + sliding-window layers)", ""),
        _f("minimax", "dynamic", False, True, "MiniMax (lightning attention)", "MiniMaxAI/MiniMax-Text-01-hf"),
        _f("recurrent_gemma", "recurrent_gemma", True, True, "RecurrentGemma", "google/recurrentgemma-9b-it"),
        _f("rwkv", "rwkv", False, False, "RWKV (v4)", "RWKV/rwkv-4-world-3b, RWKV/rwkv-raven-7b"),
        _f("xlstm", "xlstm", False, False, "xLSTM", "NX-AI/xLSTM-7b"),
        # remote code (trust_remote_code=True): transformers' rwkv interface, the state a list of tensors
        _f("rwkv5", "rwkv", False, False, "RWKV-5 (remote code)", "RWKV/v5-Eagle-7B-HF"),
        _f("rwkv6", "rwkv", False, False, "RWKV-6 (remote code)", "RWKV/v6-Finch-7B-HF, the paper's RWKV6-Finch-7B"),
    )
}

# Recurrent or hybrid model types that transformers ships and Overflow refuses, with the reason.
UNSUPPORTED: dict[str, str] = {
    "qwen4_exp": "its indexed (sparse) attention layers keep an indexer key cache and its n-gram embeddings need settings "
    "no tiny model here could be built with; not verified, so refused",
    "qwen4_exp_text": "see qwen4_exp",
    "inkling2_text": "not verified: its tiny model rejects a vocabulary of the test tokenizer's size; inkling_text is "
    "supported",
    "inkling2_loop_text": "see inkling2_text",
    "rwkv7": "RWKV-7 remote code keeps its state in flash-linear-attention's own cache class, not a list of tensors; "
    "RWKV-5/6 (rwkv5, rwkv6) and transformers' rwkv are supported",
    "hrm_text": "a transformer (recurrence over depth, not over the sequence): its attention cache grows with the context",
}

# model_type -> (token_by_token, attention): the table's flags in the shape earlier releases exported.
SUPPORTED: dict[str, tuple[bool, bool]] = {k: (f.token_by_token, f.attention) for k, f in FAMILIES.items()}


def family_of(model_type: str | None) -> Family:
    """The :class:`Family` of ``model_type``, or :class:`UnsupportedModelError` saying why not / what is supported."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    supported = ", ".join(sorted(FAMILIES))
    if model_type in UNSUPPORTED:
        raise UnsupportedModelError(f"model_type {model_type!r} is not supported: {UNSUPPORTED[model_type]}")
    raise UnsupportedModelError(
        f"model: expected a recurrent or hybrid causal LM with a supported model_type ({supported}), got "
        f"{model_type!r}; OPRM needs a fixed-size recurrent state"
    )


def resolve_backend(model: Any) -> Backend:
    """The backend for ``model`` (a Hugging Face causal LM), or :class:`UnsupportedModelError` naming what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        family = family_of(model_type)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{exc} ({type(model).__name__})") from None
    if family.backend == "dynamic":
        return DynamicCacheBackend(
            model, name=family.model_type, token_by_token=family.token_by_token, attention=family.attention
        )
    if family.backend == "recurrent_gemma":
        from overflow_core.backends.recurrent_gemma import RecurrentGemmaBackend

        return RecurrentGemmaBackend(model, name=family.model_type)
    if family.backend == "rwkv":
        from overflow_core.backends.rwkv import RwkvBackend

        return RwkvBackend(model, name=family.model_type)
    if family.backend == "xlstm":
        from overflow_core.backends.xlstm import XlstmBackend

        return XlstmBackend(model, name=family.model_type)
    raise AssertionError(f"FAMILIES row {family.model_type!r} names an unknown backend {family.backend!r}")


@dataclass(frozen=True)
class CheckpointReport:
    """Whether and how a model folder would run, read from its files without loading any weights.

    Attributes:
        folder: the folder looked at.
        model_type: ``config.json``'s ``model_type`` (``None`` when it has none).
        family: the table's row for it, or ``None``.
        runs: whether Overflow would run it (given ``trust_remote_code=True`` when ``remote_code`` is set).
        problems: why it would not run, one line each.
        notes: what else a user should know (remote code, no tokenizer, no overflow.json), one line each.
    """

    folder: str
    model_type: str | None
    family: Family | None
    runs: bool
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The report as lines of text (what ``oprm models PATH`` prints)."""
        out = [f"{self.folder}: model_type {self.model_type!r}"]
        if self.family is not None:
            f = self.family
            out.append(
                f"  family: {f.label}; backend {f.backend}; continuation {f.continuation}; "
                f"state {'recurrent + attention keys/values (grows with the chunk)' if f.attention else 'fixed-size'}"
            )
        out.extend(f"  problem: {p}" for p in self.problems)
        out.extend(f"  note: {n}" for n in self.notes)
        out.append(f"  would run: {'yes' if self.runs else 'no'}")
        return out


def describe_checkpoint(folder: str | Path) -> CheckpointReport:
    """Read ``folder``'s ``config.json`` (and which files are there) and say whether Overflow would run it and how.

    Nothing is imported from the folder and no weights are read.

    Example:
        >>> describe_checkpoint("overflow_core/models/default").runs  # doctest: +SKIP
        True
    """
    import json

    from overflow_core.errors import InputError

    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"model folder: expected a folder with config.json, {str(path)!r} is not a folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"model folder {str(path)!r}: expected a config.json in it, found none")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"model folder {str(path)!r}: config.json is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"model folder {str(path)!r}: config.json holds a {type(config).__name__}, not an object")
    model_type = config.get("model_type")
    problems: list[str] = []
    notes: list[str] = []
    family: Family | None = None
    try:
        family = family_of(model_type)
    except UnsupportedModelError as exc:
        problems.append(str(exc))
    names = {p.name for p in path.iterdir()}
    if not any(n.endswith((".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")) for n in names):
        problems.append("no weights (*.safetensors or *.bin) in the folder")
    if not names & {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"}:
        problems.append("no tokenizer files (tokenizer.json, tokenizer_config.json, ...) in the folder")
    if config.get("auto_map"):
        notes.append(
            "ships its own modeling code (auto_map): it runs only with trust_remote_code=True "
            "(oprm: --trust-remote-code), after you have read that code"
        )
    if family is not None and family.text_type:
        notes.append(f"a multimodal wrapper config: its text model ({family.text_type}) is what runs")
    if "overflow.json" not in names:
        notes.append("no overflow.json: the paper's settings (or the model's preset) apply")
    return CheckpointReport(str(path), model_type, family, not problems, tuple(problems), tuple(notes))


def family_table() -> list[tuple[str, str, str, str, str]]:
    """``(model_type, family, backend, continuation, examples)`` rows of :data:`FAMILIES` (``oprm models``)."""
    return [(f.model_type, f.label, f.backend, f.continuation, f.examples) for f in FAMILIES.values()]
