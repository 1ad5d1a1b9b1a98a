"""Every Python example of docs/langchain.md runs as written, in order, with the bundled model, and prints what the page
says it prints (the comments after ``#`` on print lines, and the ```text block after the agent example)."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest

from overflow_core import OPRM

DOC = Path(__file__).resolve().parents[4] / "docs" / "langchain.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.fixture(scope="module")
def printed(bundled: OPRM) -> list[str]:
    """What the page's Python blocks print, run one after the other in one namespace, as a reader would."""
    if not DOC.exists():
        pytest.skip(f"{DOC} is not in this checkout")
    blocks = _blocks("python")
    assert len(blocks) >= 7, "the page lost examples"
    namespace: dict[str, object] = {"__name__": "__docs__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a HandoffWarning (or any other) in the examples is a bug
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")  # core scoring, not ours
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    return out.getvalue().splitlines()


def test_every_commented_print_prints_what_the_comment_says(printed: list[str]) -> None:
    """``print(...)  # 4412`` lines: the printed line equals the comment (``<12 hex digits>`` matches a fingerprint)."""
    expected = []
    for block in _blocks("python"):
        for line in block.splitlines():
            match = re.match(r"\s*print\(.*\)\s+#\s+(.*)$", line)
            if match:
                expected.append(match.group(1).split(":")[0].strip())
    assert len(expected) >= 9, expected
    lines = [line for line in printed if line.strip()]
    position = 0
    for want in expected:
        pattern = re.escape(want).replace(re.escape("<12 hex digits>"), "[0-9a-f]{12}")
        while position < len(lines) and not re.fullmatch(pattern, lines[position].strip(), flags=re.IGNORECASE):
            position += 1
        assert position < len(lines), f"no line printed {want!r} (in order); printed: {printed}"
        position += 1


def test_the_streamed_answer_and_the_agent_transcript(printed: list[str]) -> None:
    assert "4412" in printed, "the streamed chain prints the answer on its own line"
    [transcript] = [b for b in _blocks("text") if "error |" in b]
    start = printed.index(transcript.splitlines()[0])
    assert printed[start : start + 3] == transcript.strip().splitlines(), "the agent example prints what the page shows"


def test_the_reranker_example_puts_the_answer_first(printed: list[str]) -> None:
    reranked = [line.split() for line in printed if re.fullmatch(r"\S+ [0-9.]+ (True|False)", line)]
    assert reranked and reranked[0][0] == "staff-1" and reranked[0][2] == "False", printed
    assert float(reranked[0][1]) > 0.5 and all(float(r[1]) <= float(reranked[0][1]) for r in reranked)
