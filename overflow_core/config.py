"""Configuration: small frozen dataclasses, validated on construction, and the model folder's ``overflow.json`` settings.

Every setting is checked in one place (:func:`check_setting`), whichever way it arrives: ``OPRMConfig(...)``,
``overflow.json``, ``OPRM.from_pretrained(**settings)`` or a per-call keyword. A wrong type is refused, never coerced
(``chunk_tokens=256.0``, ``idk_filter="false"``, ``k="3"``), and so is a value that cannot work (``nan`` temperature,
``overlap_tokens >= chunk_tokens``, a seed beyond 64 bits); an unknown name gets a "did you mean". A single string where
a list of stop strings belongs is one stop string, never its characters.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from overflow_core.errors import ConfigError, ModelLoadError
from overflow_core.prompting import DEFAULT_INSTRUCTION, DEFAULT_NOT_FOUND, PromptTemplate

__all__ = [
    "DECODING_SETTINGS",
    "MIN_CHUNK_TOKENS",
    "SETTINGS_FILE",
    "OPRMConfig",
    "check_k",
    "check_seed",
    "check_setting",
    "load_settings",
]

SETTINGS_FILE = "overflow.json"
Criterion = Literal["entropy", "max_prob", "not_found_prob"]
CRITERIA = ("entropy", "max_prob", "not_found_prob")
_DTYPES = ("float32", "bfloat16", "float16")
MIN_CHUNK_TOKENS = 8  # one character of any script: up to 4 UTF-8 byte tokens, plus a word-start token, with room
MIN_TEMPERATURE = 1e-6  # below it logits / temperature overflows float32 for large logits: use 0 (greedy) instead
_MAX_INT = 2**63 - 1
DECODING_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "stop")  # what a call may override
_INFO_KEYS = ("trained",)  # what an ``overflow.json`` may carry besides settings (keys starting with "_" too)

CPU_BATCH_TOKENS = 4096  # max_batch_tokens=None on a CPU
ACCELERATOR_BATCH_TOKENS = 16384  # max_batch_tokens=None on a GPU or another accelerator

# name -> smallest value, for the integer settings
_INTS = {
    "chunk_tokens": MIN_CHUNK_TOKENS,
    "overlap_tokens": 0,
    "max_batch_tokens": 1,
    "max_new_tokens": 0,
    "top_k": 0,
    "state_cache_bytes": 0,
}
_INT_HINTS = {
    "chunk_tokens": f"a number of tokens >= {MIN_CHUNK_TOKENS} (one character can take 5 tokens)",
    "max_batch_tokens": "a positive token budget",
    "max_new_tokens": "a number of tokens >= 0",
    "top_k": "an integer >= 0 (0 disables)",
    "state_cache_bytes": "a number of bytes >= 0 (0 disables)",
    "overlap_tokens": "a number of tokens >= 0",
}


def _got(value: Any) -> str:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({type(value).__name__})"


def _check_int(name: str, value: Any, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected {hint}, got {_got(value)}")
    if not low <= value <= _MAX_INT:
        raise ConfigError(f"{name}: expected {hint}, got {value}")
    return int(value)


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {_got(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value}")
    return value


def _check_str(name: str, value: Any, *, empty: bool) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected a string, got {_got(value)}")
    if not empty and not value.strip():
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{name}: expected valid Unicode text, got a lone surrogate at character {exc.start}"
        ) from None
    return value


def _check_stop(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):  # one stop string, never its characters
        value = (value,)
    if isinstance(value, Mapping) or not isinstance(value, Iterable) or isinstance(value, (bytes, bytearray)):
        raise ConfigError(f"stop: expected a string or a list of strings, got {_got(value)}")
    stops = tuple(value)
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise ConfigError(f"stop[{i}]: expected a non-empty string, got {_got(s)}")
        _check_str(f"stop[{i}]", s, empty=True)  # whitespace is a stop string like any other ("\n" is the usual one)
    return stops


def check_setting(name: str, value: Any) -> Any:
    """``value`` checked (and normalised: a stop string to a tuple, a template dict to a :class:`PromptTemplate`) as the
    setting ``name``; a :class:`~overflow_core.errors.ConfigError` naming the setting, what was expected and what came."""
    if name in _INTS:
        return _check_int(name, value, _INTS[name], _INT_HINTS[name])
    if name == "temperature":
        t = _check_real(name, value)
        if t != 0 and t < MIN_TEMPERATURE:
            raise ConfigError(f"temperature: expected 0 (greedy) or a number >= {MIN_TEMPERATURE}, got {value}")
        return t
    if name == "top_p":
        p = _check_real(name, value)
        if not 0 < p <= 1:
            raise ConfigError(f"top_p: expected 0 < top_p <= 1, got {value}")
        return p
    if name in ("idk_filter", "release_memory"):
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {_got(value)}")
        return value
    if name == "criterion":
        if value not in CRITERIA:
            raise ConfigError(f"criterion: expected one of {', '.join(CRITERIA)}, got {value!r}")
        return value
    if name == "dtype":
        if value not in _DTYPES:
            raise ConfigError(f"dtype: expected one of {', '.join(_DTYPES)}, got {value!r}")
        return value
    if name in ("instruction", "not_found", "device"):
        return _check_str(name, value, empty=name == "instruction")
    if name == "stop":
        return _check_stop(value)
    if name == "template":
        if value is None or isinstance(value, PromptTemplate):
            return value
        if isinstance(value, Mapping):
            return PromptTemplate.from_dict(value)
        raise ConfigError(f"template: expected a PromptTemplate or a {{prefix, infix, suffix}} dict, got {_got(value)}")
    raise ConfigError(_unknown("setting", name, _FIELDS))


def _unknown(what: str, name: Any, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(sorted(known))}"
    return f"unknown {what} {name!r}{hint}"


def check_k(k: Any) -> int | None:
    """A per-call ``k`` (how many chunks): None, or an integer >= 1."""
    if k is None:
        return None
    return _check_int("k", k, 1, "a positive number of chunks")


def check_seed(seed: Any) -> int | None:
    """A per-call ``seed``: None, or an integer in [0, 2**64) (what a torch generator takes)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ConfigError(f"seed: expected an integer in [0, 2**64), got {_got(seed)}")
    return int(seed)


