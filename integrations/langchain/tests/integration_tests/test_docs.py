"""The Python examples of docs/langchain.md run as written (with the bundled model) and print what they promise."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from overflow_core import OPRM

DOC = Path(__file__).resolve().parents[4] / "docs" / "langchain.md"


def test_docs_examples_run(bundled: OPRM) -> None:
    if not DOC.exists():
        pytest.skip(f"{DOC} is not in this checkout")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert lines[0].strip() == "4412", lines
    assert lines[1].strip().lower().startswith("not found"), lines
    assert lines[2].strip() == "4412", "the streamed answer"
    assert "Alice Baker is 4412" in out.getvalue(), "the tool's content"
    artifact = next(line for line in lines if line.startswith("[("))
    assert artifact.startswith("[('staff.txt'"), f"the tool's artifact, best document first: {artifact}"
    scores = next(line for line in reversed(lines) if line.startswith("["))
    assert scores != artifact, "the reranker example printed its relevance scores"
