"""Every example in the LlamaIndex guide and the packages' READMEs runs as written (with the bundled model) and prints
what its comments say: a ``print(...)  # expected`` line must print ``expected``, in order."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from overflow_core import OPRM

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parents[1]
PAGES = [
    ROOT / "docs" / "llama_index.md",
    HERE / "README.md",
    *sorted(HERE.glob("llama-index-*-overflow/README.md")),
]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_EXPECT = re.compile(r"^\s*print\(.*\)\s+#\s(.+)$", re.M)


def test_every_package_has_a_readme_with_an_example() -> None:
    assert len(PAGES) == 6, PAGES
    for page in PAGES:
        assert _BLOCK.search(page.read_text(encoding="utf-8")), f"{page} has no python example"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_the_examples_run_and_print_what_they_say(
    page: Path, bundled: OPRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = _BLOCK.findall(page.read_text(encoding="utf-8"))
    source = "\n".join(blocks)
    expected = [m.strip() for m in _EXPECT.findall(source)]
    assert expected, f"{page}: expected examples that say what they print"
    monkeypatch.chdir(tmp_path)  # examples that persist write into the working folder
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, str(page), "exec"), {"__name__": "docs"})
    printed = [line.strip() for line in out.getvalue().splitlines()]
    position = 0
    for line in expected:
        assert line in printed[position:], f"{page}: expected {line!r} printed after line {position}, got {printed}"
        position = printed.index(line, position) + 1
