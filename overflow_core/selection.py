"""Selection: score each micro-batch of prefilled rows for a question and keep the states of the best rows so far.

The engine (rows prefilled from whole prompts) and the state index (rows continued from stored states) both produce
batches of ``(rows, logits, state)`` one after another; this module turns them into the question's :class:`Scored`:
every row's signals and the states of the running top ``keep`` rows, so that memory holds at most ``keep`` states
whatever the number of chunks. Knows nothing about where the rows came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from overflow_core import scoring
from overflow_core.backends.base import Backend, State
from overflow_core.types import Ranking

__all__ = ["Kept", "Scored", "batch_signals", "enters_top", "keep_best"]

PURSUE = 1e-6  # batch_signals teacher-forces the not-found phrase on rows whose first-token probability is at least this
Kept = dict[int, tuple[State, torch.Tensor]]  # chunk index -> (its one-row state, its [1, V] last logits)


@dataclass
class Scored:
    """What scoring a question over chunks produced: the ranking and the kept states.

    Attributes:
        ranking: every chunk's score, best first.
        kept: chunk index -> (one-row state after the chunk's full prompt, ``[1, V]`` logits there), for the best rows.
        prompts: chunk index -> the full prompt ids of each kept row (the key of the engine's state cache).
    """

    ranking: Ranking
    kept: Kept = field(default_factory=dict)
    prompts: dict[int, list[int]] = field(default_factory=dict)


def batch_signals(
    backend: Backend, logits: torch.Tensor, state: Callable[[], State], idk_ids: Iterable[int]
) -> scoring.Signals:
    """The scoring signals of one micro-batch: ``logits`` ``[B, V]`` at each row's answer position.

    The one place where a batch of rows is scored, for full prompts (the engine) and stored states (the index) alike.
    ``state`` returns the batch's ``B`` rows of state (a call may copy them, so it is made only when a check needs to look
    past the first answer token).

    The not-found signals read the whole phrase when ``idk_ids`` is a :class:`~overflow_core.prompting.NotFoundIds`
    whose phrase takes more than one token: each tokenization of the phrase is teacher-forced on the rows (one batched
    feed for all tokenizations of a length, from a copy of their state), ``not_found_prob`` is the probability of the
    whole phrase and ``idk`` says that greedy decoding would write all of it. With a plain set of ids, or a one-token
    phrase, both come from the first token alone.
    """
    sig = scoring.signals(logits, idk_ids)
    sequences = getattr(idk_ids, "sequences", ())  # a NotFoundIds: the whole phrase, per tokenization
    if all(len(seq) == 1 for seq in sequences):
        return sig  # the first token is the whole phrase (or a plain set of ids was given): nothing to teacher-force
    prob = torch.zeros_like(sig.not_found_prob)
    idk = torch.zeros_like(sig.idk)
    first = torch.softmax(logits.float(), -1)
    # rows where a tokenization's first token is below PURSUE cannot write it greedily and add < PURSUE to its probability
    pursued = [
        (seq, (first[:, seq[0]] >= PURSUE).nonzero().flatten().tolist() if len(seq) > 1 else list(range(len(prob))))
        for seq in sequences
    ]
    forced = _teacher_force(backend, state, [(seq, rows) for seq, rows in pursued if len(seq) > 1 and rows], logits.device)
    for seq, rows in pursued:
        if rows:
            p, greedy = scoring.phrase_probability(logits[rows], seq, forced.get(tuple(seq)))
            prob[rows] += p.cpu()
            idk[rows] |= greedy.cpu()
    return scoring.Signals(sig.entropy, sig.top_prob, prob, idk)


def enters_top(
    kept: Mapping[int, object], rows: Sequence[int], sig: scoring.Signals, keep: int, *, criterion: str, idk_filter: bool
) -> bool:
    """Whether any of ``rows`` enters the running top-``keep`` (else the batch's state need not be copied)."""
    candidates = sorted({*kept, *rows})
    order = scoring.rank_order(sig.take(candidates), criterion=criterion, idk_filter=idk_filter)
    return any(candidates[j] not in kept for j in order[:keep])


def keep_best(
    backend: Backend,
    kept: Kept,
    rows: Sequence[int],
    logits: torch.Tensor,
    state: State,
    sig: scoring.Signals,
    keep: int,
    *,
    criterion: str,
    idk_filter: bool,
) -> Kept:
    """The running top-``keep`` over the rows seen so far: select the batch rows that enter it, drop those pushed out.

    Args:
        kept: the top so far (not modified).
        rows: chunk indices of the batch's rows, in batch order.
        logits: ``[B, V]`` the batch's last logits; state: its ``B`` rows.
        sig: signals of every chunk scored so far (this batch included).
    """
    candidates = sorted({*kept, *rows})  # index order, so ties break exactly as in the final ranking
    order = scoring.rank_order(sig.take(candidates), criterion=criterion, idk_filter=idk_filter)
    best = [candidates[j] for j in order[:keep]]
    new_rows = [i for i in best if i not in kept]
    out = {i: kept[i] for i in best if i in kept}
    if new_rows:
        positions = [list(rows).index(i) for i in new_rows]
        selected = backend.select(state, positions)
        for j, i in enumerate(new_rows):
            out[i] = (backend.select(selected, [j]), logits[positions[j] : positions[j] + 1].clone())
    return out


def _teacher_force(
    backend: Backend,
    state: Callable[[], State],
    wanted: Sequence[tuple[tuple[int, ...], list[int]]],
    device: torch.device,
) -> dict[tuple[int, ...], torch.Tensor]:
    """Logits after feeding ``seq[:-1]`` on ``rows`` of the batch, for each ``(seq, rows)`` of ``wanted``.

    Tokenizations of the same length share one feed (their rows stacked, each row fed its own phrase), so a phrase with
    two tokenizations costs one forward, not two. Returns ``seq -> [len(rows), len(seq) - 1, V]``.
    """
    out: dict[tuple[int, ...], torch.Tensor] = {}
    if not wanted:
        return out
    states = state()
    for length in sorted({len(seq) for seq, _ in wanted}):
        group = [(seq, rows) for seq, rows in wanted if len(seq) == length]
        index = [i for _, rows in group for i in rows]
        fresh = index != list(range(states.batch_size))  # select copies; the batch's own state is read again after this
        sub = backend.select(states, index) if fresh else states
        feed = torch.tensor([list(seq[:-1]) for seq, rows in group for _ in rows], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = backend.open(sub, copy=not fresh).feed(feed, all_logits=True)
        start = 0
        for seq, rows in group:
            out[tuple(seq)] = logits[start : start + len(rows)]
            start += len(rows)
    return out
