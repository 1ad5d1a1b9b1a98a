"""Distributed query of a state index: its shards spread over Ray actors, a question scattered to all of them.

Each :class:`ShardActor` loads the engine and the index once, keeps only the chunks of its shards
(:meth:`StateIndex.remove`) and scores a question over them with the index's own code (:meth:`StateIndex.rank`),
which keeps the best rows' states in the actor's state cache. It returns each chunk's signals only (entropy, top-token
probability, not-found probability, abstention: four numbers a chunk). The driver puts them in one
:class:`~overflow_core.scoring.Signals` and ranks every chunk with :func:`overflow_core.scoring.rank_chunks`, the
function the engine and the local index use, so the ranking is the local one. The chosen chunk is decoded by the actor
that holds its state (:meth:`OPRM.complete` finds it in the state cache): no state crosses the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from overflow_core import scoring
from overflow_core.answering import is_not_found
from overflow_core.config import check_k
from overflow_core.distributed.cluster import EngineSpec, balance, check_capacity, connect, local_folder, unwrap
from overflow_core.errors import ConfigError, InputError, OverflowCoreError, StateIndexError
from overflow_core.index import storage
from overflow_core.index.fingerprint import canonical, sha256
from overflow_core.types import Answer, Chunk, ChunkScore, Ranking, Timings, Usage

__all__ = ["DistributedIndex", "ShardActor"]


def _digest(chunks: Sequence[Chunk]) -> str:
    """Identifies the chunks an actor holds (their token ids and spans), to check it opened what the driver read."""
    return sha256(canonical([[c.start, c.end, list(c.ids)] for c in chunks]))


class ShardActor:
    """Holds some shards of an index (their chunks' states stay on this worker's disk / memory map) and its own engine."""

    def __init__(self, spec: EngineSpec, folder: str, chunks: Sequence[int], digest: str, verify: bool) -> None:
        # Ray does not hand an error raised in an actor's __init__ back to the caller (only "the actor died"): keep it
        # and raise it from config(), the first call, so the user sees the one-line reason (a model mismatch...).
        self.error: OverflowCoreError | None = None
        try:
            self._open(spec, folder, chunks, digest, verify)
        except OverflowCoreError as exc:
            self.error = exc

    def _open(self, spec: EngineSpec, folder: str, chunks: Sequence[int], digest: str, verify: bool) -> None:
        from overflow_core.index import StateIndex

        self.engine = spec.load()
        self.index = StateIndex.load(folder, self.engine, verify=verify)
        mine = set(chunks)
        self.globals = [c.index for c in self.index.chunks if c.index in mine]  # local position -> global chunk number
        self.index.remove(lambda c: c.index not in mine)
        if self.globals != list(chunks) or _digest(self.index.chunks) != digest:
            raise StateIndexError(
                f"index {folder} changed while the shard actors started (its chunks are not the ones the driver read); "
                "open it again"
            )
        self.local = {g: n for n, g in enumerate(self.globals)}

    def config(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        c = self.engine.config
        return {"criterion": c.criterion, "idk_filter": c.idk_filter, "not_found": c.not_found, "pid": os.getpid()}

    def score(self, question: str, keep: int) -> dict[str, Any]:
        """Every held chunk's signals for ``question``; the best ``keep`` states stay in this actor's state cache."""
        ranking = self.index.rank(question) if keep <= 1 else self.index.rank(question, k=len(self.index))
        return {
            "rows": [
                (self.globals[s.chunk.index], s.entropy, s.top_prob, s.not_found_prob, s.idk) for s in ranking.scores
            ],
            "prefill_s": ranking.timings.prefill_s,
            "select_s": ranking.timings.select_s,
            "usage": ranking.usage.to_dict(),
        }

    def score_many(self, questions: Sequence[str], keep: int) -> list[dict[str, Any]]:
        return [self.score(q, keep) for q in questions]

    def decode(self, question: str, chunk: int, seed: int | None, decoding: Mapping[str, Any]) -> dict[str, Any]:
        """Decode the answer to ``question`` from the held chunk ``chunk`` (a global number), from its cached state."""
        e = self.engine
        ids = self.index.chunks[self.local[chunk]].ids
        t0 = time.perf_counter()
        generation = e.complete(e.prompt(ids, e.encode_question(question)), seed=seed, lstrip=True, **decoding)
        for _ in generation:
            pass
        return {
            "text": generation.text,
            "tokens": len(generation.token_ids),
            "reused": int(getattr(generation, "reused_tokens", 0)),
            "decode_s": time.perf_counter() - t0,
        }

    def decode_many(self, jobs: Sequence[tuple[str, int, int | None, Mapping[str, Any]]]) -> list[dict[str, Any]]:
        return [self.decode(*job) for job in jobs]


class DistributedIndex:
    """A saved state index served by ``shard_actors`` Ray actors: ``rank`` and ``answer`` as :class:`StateIndex` has them.

    Args:
        path: the index folder, seen at the same path by every node.
        model / settings: the engine each actor loads (``OPRM.from_pretrained(model, **settings)``); it must be the
            one the index was built with (each actor checks, as :meth:`StateIndex.load` does).
        shard_actors: actors to spread the shards over (by bytes); at most one per shard.
        num_cpus / num_gpus: resources of each actor.

    Example:
        >>> from overflow_core.distributed import DistributedIndex
        >>> index = DistributedIndex("corpus.idx", shard_actors=2)  # doctest: +SKIP
        >>> index.answer("What is the locker number of Alice Baker?").text  # doctest: +SKIP
        '4412'
    """

    MODES = ("oprm", "summarize")

    def __init__(
        self,
        path: str | os.PathLike[str],
        model: str | os.PathLike[str] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        shard_actors: int = 2,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        address: str | None = None,
        verify: bool = True,
    ) -> None:
        if isinstance(shard_actors, bool) or not isinstance(shard_actors, int) or shard_actors < 1:
            raise ConfigError(f"shard_actors: expected a positive number of actors, got {shard_actors!r}")
        folder = local_folder(path, "path")
        if not folder.is_dir():
            raise InputError(f"path: expected a state index folder, {str(folder)!r} is not a folder")
        manifest = storage.read_manifest(folder)
        self.path = folder
        self.chunks = [
            Chunk(index=n, doc_index=c["doc_index"], text=c["text"], start=c["start"], end=c["end"],
                  ids=tuple(c["ids"]), metadata=dict(c["metadata"]))
            for n, c in enumerate(manifest["chunks"])
        ]  # fmt: skip
        infos = storage.shard_infos(manifest)
        groups = balance([s.bytes for s in infos], min(shard_actors, len(infos)))
        owner_of_shard = {infos[i].file: g for g, group in enumerate(groups) for i in group}
        owned: list[list[int]] = [[] for _ in groups]
        self._owner: dict[int, int] = {}
        for n, c in enumerate(manifest["chunks"]):
            g = owner_of_shard[c["shard"]]
            owned[g].append(n)
            self._owner[n] = g
        self._ray = connect(address)
        check_capacity(self._ray, len(groups), num_cpus, num_gpus, what="shard_actors (oprm ask --workers)")
        spec = EngineSpec.of(model, settings)
        remote = self._ray.remote(ShardActor).options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.actors = [
            remote.remote(spec, str(folder), mine, _digest([self.chunks[i] for i in mine]), verify) for mine in owned
        ]
        refs = [a.config.remote() for a in self.actors]
        configs, failure = [], None
        for ref in refs:  # every result fetched, so Ray reports no "unhandled error" for the others
            try:
                configs.append(self._ray.get(ref))
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            self.close()
            err = unwrap(failure)
            if err is failure:
                raise failure
            raise err from None
        self.criterion = str(configs[0]["criterion"])
        self.idk_filter = bool(configs[0]["idk_filter"])
        self.not_found = str(configs[0]["not_found"])

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"DistributedIndex(chunks={len(self)}, shard_actors={len(self.actors)}, path={str(self.path)!r})"

    def _get(self, refs: Any) -> Any:
        try:
            return self._ray.get(refs)
        except Exception as exc:
            err = unwrap(exc)
            if err is exc:
                raise
            raise err from None

    def close(self) -> None:
        """Stop the shard actors (their engines and leases go with them)."""
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []

    def __enter__(self) -> DistributedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ranking --------------------------------------------------------------------------------------------------------
    def _merge(self, question: str, parts: Sequence[Mapping[str, Any]], elapsed: float) -> Ranking:
        t0 = time.perf_counter()
        n = len(self.chunks)
        entropy, top, nf = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        idk = torch.zeros(n, dtype=torch.bool)
        seen = 0
        for part in parts:
            for i, e, p, f, a in part["rows"]:
                entropy[i], top[i], nf[i], idk[i] = e, p, f, a
                seen += 1
        assert seen == n, f"the shard actors scored {seen} chunks, the index has {n}"
        sig = scoring.Signals(entropy, top, nf, idk)
        scores = scoring.rank_chunks(self.chunks, sig, criterion=self.criterion, idk_filter=self.idk_filter)
        usage = Usage(
            prompt_tokens=sum(int(p["usage"]["prompt_tokens"]) for p in parts),
            padded_tokens=sum(int(p["usage"]["padded_tokens"]) for p in parts),
            reused_tokens=sum(int(p["usage"]["reused_tokens"]) for p in parts),
        )
        select = max((float(p["select_s"]) for p in parts), default=0.0) + time.perf_counter() - t0
        return Ranking(question, scores, Timings(prefill_s=elapsed - select, select_s=select), usage)

    def _scatter(self, questions: Sequence[str], keep: int) -> list[Ranking]:
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise InputError(f"question: expected a non-empty string, got {q!r}")
        t0 = time.perf_counter()
        per_actor = self._get([a.score_many.remote(list(questions), keep) for a in self.actors])
        elapsed = time.perf_counter() - t0
        return [self._merge(q, [parts[j] for parts in per_actor], elapsed) for j, q in enumerate(questions)]

    def rank(self, question: str, k: int | None = None) -> Ranking:
        """Every chunk's score for ``question``, best first (cut to ``k``): equal to :meth:`StateIndex.rank`."""
        return self._scatter([question], 1)[0].cut(check_k(k))

    # -- answering ------------------------------------------------------------------------------------------------------
    def answer(
        self,
        question: str,
        *,
        mode: Literal["oprm", "summarize"] = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> Answer:
        """Answer ``question`` as :meth:`StateIndex.answer` does (same chunk, same text), decoding on the actor that holds
        the chosen chunk's state."""
        return self.answer_many([question], mode=mode, k=k, seed=seed, **decoding)[0]

    def answer_many(
        self,
        questions: Sequence[str],
        *,
        mode: Literal["oprm", "summarize"] = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> list[Answer]:
        """Answer several questions with one round trip per actor for scoring and one for decoding."""
        if mode not in self.MODES:
            raise ConfigError(f"mode: expected 'oprm' or 'summarize' with a state index, got {mode!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"k: expected a positive number of chunks, got {k!r}")
        if isinstance(questions, str) or not isinstance(questions, Sequence):
            raise InputError(f"questions: expected a list of strings, got {type(questions).__name__}")
        rankings = self._scatter(list(questions), 1 if mode == "oprm" else (k or len(self.chunks)))
        picks: list[list[ChunkScore]] = []
        for ranking in rankings:
            if mode == "oprm":
                picks.append([] if ranking.best is None else [ranking.best])
            else:
                answering = [s for s in ranking.scores if not (s.idk and self.idk_filter)]
                picks.append(sorted(answering[:k] if k is not None else answering, key=lambda s: s.chunk.index))
        jobs: list[list[tuple[int, int]]] = [[] for _ in self.actors]  # per actor: (question, position in picks)
        for q, chosen in enumerate(picks):
            for j, s in enumerate(chosen):
                jobs[self._owner[s.chunk.index]].append((q, j))
        t0 = time.perf_counter()
        refs = [
            a.decode_many.remote([(questions[q], picks[q][j].chunk.index, seed, dict(decoding)) for q, j in mine])
            for a, mine in zip(self.actors, jobs, strict=True)
            if mine
        ]
        results = iter(self._get(refs))
        decoded: dict[tuple[int, int], dict[str, Any]] = {}
        for mine in jobs:
            if mine:
                decoded.update(zip(mine, next(results), strict=True))
        decode_s = time.perf_counter() - t0
        return [
            self._answer(mode, ranking, chosen, [decoded[(q, j)] for j in range(len(chosen))], decode_s)
            for q, (ranking, chosen) in enumerate(zip(rankings, picks, strict=True))
        ]

    def _answer(
        self, mode: str, ranking: Ranking, chosen: Sequence[ChunkScore], outs: Sequence[Mapping[str, Any]], decode_s: float
    ) -> Answer:
        """The :class:`Answer` :class:`~overflow_core.answering.AnswerStream` makes of the same decodes."""
        from dataclasses import replace

        timings = Timings(ranking.timings.prefill_s, ranking.timings.select_s, decode_s)
        usage = replace(ranking.usage, generated_tokens=sum(int(o["tokens"]) for o in outs))
        if not chosen:
            return Answer(self.not_found, True, mode, None, ranking, timings, usage)
        if mode == "oprm":
            text = str(outs[0]["text"])
            nf = is_not_found(text, self.not_found)
            return Answer(text.strip(), nf, "oprm", None if nf else chosen[0], ranking, timings, usage)
        parts = tuple(str(o["text"]).strip() for o in outs)
        answering = [s for s in ranking.scores if not (s.idk and self.idk_filter)]
        return Answer(
            "\n".join(parts), False, "summarize", answering[0] if answering else None, ranking, timings, usage,
            parts=parts,
        )  # fmt: skip
