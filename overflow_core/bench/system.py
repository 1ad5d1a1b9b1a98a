"""The machine a benchmark ran on, described for the results file."""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["describe_machine", "describe_model"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions and thread count of the numeric stack."""
    import torch
    import transformers

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": bool(torch.cuda.is_available()),
    }


def describe_model(oprm: Any, path: str | None) -> dict[str, Any]:
    """Name, size and OPRM settings of the engine's model; ``flops_per_token`` as counted in :mod:`.metrics`."""
    from overflow_core.bench.metrics import flops_per_token

    params = sum(p.numel() for p in oprm.model.parameters())
    fpt = flops_per_token(oprm.model)
    return {
        "name": oprm.name,
        "path": path,
        "type": getattr(oprm.model.config, "model_type", None),
        "backend": oprm.backend.name,
        "params": params,
        "non_embedding_params": fpt // 2,
        "flops_per_token": fpt,
        "chunk_tokens": oprm.config.chunk_tokens,
        "max_batch_tokens": oprm.config.batch_tokens,
        "max_new_tokens": oprm.config.max_new_tokens,
        "dtype": oprm.config.dtype,
        "not_found": oprm.config.not_found,
    }
