"""Benchmarks: OPRM next to vanilla inference, OPRM + state index, embedding RAG and BM25 RAG, on the same inputs.

Run it as ``oprm bench`` (see :mod:`overflow_core.bench.cli` and ``docs/benchmarks.md``). The modules, one concept each:

- :mod:`~overflow_core.bench.tasks`: generated question sets at chosen lengths and a loader for a user's JSONL;
- :mod:`~overflow_core.bench.methods`: the methods compared, all answering with the same model;
- :mod:`~overflow_core.bench.metrics`: exact match, hit@k, aggregation, FLOPs per token, GEMM peak, roofline fraction;
- :mod:`~overflow_core.bench.memory`: RSS measurement;
- :mod:`~overflow_core.bench.scaling`: length, budget, throughput and question-count measurements;
- :mod:`~overflow_core.bench.runner`: one run of everything, as a dict;
- :mod:`~overflow_core.bench.report`: JSON, Markdown, PNG and terminal output.

The RAG baselines, matplotlib and rich are the optional ``bench`` extra (``pip install -e '.[bench]'``), imported only when used.
"""

__all__: list[str] = []
