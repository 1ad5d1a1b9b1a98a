"""Engines for the LangChain classes: loaded once per checkpoint and settings, shared, and identified by what was loaded.

Two things live here. :func:`load_engine` is the one place the classes load a model (through
:meth:`overflow_core.OPRM.from_pretrained`, whatever keywords it takes); classes that ask for the same checkpoint with the
same settings get the same engine object, so a retriever and a chat model built from the same ``model=`` string share
one state cache and the handoff works. :func:`identify` says which checkpoint and settings an engine holds: a fingerprint
that LangChain's LLM cache key and ``ls_model_name`` carry, so two different checkpoints in folders of the same name
never share cached answers.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overflow_core import OPRM

__all__ = ["EngineIdentity", "LoadRequest", "identify", "load_engine", "load_request"]

LoadRequest = tuple[str | None, dict[str, Any]]
"""What :func:`load_engine` was asked for: the model (a folder or hub id; None for the bundled model) and the keywords."""

_load_lock = threading.Lock()
_loaded: weakref.WeakValueDictionary[tuple[str, str], OPRM] = weakref.WeakValueDictionary()
_requests: weakref.WeakKeyDictionary[OPRM, LoadRequest] = weakref.WeakKeyDictionary()
_identity_lock = threading.Lock()
_identities: weakref.WeakKeyDictionary[OPRM, EngineIdentity] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class EngineIdentity:
    """Which checkpoint and settings an engine holds.

    ``source`` is the model folder, resolved (or ``hub-id@commit``; or ``in-memory:<uuid>`` for an engine whose model
    came from no folder, which then matches only itself). ``fingerprint`` is a SHA-256 over ``source``, the name, size
    and modification time of every file in the folder (weights, config, tokenizer, ``overflow.json``) as they were when
    the engine was first seen, the engine's settings (:class:`overflow_core.OPRMConfig`, prompt template) and the
    weights' dtype.
    """

    name: str
    source: str
    fingerprint: str

    @property
    def model_name(self) -> str:
        """``name@<12 hex digits of the fingerprint>``: readable, and different for different checkpoints or settings."""
        return f"{self.name}@{self.fingerprint[:12]}"


def _source_key(name_or_path: str | None) -> str:
    """What identifies a load request: a local folder resolved (so ``./m`` and ``/abs/m`` are one), else the string."""
    if name_or_path is None:
        return "<bundled>"
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else str(name_or_path)


def _settings_key(settings: Mapping[str, Any]) -> str:
    return repr(sorted((str(k), repr(v)) for k, v in settings.items()))


def load_engine(name_or_path: str | Path | None, settings: Mapping[str, Any] | None = None) -> OPRM:
    """The engine for ``name_or_path`` (a folder, a hub id, or None for the bundled model) loaded with ``settings``.

    Loaded by :meth:`overflow_core.OPRM.from_pretrained` (every keyword passes through: engine settings such as
    ``chunk_tokens``, and whatever the loader takes, such as ``device`` or ``dtype``). Requests for the same source and
    settings while an earlier engine is still in use get that engine, so the classes built from them share its state
    cache.
    """
    settings = dict(settings or {})
    name = None if name_or_path is None else str(name_or_path)
    key = (_source_key(name), _settings_key(settings))
    with _load_lock:  # one load at a time: concurrent first calls for the same model load it once
        engine = _loaded.get(key)
        if engine is None:
            engine = OPRM.from_pretrained(name, **settings) if name is not None else OPRM.from_pretrained(**settings)
            identify(engine)  # fingerprint the folder as it is now, at load time
            _loaded[key] = engine
            _requests[engine] = (None if name is None else key[0], settings)  # a folder resolved: any working dir
    return engine


def load_request(engine: OPRM) -> LoadRequest | None:
    """How :func:`load_engine` loaded ``engine``, so that another process can load it again.

    None for an engine it did not load (one given as ``engine=``: nothing says how to load it again).
    """
    with _load_lock:
        request = _requests.get(engine)
    return None if request is None else (request[0], dict(request[1]))


def identify(engine: OPRM) -> EngineIdentity:
    """The :class:`EngineIdentity` of ``engine``, computed once per engine (a few ``stat`` calls, no weights read)."""
    with _identity_lock:
        found = _identities.get(engine)
        if found is not None:
            return found
        config = getattr(engine.model, "config", None)
        origin = str(getattr(config, "_name_or_path", "") or "")
        digest = hashlib.sha256()
        folder = Path(origin) if origin else None
        if folder is not None and folder.is_dir():
            folder = folder.resolve()
            source = str(folder)
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    stat = file.stat()
                    digest.update(f"{file.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        elif origin and getattr(config, "_commit_hash", None):
            source = f"{origin}@{config._commit_hash}"  # type: ignore[union-attr]
        else:
            source = f"in-memory:{uuid.uuid4().hex}"  # nothing on disk says what it is: it matches only itself
        dtype = next((str(p.dtype) for p in engine.model.parameters()), "unknown")
        for part in (source, type(engine.model).__name__, dtype, repr(engine.config), repr(engine.template)):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
        identity = EngineIdentity(name=engine.name, source=source, fingerprint=digest.hexdigest())
        _identities[engine] = identity
        return identity
