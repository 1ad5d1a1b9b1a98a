"""Configuration: small frozen dataclasses, validated on construction, and the model folder's ``overflow.json`` settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from overflow_core.errors import ConfigError, ModelLoadError
from overflow_core.prompting import DEFAULT_INSTRUCTION, DEFAULT_NOT_FOUND, PromptTemplate

__all__ = ["SETTINGS_FILE", "OPRMConfig", "load_settings"]

SETTINGS_FILE = "overflow.json"
Criterion = Literal["entropy", "max_prob", "not_found_prob"]
CRITERIA = ("entropy", "max_prob", "not_found_prob")
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class OPRMConfig:
    """Every engine setting. Per-call keyword arguments override ``max_new_tokens``, ``temperature`` and friends.

    Attributes:
        chunk_tokens: most tokens of document text in one chunk.
        overlap_tokens: tokens repeated at the start of the next chunk of the same document.
        template: the prompt around chunk and question; ``None`` derives it from the tokenizer (chat template or plain).
        instruction / not_found: used when the template is derived; ``not_found`` is also what the IDK filter looks for.
        criterion: ``"entropy"`` (lowest next-token entropy wins, the paper's default), ``"max_prob"`` (highest
            top-token probability) or ``"not_found_prob"`` (lowest probability of starting the not-found answer).
        idk_filter: drop chunks whose most likely first token starts the not-found answer.
        max_batch_tokens: token budget of one prefill micro-batch (rows x padded length); bounds memory.
        max_new_tokens / temperature / top_k / top_p / stop: decoding defaults.
        device / dtype: where and in what precision the model runs.
        state_cache_bytes: memory for states kept for continuation (see :mod:`overflow_core.state_cache`); 0 disables.
        release_memory: on CPU, give freed activations back to the system after each prefill micro-batch, so the peak
            memory of a long input stays near that of one micro-batch (see :mod:`overflow_core.memory`). Costs time:
            measured +20-30% on ``rank`` over 60k tokens with the bundled model; ``False`` for speed.
    """

    chunk_tokens: int = 512
    overlap_tokens: int = 0
    template: PromptTemplate | None = None
    instruction: str = DEFAULT_INSTRUCTION
    not_found: str = DEFAULT_NOT_FOUND
    criterion: Criterion = "entropy"
    idk_filter: bool = True
    max_batch_tokens: int = 16384
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    device: str = "cpu"
    dtype: str = "float32"
    state_cache_bytes: int = 256 * 2**20
    release_memory: bool = True

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1:
            raise ConfigError(f"chunk_tokens: expected a positive number of tokens, got {self.chunk_tokens}")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise ConfigError(
                f"overlap_tokens: expected 0 <= overlap_tokens < chunk_tokens ({self.chunk_tokens}), got {self.overlap_tokens}"
            )
        if self.criterion not in CRITERIA:
            raise ConfigError(f"criterion: expected one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.max_batch_tokens < 1:
            raise ConfigError(f"max_batch_tokens: expected a positive token budget, got {self.max_batch_tokens}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens: expected >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: expected >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: expected 0 < top_p <= 1, got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k: expected >= 0 (0 disables), got {self.top_k}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype: expected one of {_DTYPES}, got {self.dtype!r}")
        if not self.not_found.strip():
            raise ConfigError("not_found: expected a non-empty phrase")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop: expected a tuple of non-empty strings, got {self.stop!r}")

    def with_overrides(self, **overrides: Any) -> OPRMConfig:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}; expected some of {sorted(known)}")
        values = {k: v for k, v in overrides.items() if v is not None}
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return replace(self, **values)


def load_settings(model_dir: str | Path) -> dict[str, Any]:
    """The recommended settings a model folder carries in ``overflow.json`` (``{}`` when it has none).

    Recognised keys: ``chunk_tokens``, ``overlap_tokens``, ``template`` (``{prefix, infix, suffix}``), ``instruction``,
    ``not_found``, ``stop``, ``max_new_tokens``, ``criterion``, ``idk_filter``. Others are ignored.
    """
    path = Path(model_dir) / SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: expected a JSON object of OPRM settings, could not read it ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object of OPRM settings, got {type(raw).__name__}")
    keys = ("chunk_tokens", "overlap_tokens", "instruction", "not_found", "max_new_tokens", "criterion", "idk_filter")
    settings: dict[str, Any] = {k: raw[k] for k in keys if k in raw}
    if "stop" in raw:
        settings["stop"] = tuple(raw["stop"])
    if "template" in raw:
        settings["template"] = PromptTemplate.from_dict(raw["template"])
    return settings
