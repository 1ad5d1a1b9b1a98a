"""Running LongBench items through the engine: OPRM vs vanilla per item, scored as it goes, resumable.

Every item of every requested dataset is answered once per run (``vanilla``, and ``oprm@L`` for each chunk size L)
through :meth:`OPRM.answer` with the dataset's LongBench prompt as the engine template:

- QA, few-shot, retrieval, counting and v2: ``mode="oprm"`` (decode from the lowest-entropy chunk);
- summaries (gov_report, qmsum, multi_news, vcsum): ``mode="summarize"``, every chunk decoded and the outputs joined;
- code completion (lcc, repobench-p): only the last ``L`` tokens of the context are kept and read as one chunk (the
  engine's ``mode="vanilla"`` over that tail, which is one chunk's prefill whatever the chunker would cut);
- vanilla: ``mode="vanilla"``, the whole context as one sequence in the same prompt, without the not-found sentence.

In OPRM mode a not-found answer becomes the dataset's own "unanswerable" answer (qasper), or an empty prediction.

Each result is appended to the ``--out`` JSON Lines file as soon as it is scored, so an interrupted run resumes where
it stopped: items already in the file (same dataset, id and run) are skipped. A file written with other settings
(another model, budget, prompt framing...) is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from overflow_core.errors import InputError, OverflowCoreError
from overflow_core.longbench import metrics
from overflow_core.longbench.data import Item, Source, read_items
from overflow_core.longbench.datasets import V2, DatasetSpec, dataset
from overflow_core.longbench.prompts import (
    instruction_framing,
    question_for,
    supports_idk,
    tail_text,
    template_for,
    v2_template,
)
from overflow_core.types import Answer, Document

__all__ = ["RunSettings", "Runner", "load_records", "run_label"]

logger = logging.getLogger("overflow_core.longbench")
Budget = Literal["longbench", "paper"]
Chat = Literal["paper", "longbench", "none"]
_VANILLA_CHUNK = 2**62  # vanilla reads the whole context as one sequence: no chunk limit on the question


@dataclass(frozen=True)
class RunSettings:
    """What a run does besides which items it reads.

    Attributes:
        modes: ``"oprm"`` and/or ``"vanilla"``.
        chunk_tokens: OPRM chunk sizes, one run each (empty: the model's own setting).
        budget: ``"longbench"`` (LongBench's max new tokens per dataset) or ``"paper"`` (the paper script's, shorter).
        max_new_tokens: a cap over every dataset's budget (for quick runs); ``None`` for none.
        limit: the first ``limit`` items of each dataset; ``None`` for all.
        chat: ``"paper"`` wraps every dataset in the chat template (the paper's script), ``"longbench"`` skips it for
            few-shot and code datasets (LongBench's own evaluation), ``"none"`` never uses it.
        idk: add the not-found sentence (and filter chunks that answer with it) in OPRM mode; ``None`` follows the
            model's ``idk_filter`` setting, as the paper's script does per model.
        not_found: the not-found phrase (the paper uses ``Error``); ``None`` keeps the model's.
    """

    modes: tuple[str, ...] = ("oprm", "vanilla")
    chunk_tokens: tuple[int, ...] = ()
    budget: Budget = "longbench"
    max_new_tokens: int | None = None
    limit: int | None = None
    chat: Chat = "paper"
    idk: bool | None = None
    not_found: str | None = None

    def __post_init__(self) -> None:
        from overflow_core.errors import ConfigError

        bad = [m for m in self.modes if m not in ("oprm", "vanilla")]
        if bad or not self.modes:
            raise ConfigError(f"--mode: expected oprm and/or vanilla, got {','.join(self.modes) or 'nothing'}")
        if any(c < 1 for c in self.chunk_tokens):
            raise ConfigError(f"--chunk-tokens: expected positive sizes, got {self.chunk_tokens}")
        if self.budget not in ("longbench", "paper"):
            raise ConfigError(f"--budget: expected longbench or paper, got {self.budget!r}")
        if self.chat not in ("paper", "longbench", "none"):
            raise ConfigError(f"--chat-template: expected paper, longbench or none, got {self.chat!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit: expected a positive number of items, got {self.limit}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens: expected a positive number, got {self.max_new_tokens}")


def run_label(mode: str, chunk_tokens: int | None) -> str:
    """How results name a run: ``vanilla`` or ``oprm@2000``."""
    return "vanilla" if mode == "vanilla" else f"oprm@{chunk_tokens}"


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file (``[]`` when it does not exist).

    Raises:
        InputError: a line that is not a JSON object of this runner's results.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise InputError(f"--out {path}: not UTF-8 text; is it a LongBench results file? refusing to append") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            # the last line, without its newline, begun as this runner begins a record: a write cut short by a crash,
            # redone. Anything else (a file of the user's without a final newline) is refused, never truncated
            if n == len(lines) and line.startswith('{"') and (records or line.startswith('{"key"')):
                logger.warning("%s: line %d is incomplete and will be redone", path, n)
                break
            raise InputError(f"--out {path}: line {n} is not JSON ({exc.msg}); is it a LongBench results file?") from exc
        if not isinstance(rec, dict) or "key" not in rec or "score" not in rec:
            raise InputError(f"--out {path}: line {n} is not a LongBench result (no key/score); refusing to append")
        records.append(rec)
    return records


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline (:func:`load_records` skipped it), so appends stay lines."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        try:
            json.loads(data[data.rfind(b"\n") + 1 :])
        except ValueError:  # cut short: drop it (it was not counted as done)
            f.truncate(data.rfind(b"\n") + 1)
        else:  # a whole record that only lacks its newline
            f.write(b"\n")


class Runner:
    """Answers and scores items with one loaded :class:`~overflow_core.engine.OPRM`, appending results to ``out``.

    Example:
        >>> from overflow_core import OPRM
        >>> from overflow_core.longbench.data import find_sources
        >>> runner = Runner(OPRM.from_pretrained(), RunSettings(limit=2), "results.jsonl")  # doctest: +SKIP
        >>> records = runner.run(find_sources("LongBench/data", ["hotpotqa"]))  # doctest: +SKIP
    """

    def __init__(self, engine: Any, settings: RunSettings, out: str | Path, *, progress: bool | None = None) -> None:
        self.base = engine
        self.settings = settings
        self.out = Path(out)
        self.progress = progress
        self.not_found = settings.not_found or engine.config.not_found
        self.idk = engine.config.idk_filter if settings.idk is None else settings.idk
        self.chunk_sizes = settings.chunk_tokens or (engine.config.chunk_tokens,)
        self._engines: dict[tuple[str, str, int | None], Any] = {}

    # -- what a record is made with -------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The settings every record carries; resuming requires the same."""
        return {
            "model": self.base.name,
            "budget": self.settings.budget,
            "max_new_tokens_cap": self.settings.max_new_tokens,
            "chat": self.settings.chat,
            "idk": self.idk,
            "not_found": self.not_found,
        }

    def _budget(self, spec: DatasetSpec | None) -> int:
        if spec is None:
            n = V2.max_new_tokens
        else:
            n = spec.paper_max_new_tokens if self.settings.budget == "paper" else spec.max_new_tokens
        cap = self.settings.max_new_tokens
        return min(n, cap) if cap else n

    def _uses_idk(self, spec: DatasetSpec | None, mode: str) -> bool:
        return mode == "oprm" and self.idk and (spec is None or supports_idk(spec))

    def engine(self, spec: DatasetSpec | None, mode: str, chunk_tokens: int | None) -> Any:
        """The engine for one dataset and run: the shared model and tokenizer under this dataset's template."""
        key = (spec.name if spec else "v2", mode, chunk_tokens)
        if key not in self._engines:
            from overflow_core.engine import OPRM

            idk = self._uses_idk(spec, mode)
            chat = self.settings.chat == "paper" or (self.settings.chat == "longbench" and (spec is None or spec.chat))
            tok = self.base.tokenizer
            framing = instruction_framing(self.base.template)
            if spec is None:
                template = v2_template(tok, idk=idk, not_found=self.not_found, chat=chat, instruction=framing)
            else:
                template = template_for(spec, tok, idk=idk, not_found=self.not_found, chat=chat, instruction=framing)
            config = self.base.config.with_overrides(
                template=template,
                not_found=self.not_found,
                idk_filter=idk,
                # vanilla and code completion (whose last chunk is read as one sequence) need no chunk limit
                chunk_tokens=chunk_tokens if mode == "oprm" and (spec is None or spec.handling != "last_chunk")
                else _VANILLA_CHUNK,
                overlap_tokens=0 if mode == "vanilla" else None,
                max_new_tokens=self._budget(spec),
                state_cache_bytes=0,  # no continuation here: keep no states beyond the call
            )
            self._engines[key] = OPRM(self.base.model, self.base.tokenizer, config, name=self.base.name)
        return self._engines[key]

    # -- one item -------------------------------------------------------------------------------------------------------
    def answer_item(self, item: Item, mode: str, chunk_tokens: int | None) -> dict[str, Any]:
        """Answer and score one item in one run; returns its record (``error`` set when the engine refused it)."""
        spec = None if item.suite == "v2" else dataset(item.dataset)
        engine = self.engine(spec, mode, chunk_tokens)
        if spec is None:
            assert item.choices is not None
            question = V2.question(item.input, item.choices)
            engine_mode = "vanilla" if mode == "vanilla" else "oprm"
        else:
            question = question_for(spec, item)
            engine_mode = "vanilla" if mode == "vanilla" else "summarize" if spec.handling == "summarize" else "oprm"
        context = item.context
        last_chunk = mode == "oprm" and spec is not None and spec.handling == "last_chunk" and bool(chunk_tokens)
        if last_chunk:  # the last L tokens, read as one sequence: exactly one chunk, however the chunker would cut it
            assert chunk_tokens is not None
            context = tail_text(engine.tokenizer, context, chunk_tokens)
            engine_mode = "vanilla"
        record: dict[str, Any] = {
            "key": record_key(item, mode, chunk_tokens),
            "suite": item.suite,
            "dataset": item.dataset,
            "id": item.id,
            "run": run_label(mode, chunk_tokens),
            "mode": mode,
            "chunk_tokens": chunk_tokens if mode == "oprm" else None,
            "length": item.length,
            "answers": list(item.answers),
            **({"difficulty": item.difficulty, "domain": item.domain} if item.suite == "v2" else {}),
            "config": self.config,
        }
        t0 = time.perf_counter()
        try:
            answer: Answer = engine.answer(question, [Document(context, {"source": item.id})], mode=engine_mode)
        except OverflowCoreError as exc:  # the engine refused the item (a question longer than a chunk, no context...)
            return {**record, "prediction": "", "raw": None, "not_found": False, "score": 0.0, "error": str(exc)}
        raw = answer.text
        idk_used = self._uses_idk(spec, mode)
        prediction = raw
        if answer.not_found and idk_used:
            prediction = spec.unanswerable if spec is not None else ""
        if spec is None:
            choice = metrics.extract_choice(prediction)
            score = float(choice is not None and choice == item.answers[0])
            record["choice"] = choice
        else:
            score = metrics.score(
                spec.metric, prediction, item.answers, item.all_classes, first_line=spec.first_line
            )
        ranking = answer.ranking
        return {
            **record,
            "prediction": prediction,
            "raw": raw,
            "not_found": bool(answer.not_found and idk_used),
            "score": score,
            "error": None,
            "chunks": 1 if last_chunk else len(ranking.scores) if ranking is not None else None,
            "chosen_chunk": answer.chunk.chunk.index if answer.chunk is not None else None,
            "parts": len(answer.parts) if engine_mode == "summarize" else None,  # chunks decoded and joined
            "prompt_tokens": answer.usage.prompt_tokens,
            "generated_tokens": answer.usage.generated_tokens,
            "seconds": round(time.perf_counter() - t0, 4),
        }

    # -- a whole run ----------------------------------------------------------------------------------------------------
    def runs(self) -> list[tuple[str, int | None]]:
        """``(mode, chunk_tokens)`` of every run, vanilla first."""
        out: list[tuple[str, int | None]] = []
        if "vanilla" in self.settings.modes:
            out.append(("vanilla", None))
        if "oprm" in self.settings.modes:
            out += [("oprm", c) for c in self.chunk_sizes]
        return out

    def _check_config(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            theirs = rec.get("config")
            if theirs != self.config:
                raise InputError(
                    f"--out {self.out}: holds results made with other settings ({_diff(theirs, self.config)}); "
                    "give another --out, or the same settings to resume"
                )

    def run(self, sources: Sequence[Source]) -> list[dict[str, Any]]:
        """Answer every item of ``sources`` not yet in ``out`` in every run; returns all records of ``out``."""
        records = load_records(self.out)
        self._check_config(records)
        done = {r["key"] for r in records}
        from tqdm import tqdm

        self.out.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(self.out)
        for source in sources:
            items = list(read_items(source))
            if self.settings.limit is not None:
                items = items[: self.settings.limit]
            for mode, chunk in self.runs():
                todo = [it for it in items if record_key(it, mode, chunk) not in done]
                skipped = len(items) - len(todo)
                label = f"{source.name} {run_label(mode, chunk)}"
                if skipped:
                    logger.info("%s: %d of %d items already scored, skipped", label, skipped, len(items))
                if not todo:
                    continue
                bar = tqdm(todo, desc=label, unit="item", file=sys.stderr, disable=self.progress is False or None,
                           leave=False)
                for item in bar:
                    rec = self.answer_item(item, mode, chunk)
                    with self.out.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    records.append(rec)
                    done.add(rec["key"])
                bar.close()
        return records


def record_key(item: Item, mode: str, chunk_tokens: int | None) -> str:
    """What identifies a result: suite, dataset, item id and run."""
    return f"{item.suite}/{item.dataset}/{item.id}/{run_label(mode, chunk_tokens)}"


def _diff(theirs: Any, ours: dict[str, Any]) -> str:
    if not isinstance(theirs, dict):
        return "no settings recorded"
    parts = [f"{k} {theirs.get(k)!r} here vs {v!r} now" for k, v in ours.items() if theirs.get(k) != v]
    return "; ".join(parts) or "unknown difference"


def settings_dict(settings: RunSettings) -> dict[str, Any]:
    """``settings`` as plain JSON data."""
    return asdict(settings)