@dataclass(frozen=True)
class OPRMConfig:
    """Every engine setting. Per-call keyword arguments override ``max_new_tokens``, ``temperature`` and friends.

    Attributes:
        chunk_tokens: most tokens of document text in one chunk (at least 8).
        overlap_tokens: tokens repeated at the start of the next chunk of the same document (at most half a chunk).
        template: the prompt around chunk and question; ``None`` derives it from the tokenizer (chat template or plain).
        instruction / not_found: used when the template is derived; ``not_found`` is also what the IDK filter looks for.
        criterion: ``"entropy"`` (lowest next-token entropy wins, the paper's default), ``"max_prob"`` (highest
            top-token probability) or ``"not_found_prob"`` (lowest probability of starting the not-found answer).
        idk_filter: drop chunks whose most likely first token starts the not-found answer.
        max_batch_tokens: token budget of one prefill micro-batch (rows x padded length); bounds memory. ``None`` (the
            default) picks by device (:attr:`batch_tokens`): 4,096 on a CPU, where larger batches spend their time
            faulting in fresh pages (``docs/benchmarks.md``), 16,384 on an accelerator.
        max_new_tokens / temperature / top_k / top_p / stop: decoding defaults. ``stop`` is a list of strings (a single
            string is one stop string); ``temperature`` is 0 (greedy) or at least 1e-6.
        device / dtype: where and in what precision the model runs.
        state_cache_bytes: memory for states kept for continuation (see :mod:`overflow_core.state_cache`); 0 disables.
        release_memory: on CPU, keep the resident memory of a long prefill near that of its first micro-batch: freed
            activations go back to the system only when the heap grows past a bound the first batch sets (see
            :class:`~overflow_core.memory.HeapBound`); ``False`` never trims.

    Raises:
        ConfigError: a setting of the wrong type or out of range, naming it, what was expected and what came.

    Example:
        >>> OPRMConfig(chunk_tokens=256, stop="<|end|>").stop
        ('<|end|>',)
    """

    chunk_tokens: int = 512
    overlap_tokens: int = 0
    template: PromptTemplate | None = None
    instruction: str = DEFAULT_INSTRUCTION
    not_found: str = DEFAULT_NOT_FOUND
    criterion: Criterion = "entropy"
    idk_filter: bool = True
    max_batch_tokens: int | None = None
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
        for f in fields(self):
            if f.name == "max_batch_tokens" and self.max_batch_tokens is None:
                continue  # by device: see batch_tokens
            value = check_setting(f.name, getattr(self, f.name))
            if value is not getattr(self, f.name):
                object.__setattr__(self, f.name, value)  # normalised: a stop string -> a tuple, a dict -> a template
        if self.overlap_tokens > self.chunk_tokens // 2:
            raise ConfigError(
                f"overlap_tokens: expected at most half of chunk_tokens ({self.chunk_tokens} // 2 = "
                f"{self.chunk_tokens // 2}), got {self.overlap_tokens}; more repeats more than each chunk adds"
            )

    @property
    def batch_tokens(self) -> int:
        """The prefill token budget in effect: ``max_batch_tokens``, or the device's default when it is ``None``."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return CPU_BATCH_TOKENS if self.device.split(":")[0] == "cpu" else ACCELERATOR_BATCH_TOKENS

    def with_overrides(self, **overrides: Any) -> OPRMConfig:
        """A copy with the given fields replaced; ``None`` values are ignored.

        Raises:
            ConfigError: an unknown setting (with the closest known name) or a bad value.
        """
        for name in overrides:
            if name not in _FIELDS:
                raise ConfigError(_unknown("setting", name, _FIELDS))
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def with_decoding(self, **overrides: Any) -> OPRMConfig:
        """A copy with the decoding settings a single call may override (:data:`DECODING_SETTINGS`) replaced."""
        for name in overrides:
            if name not in DECODING_SETTINGS:
                raise ConfigError(_unknown("decoding options", name, DECODING_SETTINGS))
        return self.with_overrides(**overrides)


_FIELDS = tuple(f.name for f in fields(OPRMConfig))


def load_settings(model_dir: str | Path) -> dict[str, Any]:
    """The recommended settings a model folder carries in ``overflow.json`` (``{}`` when it has none), checked.

    Keys are :class:`OPRMConfig` fields (``chunk_tokens``, ``template`` as ``{prefix, infix, suffix}``, ``stop``...);
    ``trained`` and keys starting with ``_`` are information and are left out. Any other key is refused (with the
    closest setting name), and so is a value of the wrong type: a misspelt or mistyped setting never silently falls back
    to the default.

    Raises:
        ModelLoadError: the file is not a JSON object.
        ConfigError: an unknown key or a bad value, naming the file and the setting.
    """
    path = Path(model_dir) / SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: expected a JSON object of OPRM settings, could not read it ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a JSON object of OPRM settings, got {type(raw).__name__}")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INFO_KEYS or key.startswith("_"):
            continue
        try:
            if key not in _FIELDS:
                raise ConfigError(_unknown("setting", key, _FIELDS))
            if value is not None:
                settings[key] = check_setting(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        OPRMConfig(**settings)  # the settings together (overlap against chunk size)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return settings
