"""What the classes share: where their engine comes from, and the models' decoding fields and engine call.

:class:`EngineSource` gives every class ``engine=`` / ``model=`` / ``engine_kwargs=``. Both models translate LangChain
arguments to :meth:`overflow_core.OPRM.complete` keyword arguments and LangChain usage fields; neither holds any tensor
math.
"""

from __future__ import annotations

import asyncio
import difflib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

from langchain_core.messages.ai import UsageMetadata
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from langchain_overflow._engines import EngineIdentity, LoadRequest, identify, load_engine, load_request
from overflow_core import OPRM, OPRMConfig
from overflow_core.chunking import encode_text
from overflow_core.config import check_seed, check_setting
from overflow_core.decode import Generation
from overflow_core.errors import ConfigError

__all__ = [
    "EngineSource",
    "OverflowGenerationParams",
    "check_decoding",
    "generation_info",
    "iterate_in_thread",
    "prompt_markers",
    "usage",
]

T = TypeVar("T")

_PER_CALL = ("temperature", "max_tokens", "top_k", "top_p", "seed", "stop_at_prompt_markers")
_DECODING = ("temperature", "max_tokens", "top_k", "top_p", "stop", "seed")  # checked by the engine's own rules
_CORE_NAME = {"max_tokens": "max_new_tokens"}  # a LangChain field -> the engine setting it sets
_ENGINE_SETTINGS = frozenset(f.name for f in fields(OPRMConfig))
_HINTS = {"max_new_tokens": "max_tokens", "max_length": "max_tokens", "model_name": "model", "model_id": "model",
          "model_path": "model", "random_seed": "seed"}  # fmt: skip
_REMOTE = frozenset({"timeout", "request_timeout", "max_retries", "api_key", "base_url", "api_base", "organization"})


def _unknown_field(cls: type[BaseModel], name: str) -> str:
    """The message for a constructor keyword that is no field of ``cls``: the closest field, or where it belongs."""
    known = {f.alias or n for n, f in cls.model_fields.items()} | set(cls.model_fields)
    known = {k for k in known if not k.startswith("_") and not k.endswith("_")} | {"engine"}
    where = f"{name!r} is not a setting of {cls.__name__}"
    if name in _REMOTE:
        return f"{where}: it runs the model in this process, there is no request to time out, retry or authenticate"
    hint = _HINTS.get(name)
    if hint in known:
        return f"{where}; did you mean {hint}=?"
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    if close:
        return f"{where}; did you mean {close[0]}=?"
    if name in _ENGINE_SETTINGS:
        return (
            f"{where}: it is an engine setting; give it to the engine that loads the model "
            f"({cls.__name__}.from_pretrained(name_or_path, {name}=...), engine_kwargs={{{name!r}: ...}} with model=, "
            f"or OPRM.from_pretrained(..., {name}=...))"
        )
    return f"{where}; expected some of {', '.join(sorted(known))}"


def check_decoding(name: str, value: Any) -> Any:
    """``value`` checked as the decoding field ``name`` by the engine's own rules, and normalised.

    The rules are :func:`overflow_core.config.check_setting` and :func:`~overflow_core.config.check_seed`; normalised
    means ``1`` -> ``1.0``, one stop string -> a list of one. ``None`` passes (the engine's default). Raises
    :class:`~overflow_core.errors.ConfigError` naming the field as these classes name it (``max_tokens``, not the
    engine's ``max_new_tokens``), what was expected and what came.
    """
    if value is None:
        return None
    core = _CORE_NAME.get(name, name)
    try:
        if name == "seed":
            return check_seed(value)
        checked = check_setting(core, value)
    except ConfigError as exc:
        message = str(exc)
        if core != name and message.startswith(f"{core}:"):
            message = f"{name}:{message[len(core) + 1 :]}"
        raise ConfigError(message) from None
    return list(checked) if name == "stop" else checked


def prompt_markers(engine: OPRM) -> list[str]:
    r"""The markers of the engine's prompt format, as stop strings: :meth:`overflow_core.OPRM.prompt_markers`.

    The LlamaIndex ``OverflowLLM`` stops at the same ones: the engine's own stop strings, the special tokens its template
    uses (``<|end|>``, ``<|user|>``, ...), and each ``Label:`` or ``<tag>`` that opens a line of it (``"\nQuestion:"``).
    """
    return engine.prompt_markers()


