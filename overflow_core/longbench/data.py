"""Reading LongBench's published files: v1 and LongBench-E JSON Lines, and LongBench v2's JSON.

LongBench v1 (``data.zip`` of THUDM/LongBench, unpacked) holds ``{dataset}.jsonl`` and ``{dataset}_e.jsonl``, one item a
line: ``input``, ``context``, ``answers`` (a list), ``all_classes`` (a list or null), ``length`` (words in English,
characters in Chinese), ``dataset``, ``language``, ``_id``. LongBench v2 (``data.json`` of THUDM/LongBench-v2) is one
JSON list of items: ``_id``, ``domain``, ``sub_domain``, ``difficulty`` (easy/hard), ``length`` (short/medium/long),
``question``, ``choice_A`` .. ``choice_D``, ``answer`` (a letter), ``context``.

A malformed file stops the run with one line naming the file, the line or item, and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from overflow_core.errors import InputError
from overflow_core.longbench.datasets import DATASETS, LONGBENCH_E, PAPER_DATASETS

__all__ = ["PRESETS", "Item", "Source", "find_sources", "read_items", "read_v1", "read_v2"]

Suite = Literal["v1", "e", "v2"]
V2_FILES = ("data.json", "longbench_v2.json", "v2/data.json", "LongBench-v2/data.json")
PRESETS = {
    "all": "every dataset whose file is in --data",
    "v1": "the 21 LongBench datasets",
    "e": "the 13 LongBench-E datasets",
    "paper": "the paper's 16 English LongBench datasets",
    "paper-e": "the paper's LongBench-E datasets (all 13)",
}


@dataclass(frozen=True)
class Item:
    """One test item. ``dataset`` is the v1 name (also for LongBench-E items) or ``"v2"``.

    ``length`` is an int for v1/E (LongBench's word or character count) and ``"short"``/``"medium"``/``"long"`` for
    v2; ``choices``, ``difficulty`` and ``domain`` are v2's.
    """

    suite: Suite
    dataset: str
    id: str
    input: str
    context: str
    answers: tuple[str, ...]
    all_classes: tuple[str, ...] = ()
    length: int | str | None = None
    choices: tuple[str, str, str, str] | None = None
    difficulty: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class Source:
    """A file to evaluate: its suite, dataset name and path."""

    suite: Suite
    dataset: str
    path: Path

    @property
    def name(self) -> str:
        """How ``--datasets`` and the results name it: ``hotpotqa``, ``hotpotqa_e`` or ``v2``."""
        return {"v1": self.dataset, "e": f"{self.dataset}_e", "v2": "v2"}[self.suite]


def _where(path: Path, n: int, what: str) -> str:
    return f"{path}: {what} {n}"


def _strings(value: Any, field: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected '{field}' to be a list of strings, got {type(value).__name__}")
    return tuple(value)


def _text(obj: Mapping[str, Any], field: str, where: str) -> str:
    if field not in obj:
        raise InputError(f"{where}: expected a field '{field}', it is missing")
    value = obj[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{where}: expected '{field}' to be a string, got {type(value).__name__}")
    return value


def read_v1(path: str | Path, *, suite: Suite = "v1", dataset: str | None = None) -> Iterator[Item]:
    """The items of one LongBench (or LongBench-E, ``suite="e"``) JSON Lines file, in file order.

    Raises:
        InputError: a line that is not a JSON object, or lacks ``input``/``context``/``answers``/``_id``.
    """
    path = Path(path)
    name = dataset or path.stem.removesuffix("_e")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = _where(path, n, "line")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: expected one JSON object per line ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if "answers" not in obj:
                raise InputError(f"{where}: expected a field 'answers', it is missing")
            if "_id" not in obj:
                raise InputError(f"{where}: expected a field '_id', it is missing")
            length = obj.get("length")
            if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
                raise InputError(f"{where}: expected 'length' to be an integer, got {length!r}")
            yield Item(
                suite=suite,
                dataset=name,
                id=str(obj["_id"]),
                input=_text(obj, "input", where),
                context=_text(obj, "context", where),
                answers=_strings(obj["answers"], "answers", where),
                all_classes=() if obj.get("all_classes") is None else _strings(obj["all_classes"], "all_classes", where),
                length=length,
            )


def read_v2(path: str | Path) -> Iterator[Item]:
    """The items of LongBench v2's ``data.json`` (a JSON list; a JSON Lines file of the same objects also works).

    Raises:
        InputError: not JSON, or an item without its question, four choices, answer letter or context.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        loaded = json.loads(text)
        rows: Sequence[Any] = loaded if isinstance(loaded, list) else [loaded]
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: expected LongBench v2's JSON list of items ({exc.msg})") from exc
    for n, obj in enumerate(rows):
        where = _where(path, n, "item")
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        choices = tuple(_text(obj, f"choice_{c}", where) for c in "ABCD")
        answer = _text(obj, "answer", where).strip()
        if answer not in ("A", "B", "C", "D"):
            raise InputError(f"{where}: expected 'answer' to be one of A, B, C, D, got {answer!r}")
        if "_id" not in obj:
            raise InputError(f"{where}: expected a field '_id', it is missing")
        yield Item(
            suite="v2",
            dataset="v2",
            id=str(obj["_id"]),
            input=_text(obj, "question", where),
            context=_text(obj, "context", where),
            answers=(answer,),
            length=str(obj.get("length") or "") or None,
            choices=(choices[0], choices[1], choices[2], choices[3]),
            difficulty=str(obj.get("difficulty") or "") or None,
            domain=str(obj.get("domain") or "") or None,
        )


def read_items(source: Source) -> Iterator[Item]:
    """The items of one source file."""
    if source.suite == "v2":
        return read_v2(source.path)
    return read_v1(source.path, suite=source.suite, dataset=source.dataset)


def _roots(data_dir: Path) -> list[Path]:
    roots = [data_dir]
    if (data_dir / "data").is_dir():  # LongBench's data.zip unpacks into data/
        roots.append(data_dir / "data")
    return roots


def _available(data_dir: Path) -> dict[str, Source]:
    found: dict[str, Source] = {}
    for root in _roots(data_dir):
        for name in DATASETS:
            for suite, file in (("v1", f"{name}.jsonl"), ("e", f"{name}_e.jsonl")):
                path = root / file
                if path.is_file():
                    src = Source(suite, name, path)  # type: ignore[arg-type]
                    found.setdefault(src.name, src)
        for file in V2_FILES:
            if (root / file).is_file():
                found.setdefault("v2", Source("v2", "v2", root / file))
    return found


def _expand(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name == "v1":
            out += list(DATASETS)
        elif name == "e":
            out += [f"{n}_e" for n in LONGBENCH_E]
        elif name == "paper":
            out += list(PAPER_DATASETS)
        elif name == "paper-e":
            out += [f"{n}_e" for n in LONGBENCH_E]
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def find_sources(data_dir: str | Path, names: Sequence[str] | None = None) -> list[Source]:
    """The files of ``names`` (dataset names, ``NAME_e``, ``v2`` or a preset of :data:`PRESETS`) under ``data_dir``.

    ``None`` or ``["all"]`` takes every known file present. A preset takes the files of its datasets that are present;
    a dataset named on its own must be present.

    Raises:
        InputError: ``data_dir`` is not a folder, holds no LongBench file, or lacks a file named explicitly.
    """
    from overflow_core.errors import ConfigError

    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"--data: expected a folder of LongBench files, {str(root)!r} is not a folder")
    available = _available(root)
    if not available:
        raise InputError(
            f"--data {root}: expected LongBench files (hotpotqa.jsonl, hotpotqa_e.jsonl, ... or LongBench v2's "
            "data.json), found none; see docs/longbench.md for how to get them"
        )
    if not names or list(names) == ["all"]:
        wanted, explicit = list(available), set()
    else:
        wanted, explicit = _expand(names), {n for n in names if n not in PRESETS}
    known = {*DATASETS, *(f"{n}_e" for n in LONGBENCH_E), "v2"}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ConfigError(
            f"--datasets: unknown {', '.join(unknown)}; expected LongBench names (hotpotqa, ...), NAME_e for "
            f"LongBench-E, v2, or a preset ({', '.join(PRESETS)})"
        )
    missing = [n for n in wanted if n not in available and n in explicit]
    if missing:
        example = "data.json" if missing[0] == "v2" else f"{missing[0]}.jsonl"
        raise InputError(f"--data {root}: no file for {', '.join(missing)} (expected e.g. {example})")
    chosen = [available[n] for n in wanted if n in available]
    if not chosen:
        raise InputError(f"--data {root}: none of the requested datasets has a file there")
    return chosen
