"""LongBench (v1, LongBench-E, v2) with OPRM vs vanilla inference, scored with LongBench's metrics.

One module per concept: :mod:`~overflow_core.longbench.datasets` (LongBench's per-dataset prompts, budgets and metrics,
as facts), :mod:`~overflow_core.longbench.data` (reading the published files), :mod:`~overflow_core.longbench.metrics`,
:mod:`~overflow_core.longbench.prompts` (LongBench prompts as engine templates), :mod:`~overflow_core.longbench.runner`
(answering and scoring, resumable), :mod:`~overflow_core.longbench.report` (averages, table, plot) and
:mod:`~overflow_core.longbench.cli` (``oprm longbench``). See docs/longbench.md.
"""

from overflow_core.longbench.data import Item, Source, find_sources, read_items
from overflow_core.longbench.datasets import DATASETS, LONGBENCH_E, PAPER_DATASETS, DatasetSpec
from overflow_core.longbench.metrics import score
from overflow_core.longbench.report import summarize
from overflow_core.longbench.runner import Runner, RunSettings

__all__ = [
    "DATASETS",
    "LONGBENCH_E",
    "PAPER_DATASETS",
    "DatasetSpec",
    "Item",
    "RunSettings",
    "Runner",
    "Source",
    "find_sources",
    "read_items",
    "score",
    "summarize",
]
