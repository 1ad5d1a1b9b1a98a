"""Scale out on Ray: build a state index with a pool of workers, answer from it with its shards spread over actors.

- :func:`build_index`: documents -> chunks -> a Ray Data pipeline whose actors each load the engine once and write
  their states as shards into a shared folder -> one manifest committed by the driver. The result is an ordinary
  :class:`~overflow_core.index.StateIndex` folder.
- :class:`DistributedIndex`: the shards of a saved index over an actor pool; a question is scattered to every actor,
  the best chunk is chosen with the engine's ranking function and decoded where its state is.
- :func:`overflow_core.distributed.serve.app`: a Ray Serve deployment that batches concurrent questions.

Needs the ``ray`` extra (``pip install -e '.[ray]'`` in the clone); ``ray`` is imported only when one of these runs, and a
missing one raises :class:`RayMissingError` naming the extra. See docs/scale-out.md.
"""

from overflow_core.distributed.build import BuildReport, build_index
from overflow_core.distributed.cluster import (
    RAY_EXTRA,
    CapacityWarning,
    EngineSpec,
    RayMissingError,
    check_capacity,
    connect,
    require_ray,
)
from overflow_core.distributed.query import DistributedIndex

__all__ = [
    "RAY_EXTRA",
    "BuildReport",
    "CapacityWarning",
    "DistributedIndex",
    "EngineSpec",
    "RayMissingError",
    "build_index",
    "check_capacity",
    "connect",
    "require_ray",
]
