"""The LlamaIndex guide's examples run as written (with the bundled model) and print what the guide says they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from overflow_core import OPRM

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "llama_index.md"


def test_the_guides_python_blocks_run(bundled: OPRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3, f"expected the guide's examples in {GUIDE}"
    monkeypatch.chdir(tmp_path)  # the persistence example writes into the working folder
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile("\n".join(blocks), str(GUIDE), "exec"), {"__name__": "guide"})
    lines = out.getvalue().splitlines()
    assert lines[0] == "4412", lines
    assert "Not found in the documents." in lines
    assert lines.count("4412") >= 3, "the query engine, the RetrieverQueryEngine set-up and the re-ranker all answer"
