"""Answering: from a question's scored chunks to the :class:`~overflow_core.types.Answer`, streamed piece by piece.

Three modes, each a numbered path:

- ``oprm``: (1) score, keeping the best state; (2) if every chunk abstained, answer "not found" without guessing;
  (3) decode from the best chunk's state; (4) an output that starts with the not-found phrase is reported as not found.
- ``summarize``: (1) score, keeping every answering state (or the top ``k``); (2) decode from each in document order;
  (3) join the outputs.
- ``vanilla``: (1) read the whole context as one sequence; (2) decode from its state.

The engine (scores from whole prompts) and the state index (scores from stored states) both answer through
:class:`AnswerStream`; they differ only in the ``score`` function they hand it. Knows nothing about chunking, prompts
or where states come from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from overflow_core.backends.base import Session, State
from overflow_core.decode import Generation
from overflow_core.selection import Scored
from overflow_core.types import Answer, Ranking, Timings, Usage

__all__ = ["AnswerStream", "is_not_found"]

ScoreFn = Callable[[int], Scored]  # keep -> the question's Scored with the states of the `keep` best rows
DecodeFn = Callable[[Session, torch.Tensor], Generation]  # (session after the prompt, [1, V] logits) -> generation
VanillaFn = Callable[[], tuple[Session, torch.Tensor, int]]  # () -> (session after the whole prompt, logits, its length)


def is_not_found(text: str, not_found: str) -> bool:
    """Whether a decoded answer is the not-found phrase (case and surrounding space ignored)."""
    return text.strip().lower().startswith(not_found.strip().lower())


class AnswerStream:
    """Iterates the answer's text pieces; ``result`` holds the :class:`Answer` once iteration is complete.

    Args:
        mode: ``"oprm"``, ``"summarize"`` or ``"vanilla"``.
        k: with ``summarize``, decode from at most the ``k`` best answering chunks.
        n_chunks: how many chunks there are (the most states ``summarize`` may keep).
        score: scores the question over the chunks, keeping the best ``keep`` states (not used by ``vanilla``).
        open_state: opens a private session on a kept state.
        decode: decodes from a session with this call's decoding settings.
        not_found: the phrase the model says when the text does not answer.
        idk_filter: whether abstaining chunks are left out of ``summarize``.
        vanilla: reads the whole context as one sequence (only for ``vanilla``).
    """

    def __init__(
        self,
        *,
        mode: str,
        k: int | None,
        n_chunks: int,
        score: ScoreFn,
        open_state: Callable[[State], Session],
        decode: DecodeFn,
        not_found: str,
        idk_filter: bool,
        vanilla: VanillaFn | None = None,
    ) -> None:
        self.mode, self.k, self.n_chunks = mode, k, n_chunks
        self._score, self._open, self._decode, self._vanilla_state = score, open_state, decode, vanilla
        self.not_found, self.idk_filter = not_found, idk_filter
        self._result: Answer | None = None

    @property
    def result(self) -> Answer:
        if self._result is None:
            raise RuntimeError("the answer is complete only after the stream has been iterated to its end")
        return self._result

    def __iter__(self) -> Iterator[str]:
        if self.mode == "vanilla":
            yield from self._vanilla()
        elif self.mode == "summarize":
            yield from self._summarize()
        else:
            yield from self._oprm()

    def _not_found_answer(self, ranking: Ranking | None, timings: Timings, usage: Usage) -> Answer:
        return Answer(
            text=self.not_found,
            not_found=True,
            mode=self.mode,
            chunk=None,
            ranking=ranking,
            timings=timings,
            usage=usage,
        )

    def _oprm(self) -> Iterator[str]:
        scored = self._score(1)
        ranking = scored.ranking
        best = ranking.best
        if best is None:  # every chunk abstained: say so, do not guess
            self._result = self._not_found_answer(ranking, ranking.timings, ranking.usage)
            yield self._result.text
            return
        state, logits = scored.kept[best.chunk.index]
        t0 = time.perf_counter()
        generation = self._decode(self._open(state), logits)
        yield from generation
        timings = Timings(ranking.timings.prefill_s, ranking.timings.select_s, time.perf_counter() - t0)
        usage = replace(ranking.usage, generated_tokens=len(generation.token_ids))
        not_found = is_not_found(generation.text, self.not_found)
        self._result = Answer(
            text=generation.text.strip(),
            not_found=not_found,
            mode="oprm",
            chunk=None if not_found else best,
            ranking=ranking,
            timings=timings,
            usage=usage,
        )

    def _summarize(self) -> Iterator[str]:
        scored = self._score(self.k or self.n_chunks)
        ranking = scored.ranking
        answering = [s for s in ranking.scores if not (s.idk and self.idk_filter)]
        if self.k is not None:
            answering = answering[: self.k]
        parts: list[str] = []
        generated = 0
        t0 = time.perf_counter()
        for score in sorted(answering, key=lambda s: s.chunk.index):
            state, logits = scored.kept[score.chunk.index]
            generation = self._decode(self._open(state), logits)
            if parts:
                yield "\n"
            yield from generation
            generated += len(generation.token_ids)
            parts.append(generation.text.strip())
        timings = Timings(ranking.timings.prefill_s, ranking.timings.select_s, time.perf_counter() - t0)
        usage = replace(ranking.usage, generated_tokens=generated)
        if not parts:
            self._result = self._not_found_answer(ranking, timings, usage)
            yield self._result.text
            return
        self._result = Answer(
            text="\n".join(parts),
            not_found=False,
            mode="summarize",
            chunk=answering[0] if answering else None,
            ranking=ranking,
            timings=timings,
            usage=usage,
            parts=tuple(parts),
        )

    def _vanilla(self) -> Iterator[str]:
        if self._vanilla_state is None:
            raise RuntimeError("mode 'vanilla' needs the whole context, and this stream was built without it")
        t0 = time.perf_counter()
        session, logits, prompt_tokens = self._vanilla_state()
        t1 = time.perf_counter()
        generation = self._decode(session, logits)
        yield from generation
        timings = Timings(prefill_s=t1 - t0, decode_s=time.perf_counter() - t1)
        usage = Usage(prompt_tokens=prompt_tokens, padded_tokens=prompt_tokens, generated_tokens=len(generation.token_ids))
        self._result = Answer(
            text=generation.text.strip(),
            not_found=is_not_found(generation.text, self.not_found),
            mode="vanilla",
            chunk=None,
            ranking=None,
            timings=timings,
            usage=usage,
        )
