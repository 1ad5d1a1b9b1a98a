"""Decoding: continue from one live session, token by token, with stop rules and incremental text.

Knows nothing about chunks or questions: it gets a session already positioned after the prompt and the logits that
prompt produced, and it never feeds the prompt again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from overflow_core.backends.base import Session
from overflow_core.sampling import sample_next

__all__ = ["Generation", "stop_token_ids"]


def stop_token_ids(tokenizer: Any, stop: Sequence[str]) -> frozenset[int]:
    """EOS plus every stop string that is a single token of the vocabulary (e.g. ``<|im_end|>``)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for s in stop:
        if s in vocab:
            ids.add(int(vocab[s]))
    return frozenset(ids)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (not safe to emit yet)."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class Generation:
    """An iterator of text pieces decoded from ``session``; after it is exhausted, ``text``, ``token_ids`` and
    ``finish_reason`` (``"stop"``, ``"length"``) describe the whole output.

    Args:
        session: positioned after the prompt; it is advanced in place.
        logits: ``[1, V]`` next-token logits at the end of the prompt.
        tokenizer: decodes ids to text.
        max_new_tokens: most tokens to generate.
        stop: strings that end the output (not included in it).
        stop_ids: token ids that end the output (EOS and single-token stop strings).
        temperature / top_k / top_p / generator: see :func:`overflow_core.sampling.sample_next`.
        lstrip: drop the output's leading whitespace (from ``text`` and from the pieces). A reply that starts a chat
            turn or an answer has no use for it, and a model whose answers copy a value from the context (the bundled
            one) emits the space the value had inside its sentence first.
    """

    def __init__(
        self,
        session: Session,
        logits: torch.Tensor,
        *,
        tokenizer: Any,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        stop_ids: frozenset[int] = frozenset(),
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        lstrip: bool = False,
    ) -> None:
        self._session = session
        self._logits = logits
        self._tokenizer = tokenizer
        self._max_new_tokens = max_new_tokens
        self._stop = tuple(stop)
        self._stop_ids = stop_ids
        self._lstrip = lstrip
        self._sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator}
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.forward_tokens = 0  # tokens fed to the model while decoding

    def __iter__(self) -> Iterator[str]:
        # inference mode is entered per step, never across a ``yield``: it is per-thread, and a paused generation may be
        # resumed from another thread (async adapters) or held by a caller that must not stay in inference mode.
        emitted = 0
        logits = self._logits
        while len(self.token_ids) < self._max_new_tokens:
            with torch.inference_mode():
                token = int(sample_next(logits, **self._sampling)[0])  # type: ignore[arg-type]
            if token in self._stop_ids:
                self.finish_reason = "stop"
                break
            self.token_ids.append(token)
            full = self._tokenizer.decode(self.token_ids, skip_special_tokens=True)
            if self._lstrip:
                full = full.lstrip()
            cut = min((full.find(s) for s in self._stop if s in full), default=-1)
            if cut >= 0:
                self.text = full[:cut]
                self.finish_reason = "stop"
                break
            self.text = full
            safe = len(full) - _held_back(full, self._stop)
            if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
                safe = min(safe, len(full) - 1)
            if safe > emitted:
                yield full[emitted:safe]
                emitted = safe
            if len(self.token_ids) < self._max_new_tokens:
                with torch.inference_mode():
                    logits = self._session.feed(torch.tensor([[token]], device=logits.device))
                self.forward_tokens += 1
        else:
            self.finish_reason = "length"
        if len(self.text) > emitted:
            yield self.text[emitted:]