class EngineSource(BaseModel):
    """Where a class gets its engine: ``engine=`` (one already loaded) or ``model=`` (loaded on first use, shared).

    ``model`` is a model folder or hub id (None: the bundled model) and ``engine_kwargs`` the keyword arguments for
    :meth:`overflow_core.OPRM.from_pretrained`; classes built from the same ``model`` and ``engine_kwargs`` share one
    engine, and so one state cache. Unknown constructor arguments are refused, naming the closest field.

    A deep copy (``copy.deepcopy``, ``model_copy(deep=True)``) shares the engine (loaded weights, thread-safe) and copies
    the rest. A pickle carries how the engine was loaded, not the engine: an instance built from ``model=`` or
    ``from_pretrained`` loads the model again (through the shared loader) on first use where it is unpickled; one built
    on ``engine=`` cannot say how to load it again and refuses to pickle, saying so.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    _SHARED: ClassVar[tuple[str, ...]] = ("engine_",)
    """Fields a deep copy shares instead of copying."""
    _reload: LoadRequest | None = PrivateAttr(default=None)
    """How to load the engine again (set on an unpickled instance whose engine was loaded by the shared loader)."""

    engine_: OPRM | None = Field(default=None, alias="engine", exclude=True, repr=False)
    """The engine (``engine=``); None until first use when built from ``model=``."""
    model: str | None = None
    """The model folder or hub id the engine is loaded from (``None`` and no ``engine``: the bundled model). With
    ``engine=`` it defaults to the engine's name, and must name that engine if given."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for ``OPRM.from_pretrained`` when the engine is loaded from ``model`` (settings such as
    ``chunk_tokens``, and loader options such as ``device``)."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields_ = cls.model_fields
            allowed = set(fields_) | {f.alias for f in fields_.values() if f.alias}
            for name in data:
                if name not in allowed:
                    raise ValueError(_unknown_field(cls, str(name)))
        return data

    @field_validator("engine_", mode="before")
    @classmethod
    def _check_engine(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, OPRM):
            hint = (
                "; to load a model by folder or hub id, use model= or from_pretrained()"
                if isinstance(value, str)
                else ""
            )
            raise ValueError(f"engine: expected an overflow_core.OPRM engine, got {type(value).__name__}{hint}")
        return value

    @model_validator(mode="after")
    def _check_engine_source(self) -> EngineSource:
        if self.engine_ is None:
            return self
        if self.engine_kwargs:
            raise ValueError(
                f"engine_kwargs: used only to load the engine from model=; got an engine as well "
                f"({sorted(self.engine_kwargs)} would be ignored)"
            )
        identity = identify(self.engine_)
        if self.model is None:
            self.model = self.engine_.name
        elif not _serves(self.model, identity):
            raise ValueError(
                f"model: this engine serves {identity.name!r} ({identity.source}); got model={self.model!r}. "
                "Give engine= or model=, not two different models"
            )
        return self

    @property
    def engine(self) -> OPRM:
        """The engine (loaded now, through the shared loader, if this instance was built from ``model=``)."""
        engine = self.engine_
        if engine is None:
            model, settings = self._reload if self._reload is not None else (self.model, self.engine_kwargs)
            engine = load_engine(model, settings)
            self.engine_ = engine
        return engine

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        """A copy that shares the engine (and the other :attr:`_SHARED` fields) and copies everything else."""
        memo = {} if memo is None else memo
        for name in self._SHARED:
            value = self.__dict__.get(name)
            if value is not None:
                memo.setdefault(id(value), value)
        return super().__deepcopy__(memo)

    def __getstate__(self) -> dict[Any, Any]:
        """The pickled state: the fields without the engine, and how to load it again (see the class docstring)."""
        state = super().__getstate__()
        engine = self.engine_
        if engine is None:
            return state
        request = load_request(engine)
        if request is None:
            name = type(self).__name__
            also = f" or {name}.from_pretrained(...)" if hasattr(type(self), "from_pretrained") else ""
            raise TypeError(
                f"cannot pickle {name}: it was given a loaded engine (engine=), which cannot be pickled and does not "
                f"say how to load it again; build it with model='<folder or hub id>'{also} so the unpickled copy "
                "loads the model again, or share this instance between threads instead"
            )
        values = {**state["__dict__"], "engine_": None}
        private = {**(state.get("__pydantic_private__") or {}), "_reload": request}
        return {**state, "__dict__": values, "__pydantic_private__": private}

    @property
    def identity(self) -> EngineIdentity:
        """Which checkpoint and settings the engine holds (loads the engine if needed)."""
        return identify(self.engine)


