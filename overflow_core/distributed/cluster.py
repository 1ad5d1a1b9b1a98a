"""Connecting to Ray and describing the engine each worker loads; the only place that imports ``ray`` for the others.

Every worker (a build actor, a shard actor, a Serve replica) loads its own engine from an :class:`EngineSpec`: the
model's hub id or folder and the settings ``OPRM.from_pretrained`` takes. Nothing but the spec (a few strings) crosses
the network to make an engine, so a worker on another machine loads the same model from its own disk or hub cache.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from overflow_core.errors import ConfigError, InputError, OverflowCoreError, install_extra

if TYPE_CHECKING:
    from overflow_core.engine import OPRM

__all__ = [
    "RAY_EXTRA", "CapacityWarning", "EngineSpec", "RayMissingError", "check_capacity", "connect", "local_folder",
    "require_ray", "unwrap",
]  # fmt: skip

logger = logging.getLogger(__name__)

RAY_EXTRA = install_extra("ray")
_started_here = False  # connect() started the local cluster this process uses: it has what it has, and never grows


class CapacityWarning(UserWarning):
    """The actors asked for need more CPUs or GPUs than the joined cluster has now: they wait for its autoscaler."""


class RayMissingError(OverflowCoreError, ImportError):
    """Ray (with Ray Data) is not installed: the message names the extra that installs it."""


def require_ray(*, data: bool = False, serve: bool = False) -> ModuleType:
    """Import ``ray`` (and ``ray.data`` / ``ray.serve`` when asked); a missing one raises :class:`RayMissingError`."""
    try:
        import ray

        if data:
            import ray.data
        if serve:
            import ray.serve
    except ImportError as exc:
        what = "ray[serve]" if serve else "ray[data]" if data else "ray"
        raise RayMissingError(f"{what} is not installed ({exc.msg}); install it with: {RAY_EXTRA}") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> ModuleType:
    """Join the Ray cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``), or start a local one
    when it is None (``num_cpus`` caps it). Nothing happens when this process is already connected. Usage statistics
    are off unless ``RAY_USAGE_STATS_ENABLED`` says otherwise; the dashboard is not started; workers' output is not
    copied to this process (it is in the Ray session's logs)."""
    ray = require_ray(data=True)
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # workers' own output (model-loading bars) stays in the Ray logs; their errors come back as exceptions
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    global _started_here
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
        _started_here = True
    return ray


def check_capacity(
    ray: Any, actors: int, num_cpus: float, num_gpus: float, *, what: str, grows: bool | None = None
) -> None:
    """Refuse, in one line, ``actors`` actors of ``num_cpus`` CPUs and ``num_gpus`` GPUs each that the cluster cannot
    hold all at once: Ray would start the ones that fit and leave the rest pending, and the caller would wait forever
    with no message. ``what`` names the setting to lower in the message (``"shard_actors (--workers)"``).

    ``grows``: whether the cluster may still gain nodes. None: not when :func:`connect` started it in this process (a
    local cluster has what it has); a joined cluster (``address``, or a ``ray.init`` of your own) may have an
    autoscaler, so there a shortfall is a :class:`CapacityWarning` and the actors wait for nodes.
    """
    have = ray.cluster_resources()
    short = []
    for name, each in (("CPU", num_cpus), ("GPU", num_gpus)):
        total = float(have.get(name, 0.0))
        if each > 0 and actors * each > total + 1e-9:
            need = f"{actors * each:g} {name} ({actors} x {each:g}), the cluster has {total:g}"
            short.append((need, int(total // each)))
    if not short:
        return
    fit = min(n for _, n in short)
    advice = f"use at most {fit}" if fit else "none fits: lower num_cpus / num_gpus (--gpus-per-worker)"
    message = f"{what}: {actors} actors need more than the Ray cluster has ({'; '.join(t for t, _ in short)}); {advice}"
    if grows is None:
        grows = not _started_here
    if not grows:
        raise ConfigError(f"{message}, or join a larger cluster (--ray ADDRESS)")
    warnings.warn(f"{message}; they wait for the cluster to add nodes", CapacityWarning, stacklevel=3)


def unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error (an :class:`OverflowCoreError` raised by a worker), else ``exc``."""
    cause = getattr(exc, "cause", None)
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, OverflowCoreError):
            return cause
        cause, seen = getattr(cause, "cause", None), seen + 1
    return exc


def local_folder(path: str | os.PathLike[str], what: str = "path") -> Path:
    """The index folder as a path every worker and the driver open the same way.

    A state index commits with ``os.replace`` and protects readers with ``flock``: an object store (``s3://``,
    ``gs://``...) has neither, so a URL is refused with the way to use one: mount it (s3fs / gcsfuse / EFS / NFS) at the
    same path on every node. Shared POSIX file systems (NFS v4, Lustre, EFS, CephFS) work as they are.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError(f"{what}: expected a folder path, got {path!r}")
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise InputError(
            f"{what}: expected a folder that every worker sees at the same path, got the {scheme}:// URL {text!r}; "
            "an object store cannot commit an index atomically: mount it (s3fs, gcsfuse, EFS, NFS) on every node and "
            "give the mount path"
        )
    return Path(text.removeprefix("file://"))


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to load the engine: ``OPRM.from_pretrained(model, **settings)``.

    ``model`` is a hub id (taken from each node's Hugging Face cache) or a folder every node sees at the same path;
    None is the bundled model. ``settings`` are ``from_pretrained``'s keyword arguments (``device``, ``dtype``,
    ``preset``, ``chunk_tokens``, ``max_batch_tokens``...).
    """

    model: str | None = None
    settings: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, model: str | os.PathLike[str] | None, settings: Mapping[str, Any] | None = None) -> EngineSpec:
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise InputError(f"model: expected a hub id, a folder or None (the bundled model), got {model!r}")
        if settings is not None and not isinstance(settings, Mapping):
            raise InputError(f"settings: expected a mapping of from_pretrained keyword arguments, got {settings!r}")
        return cls(None if model is None else os.fspath(model), tuple(sorted((settings or {}).items())))

    def load(self) -> OPRM:
        from overflow_core.engine import OPRM

        return OPRM.from_pretrained(self.model, **dict(self.settings))


def balance(sizes: Sequence[int], bins: int) -> list[list[int]]:
    """Positions of ``sizes`` spread over ``bins`` groups of nearly equal totals (largest first onto the lightest)."""
    groups: list[list[int]] = [[] for _ in range(max(1, bins))]
    totals = [0] * len(groups)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        g = totals.index(min(totals))
        groups[g].append(i)
        totals[g] += sizes[i]
    return [sorted(g) for g in groups if g]