def _serves(model: str, identity: EngineIdentity) -> bool:
    """Whether ``model`` names the engine of ``identity``: its name, its folder (any path to it), ``name@fingerprint``."""
    if model in (identity.name, identity.source, identity.model_name):
        return True
    try:
        return str(Path(model).expanduser().resolve()) == identity.source
    except (OSError, ValueError):
        return False


class OverflowGenerationParams(EngineSource):
    """Decoding settings of :class:`ChatOverflow` and :class:`OverflowLLM`; every one can also be given per call.

    Values are checked when the instance is built (and when a call overrides them) by the engine's own rules: a wrong
    type or a value that cannot work raises a ``ValueError`` naming the field, what was expected and what came.
    """

    temperature: float = 0.0
    """0 is greedy decoding; else at least 1e-6."""
    max_tokens: int | None = None
    """Most tokens to generate (>= 0); ``None`` uses the engine's ``max_new_tokens``."""
    top_k: int | None = None
    """Sample from the ``top_k`` most likely tokens (>= 0, 0 disables); ``None`` uses the engine's."""
    top_p: float | None = None
    """Nucleus sampling, ``0 < top_p <= 1``; ``None`` uses the engine's."""
    stop: list[str] | None = None
    """Strings that end the output (not included in it); added to the engine's own stop strings and prompt markers."""
    seed: int | None = None
    """Seeds sampling when ``temperature > 0`` (an integer in [0, 2**64))."""
    stop_at_prompt_markers: bool = True
    """Also stop where the model starts writing the engine's prompt format again (its special tokens, a new
    ``Question:`` or ``</doc>`` line: :func:`prompt_markers`), as the LlamaIndex ``OverflowLLM`` does.
    ``False`` stops only at the engine's stop strings and ``stop``."""
    strict_handoff: bool = False
    """Raise :class:`HandoffError` instead of warning :class:`HandoffWarning` when a call ran its whole prompt although
    it could have continued a recent retrieval's state (see docs/langchain.md, "How the handoff works")."""

    @field_validator(*_DECODING, mode="before")
    @classmethod
    def _check_decoding(cls, value: Any, info: ValidationInfo) -> Any:
        return check_decoding(str(info.field_name), value)

    @classmethod
    def from_pretrained(cls, name_or_path: Any = None, **kwargs: Any) -> Any:
        """Load ``name_or_path`` (a model folder, a hub id; None: the bundled model) now, and build the class on it.

        Keywords that are fields of this class (``temperature``, ``max_tokens``, ``stop``, ``callbacks``, ...) set them;
        every other keyword goes to :meth:`overflow_core.OPRM.from_pretrained` (engine settings such as
        ``chunk_tokens`` or ``max_new_tokens``, loader options such as ``device`` or ``dtype``). Classes loaded from
        the same path and settings share one engine (``instance.engine``); build a retriever on it for the handoff.

        Example:
            >>> chat = ChatOverflow.from_pretrained(None, chunk_tokens=256, max_tokens=16)  # doctest: +SKIP
            >>> retriever = OverflowRetriever.from_documents(docs, chat.engine)  # doctest: +SKIP
        """
        own = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
        for name in kwargs:
            if name not in own and name not in _ENGINE_SETTINGS:
                close = difflib.get_close_matches(name, sorted(own | _ENGINE_SETTINGS), n=1, cutoff=0.8)
                if close:  # a misspelt field or setting; anything else may be a loader option (revision=, ...)
                    raise TypeError(
                        f"{cls.__name__}.from_pretrained: unexpected keyword {name!r}; did you mean {close[0]}=?"
                    )
        if "engine" in kwargs or "engine_kwargs" in kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained: engine/engine_kwargs: give settings as keywords instead")
        fields_ = {k: v for k, v in kwargs.items() if k in own}
        settings = {k: v for k, v in kwargs.items() if k not in own}
        for name in _DECODING:  # before loading anything
            check_decoding(name, fields_.get(name))
        if "model" in fields_:
            if name_or_path is not None and str(fields_["model"]) != str(name_or_path):
                raise TypeError(f"{cls.__name__}.from_pretrained: name_or_path and model= name different models")
            name_or_path = fields_.pop("model")
        engine = load_engine(name_or_path, settings)
        model = str(name_or_path) if name_or_path is not None else engine.name
        return cls(engine=engine, model=_display_model(model, engine), **fields_)

    @property
    def _model_name(self) -> str:
        """``name@fingerprint``: what ``ls_model_name`` and ``response_metadata["model_name"]`` report."""
        return self.identity.model_name

    def _decoding(self, stop: Sequence[str] | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """``OPRM.complete`` keyword arguments from the fields, the call's ``stop`` and the call's overrides."""
        unknown = set(overrides) - {*_PER_CALL, "model"}
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; expected some of {sorted(_PER_CALL)}")
        if "model" in overrides and overrides["model"] != self.model and not _serves(overrides["model"], self.identity):
            raise ValueError(
                f"model: this instance serves {self.model!r} (one engine, one model); got {overrides['model']!r}"
            )
        engine = self.engine
        values = {name: overrides.get(name, getattr(self, name)) for name in _PER_CALL}
        for name in _DECODING:
            if name in values:  # a call's override, or a field assigned after construction
                values[name] = check_decoding(name, values[name])
        markers = values["stop_at_prompt_markers"]
        if not isinstance(markers, bool):
            raise ConfigError(f"stop_at_prompt_markers: expected true or false, got {markers!r}")
        own = prompt_markers(engine) if markers else list(engine.config.stop)
        stops = [*own, *(stop if stop is not None else self.stop or [])]
        decoding: dict[str, Any] = {
            "temperature": values["temperature"],
            "max_new_tokens": values["max_tokens"],
            "top_k": values["top_k"],
            "top_p": values["top_p"],
            "stop": list(dict.fromkeys(stops)),
        }
        return {"seed": values["seed"], **{k: v for k, v in decoding.items() if v is not None}}

    def _complete(
        self,
        prompt_ids: Sequence[int],
        stop: Sequence[str] | None,
        overrides: Mapping[str, Any],
        *,
        lstrip: bool | None = None,
    ) -> Generation:
        """Start decoding after ``prompt_ids`` (from the cached state of their longest cached prefix, if any).

        ``lstrip``: see :meth:`overflow_core.OPRM.complete` (chat replies pass ``True``).
        """
        decoding = self._decoding(stop, overrides)
        return self.engine.complete(prompt_ids, lstrip=lstrip, **decoding)

    def _params(self) -> dict[str, Any]:
        """The identifying parameters: the checkpoint and settings loaded (fingerprint) and the decoding fields."""
        return {
            "model": self.model,
            "model_fingerprint": self.identity.fingerprint,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            # the stop field and markers change the output (and LangChain's cache key has only a call's own stop)
            "default_stop": self.stop,
            "stop_at_prompt_markers": self.stop_at_prompt_markers,
        }

    def get_token_ids(self, text: str) -> list[int]:
        """The engine tokenizer's ids for ``text`` (LangChain's default would load GPT-2's tokenizer)."""
        return list(encode_text(self.engine.tokenizer, text))


def _display_model(model: str, engine: OPRM) -> str:
    """``model`` as given when it names the engine, else the engine's name (a relative path resolved, say)."""
    return model if _serves(model, identify(engine)) else engine.name


def usage(prompt_ids: Sequence[int], generation: Generation) -> UsageMetadata:
    """LangChain ``usage_metadata``: every prompt token counts as input; ``cache_read`` is the part whose state was reused."""
    reused = int(getattr(generation, "reused_tokens", 0))
    counts = {
        "input_tokens": len(prompt_ids),
        "output_tokens": len(generation.token_ids),
        "total_tokens": len(prompt_ids) + len(generation.token_ids),
        "input_token_details": {"cache_read": reused},
    }
    # a cast, not UsageMetadata(...): the repo-root mypy config (python_version 3.10) misreads its typing.NotRequired keys
    return cast("UsageMetadata", counts)


def generation_info(model: str, generation: Generation) -> dict[str, Any]:  # model: name@fingerprint
    """What a response's metadata reports about one generation."""
    return {
        "model_name": model,
        "finish_reason": generation.finish_reason,
        "prompt_forward_tokens": int(getattr(generation, "prompt_forward_tokens", 0)),
        "reused_tokens": int(getattr(generation, "reused_tokens", 0)),
    }


async def iterate_in_thread(items: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run the blocking iterator ``items()`` to its end in one worker thread; yield its items on the event loop as they come.

    One thread for the whole iteration, not one executor call per item (LangChain's default ``_astream``): decoding
    keeps thread-local torch state (inference mode) open from token to token, so it must not resume on another thread.
    If the consumer stops early, the producer stops after its current item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stopped = threading.Event()

    def produce() -> None:
        try:
            for item in items():
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
                if stopped.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    producer = asyncio.ensure_future(run_in_executor(None, produce))
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                break
            if kind == "error":
                raise value
            yield value
    finally:
        stopped.set()
        if producer.done():
            await producer
