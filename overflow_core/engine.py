"""The OPRM engine: orchestration only. Chunk, prompt, prefill, score, select, decode; each step lives in its own module.

The engine holds the model, the tokenizer, the derived prompt and a bounded cache of recent states; nothing about a call
is stored on the model, so one engine serves concurrent calls from several threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from overflow_core import scoring
from overflow_core.answering import AnswerStream
from overflow_core.backends import resolve_backend
from overflow_core.backends.base import Backend, Session, State
from overflow_core.chunking import chunk_documents, encode_text
from overflow_core.config import OPRMConfig, check_k, check_seed
from overflow_core.decode import Generation, stop_token_ids
from overflow_core.errors import ConfigError, InputError
from overflow_core.index import StateIndex
from overflow_core.prefill import PrefillBatch, prefill
from overflow_core.prompting import (
    PromptTemplate,
    build_template,
    encode_chat,
    encode_template,
    format_markers,
    not_found_token_ids,
)
from overflow_core.selection import Kept, Scored, batch_signals, keep_best
from overflow_core.state_cache import StateCache
from overflow_core.types import Answer, Chunk, Ranking, Timings, Usage, as_documents, as_token_ids, check_text

__all__ = ["DEFAULT_MODEL_DIR", "OPRM", "Mode"]

logger = logging.getLogger("overflow_core")
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"
Mode = Literal["oprm", "vanilla", "summarize"]
Progress = Callable[[int, int], None]  # (tokens done, tokens total)


class OPRM:
    """Overflow prevention for a recurrent LM: answer from the one chunk the model is surest about.

    Example:
        >>> from overflow_core import OPRM
        >>> oprm = OPRM.from_pretrained()  # the bundled model
        >>> oprm.answer("What is the locker number of Alice Baker?", ["... Alice Baker's locker number is 4412. ..."])
        Answer(text='4412', not_found=False, mode='oprm', chunk=ChunkScore(rank=0, ...))
    """

    def __init__(
        self, model: Any, tokenizer: Any, config: OPRMConfig | None = None, *, name: str | None = None
    ) -> None:
        if config is not None and not isinstance(config, OPRMConfig):
            raise ConfigError(f"config: expected an OPRMConfig or None, got {type(config).__name__}")
        self.config = config or OPRMConfig()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.backend: Backend = resolve_backend(model)
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.template: PromptTemplate = self.config.template or build_template(
            tokenizer, instruction=self.config.instruction, not_found=self.config.not_found
        )
        self.prompt_ids = encode_template(tokenizer, self.template)
        self.idk_ids = not_found_token_ids(tokenizer, self.config.not_found)
        self.stop_ids = stop_token_ids(tokenizer, self.config.stop)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.state_cache = StateCache(self.config.state_cache_bytes)
        self.device = torch.device(self.config.device)

    # -- construction ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        **settings: Any,
    ) -> OPRM:
        """Load a model by hub id or folder (the bundled model when ``name_or_path`` is None); see :mod:`overflow_core.loading`.

        A hub id is taken from the local Hugging Face cache when it is there (no network call), else downloaded; offline
        (``HF_HUB_OFFLINE=1``) a missing one fails with one line saying how to get it. A checkpoint that ships its own code
        (``auto_map``) loads only with ``trust_remote_code=True``. ``device="auto"`` is CUDA when present, else the CPU;
        ``dtype="auto"`` is bfloat16 on CUDA and float32 on the CPU.

        Settings come from, in increasing priority: :class:`OPRMConfig` defaults; a preset (``preset=`` one of
        :data:`overflow_core.presets.PRESETS`, ``"paper"`` or ``"none"``; by default the paper's settings, or the model's
        preset, for a checkpoint without ``overflow.json``); the checkpoint's ``overflow.json``; and the keyword
        arguments given here (``chunk_tokens=...``, ``max_batch_tokens=...``, ...).

        Example:
            >>> oprm = OPRM.from_pretrained("tiiuae/falcon-mamba-7b-instruct")  # doctest: +SKIP
            >>> oprm.config.chunk_tokens, oprm.config.max_new_tokens, oprm.config.stop  # doctest: +SKIP
            (2000, 20, ('<|im_end|>',))
        """
        from overflow_core.loading import load

        preset = settings.pop("preset", None)
        loaded = load(
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            trust_remote_code=trust_remote_code,
            device=device,
            dtype=dtype,
            preset=preset,
            settings=settings,
        )
        config = cls._config(settings=loaded.settings, device=str(loaded.device), dtype=loaded.dtype)
        return cls(loaded.model, loaded.tokenizer, config, name=loaded.name)

    @staticmethod
    def _config(settings: Mapping[str, Any], device: str, dtype: str | None) -> OPRMConfig:
        try:
            return OPRMConfig().with_overrides(**settings, device=device, dtype=dtype)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc

    # -- building blocks ------------------------------------------------------------------------------------------------
    def chunk(self, documents: Any) -> list[Chunk]:
        """Cut ``documents`` (strings, ``(text, metadata)`` pairs, dicts or :class:`Document`) into chunks."""
        return chunk_documents(
            self.tokenizer,
            as_documents(documents),
            chunk_tokens=self.config.chunk_tokens,
            overlap_tokens=self.config.overlap_tokens,
        )

    def encode_question(self, question: str, *, per_chunk: bool = True) -> tuple[int, ...]:
        """The question's ids, after checking it is usable: a non-empty string and, when it goes with every chunk
        (``per_chunk``, every mode but vanilla), at most ``chunk_tokens`` tokens."""
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"question: expected a non-empty string, got {question!r:.80}")
        ids = encode_text(self.tokenizer, check_text("question", question).strip())
        if per_chunk and len(ids) > self.config.chunk_tokens:
            raise InputError(
                f"question: expected at most chunk_tokens={self.config.chunk_tokens} tokens, got {len(ids)}; "
                "shorten the question or raise chunk_tokens"
            )
        return ids

    def prompt(self, chunk_ids: Sequence[int], question_ids: Sequence[int]) -> list[int]:
        """``prefix + chunk + infix + question + suffix`` as ids."""
        p = self.prompt_ids
        return [*p.prefix, *chunk_ids, *p.infix, *question_ids, *p.suffix]

    def context_prompt(self, chunk_ids: Sequence[int]) -> list[int]:
        """``prefix + chunk + infix``: the question-independent part of a prompt (what the state index stores)."""
        return [*self.prompt_ids.prefix, *chunk_ids, *self.prompt_ids.infix]

    def prompt_markers(self) -> list[str]:
        """Stop strings that end an answer where the model starts the next part of its prompt format: the engine's own
        ``stop`` strings, then the template's special tokens and line-opening labels and tags
        (:func:`overflow_core.prompting.format_markers`). The framework LLMs stop at them outside the RAG handoff."""
        special = getattr(self.tokenizer, "all_special_tokens", None) or ()
        return list(dict.fromkeys([*self.config.stop, *format_markers(self.template, special)]))

    def user_message(self, chunk_text: str, question: str) -> str:
        """The prompt for ``chunk_text`` and ``question`` as one string (what a chat model adapter receives)."""
        return self.template.render(chunk_text, question.strip())

    def encode_prompt(self, prompt: str) -> list[int]:
        """Ids of a prompt string. A string that is this engine's template filled in is encoded part by part, exactly as
        the engine encodes it, so its state can come from the state cache; anything else is encoded whole."""
        parsed = self.template.parse(prompt)
        if parsed is not None:
            chunk, question = parsed
            return self.prompt(encode_text(self.tokenizer, chunk), encode_text(self.tokenizer, question))
        ids = list(encode_text(self.tokenizer, prompt))
        bos = self.prompt_ids.prefix[:1]
        if bos and bos[0] == getattr(self.tokenizer, "bos_token_id", None):
            ids = [bos[0], *ids]
        return ids

    def encode_messages(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Ids for chat ``messages`` (``{"role", "content"}``), ready for generation.

        A single user message whose content is :meth:`user_message` output maps to exactly the engine's prompt ids.
        """
        if not messages:
            raise InputError("messages: expected at least one message, got none")
        if len(messages) == 1 and messages[0].get("role") == "user" and self.template.parse(messages[0]["content"]):
            return self.encode_prompt(messages[0]["content"])
        if getattr(self.tokenizer, "chat_template", None):  # template text keeps its special ids; contents are user text
            ids = encode_chat(self.tokenizer, messages)
            bos = self.prompt_ids.prefix[:1]
            return [bos[0], *ids] if bos and bos[0] == getattr(self.tokenizer, "bos_token_id", None) else ids
        text = "\n\n".join(f"{m['content']}" for m in messages)
        return self.encode_prompt(text)

    # -- scoring --------------------------------------------------------------------------------------------------------
    def _score(
        self,
        question: str,
        chunks: Sequence[Chunk],
        *,
        keep: int,
        progress: Progress | None = None,
        on_batch: Callable[[list[int], torch.Tensor, State], None] | None = None,
    ) -> Scored:
        """Prefill every chunk's prompt, score it, and keep the states of the ``keep`` best rows."""
        if not chunks:
            raise InputError("documents: expected at least one non-empty chunk, got none")
        q_ids = self.encode_question(question)
        prompts = [self.prompt(c.ids, q_ids) for c in chunks]
        total = sum(len(p) for p in prompts)
        sig = scoring.Signals.zeros(len(chunks))
        kept: Kept = {}
        t_prefill = t_select = 0.0
        padded = done = 0
        t0 = time.perf_counter()
        for batch in self.prefill_batches(prompts):
            t1 = time.perf_counter()
            t_prefill += t1 - t0
            sig.put(batch.rows, batch_signals(self.backend, batch.logits, batch.state_now, self.idk_ids))
            padded += batch.padded_tokens
            if on_batch is not None:
                on_batch(batch.rows, batch.logits, batch.state)
            if keep > 0:
                kept = keep_best(
                    self.backend, kept, batch.rows, batch.logits, batch.state, sig, keep,
                    criterion=self.config.criterion, idk_filter=self.config.idk_filter,
                )  # fmt: skip
            done += sum(len(prompts[i]) for i in batch.rows)
            if progress is not None:
                progress(done, total)
            t0 = time.perf_counter()
            t_select += t0 - t1
        t1 = time.perf_counter()
        scores = scoring.rank_chunks(chunks, sig, criterion=self.config.criterion, idk_filter=self.config.idk_filter)
        t_select += time.perf_counter() - t1
        for i, (state, logits) in kept.items():
            self.state_cache.put(prompts[i], state, logits)
        ranking = Ranking(
            question=question,
            scores=scores,
            timings=Timings(prefill_s=t_prefill, select_s=t_select),
            usage=Usage(prompt_tokens=total, padded_tokens=padded),
        )
        return Scored(ranking=ranking, kept=kept, prompts={i: prompts[i] for i in kept})

    def prefill_batches(self, prompts: Sequence[Sequence[int]]) -> Iterator[PrefillBatch]:
        """Prefill ``prompts`` (token ids) in micro-batches: :func:`~overflow_core.prefill.prefill` with this engine's
        model, token budget, padding, device and memory settings. Yields each batch's rows, last logits and state."""
        return prefill(
            self.backend,
            prompts,
            max_batch_tokens=self.config.batch_tokens,
            pad_id=self.pad_id,
            device=self.device,
            release_memory=self.config.release_memory,
        )

    # -- public API -----------------------------------------------------------------------------------------------------
    def rank(self, question: str, documents: Any, k: int | None = None, *, progress: Progress | None = None) -> Ranking:
        """Score every chunk of ``documents`` for ``question``; best first, cut to ``k`` when given (the retriever mode).

        The states of the top ``k`` chunks (after their full prompt) go to the state cache, so a chat model asked to
        continue one of those prompts next decodes without prefilling it again.
        """
        k = check_k(k)
        chunks = self.chunk(documents)
        scored = self._score(question, chunks, keep=min(k or 1, len(chunks)), progress=progress)
        return scored.ranking.cut(k)

    def answer(
        self,
        question: str,
        documents: Any,
        *,
        mode: Mode = "oprm",
        k: int | None = None,
        progress: Progress | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> Answer:
        """Answer ``question`` from ``documents``.

        Args:
            mode: ``"oprm"`` (decode from the best chunk), ``"summarize"`` (decode from every answering chunk, or the
                top ``k``, and join the outputs in document order) or ``"vanilla"`` (the whole context as one sequence).
            seed: seeds sampling when ``temperature > 0``.
            decoding: ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``stop`` for this call.
        """
        pieces = self._run(question, documents, mode=mode, k=k, progress=progress, seed=seed, decoding=decoding)
        for _ in pieces:
            pass
        return pieces.result

    def stream(
        self,
        question: str,
        documents: Any,
        *,
        mode: Mode = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> Iterator[str]:
        """Like :meth:`answer`, yielding the answer's text piece by piece as it is decoded."""
        yield from self._run(question, documents, mode=mode, k=k, progress=None, seed=seed, decoding=decoding)

    def stream_answer(
        self,
        question: str,
        documents: Any,
        *,
        mode: Mode = "oprm",
        k: int | None = None,
        seed: int | None = None,
        **decoding: Any,
    ) -> AnswerStream:
        """An iterator of text pieces whose ``result`` is the full :class:`Answer` once it is exhausted."""
        return self._run(question, documents, mode=mode, k=k, progress=None, seed=seed, decoding=decoding)

    def decoding_config(self, overrides: Mapping[str, Any]) -> OPRMConfig:
        """This engine's config with per-call decoding ``overrides`` (``max_new_tokens``, ``temperature``, ``top_k``,
        ``top_p``, ``stop``) applied; anything else is refused."""
        return self.config.with_decoding(**overrides)

    def generation(
        self, session: Session, logits: torch.Tensor, cfg: OPRMConfig, seed: int | None, *, lstrip: bool = False
    ) -> Generation:
        """A :class:`~overflow_core.decode.Generation` from ``session`` (``logits`` ``[1, V]`` at its end) with the
        decoding settings of ``cfg``; ``seed`` seeds sampling when ``cfg.temperature > 0``."""
        generator = None
        if cfg.temperature > 0:
            generator = torch.Generator()
            generator.manual_seed(check_seed(seed) or 0)
        return Generation(
            session,
            logits,
            tokenizer=self.tokenizer,
            max_new_tokens=cfg.max_new_tokens,
            stop=cfg.stop,
            stop_ids=self.stop_ids | stop_token_ids(self.tokenizer, cfg.stop),
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            generator=generator,
            lstrip=lstrip,
        )

    def _run(
        self,
        question: str,
        documents: Any,
        *,
        mode: str,
        k: int | None,
        progress: Progress | None,
        seed: int | None,
        decoding: Mapping[str, Any],
    ) -> AnswerStream:
        if mode not in ("oprm", "vanilla", "summarize"):
            raise ConfigError(f"mode: expected 'oprm', 'summarize' or 'vanilla', got {mode!r}")
        k, seed = check_k(k), check_seed(seed)
        cfg = self.decoding_config(decoding)
        docs = as_documents(documents)
        chunks = self.chunk(docs)
        q_ids = self.encode_question(question, per_chunk=mode != "vanilla")  # vanilla reads it once, after everything

        def vanilla() -> tuple[Session, torch.Tensor, int]:
            context = "\n\n".join(doc.text.strip() for doc in docs)
            prompt = self.prompt(encode_text(self.tokenizer, context), q_ids)
            session, logits = self.vanilla_state(prompt)
            return session, logits, len(prompt)

        return AnswerStream(
            mode=mode,
            k=k,
            n_chunks=len(chunks),
            score=lambda keep: self._score(question, chunks, keep=keep, progress=progress),
            open_state=self.backend.open,
            decode=lambda session, logits: self.generation(session, logits, cfg, seed, lstrip=True),
            not_found=self.config.not_found,
            idk_filter=self.config.idk_filter,
            vanilla=vanilla,
        )

    def complete(
        self, prompt_ids: Sequence[int], *, seed: int | None = None, lstrip: bool | None = None, **decoding: Any
    ) -> Generation:
        """Continue ``prompt_ids``, reusing the longest cached prefix state (see :mod:`overflow_core.state_cache`).

        The returned :class:`Generation` is an iterator of text pieces; ``forward_tokens`` and ``reused_tokens`` count
        what was fed to the model and what came from the cache. ``lstrip=True`` drops the output's leading whitespace,
        for replies that open a chat turn; a plain completion keeps it (" 4412" continues "The number is"). ``None``
        (the default) strips exactly when the prompt ends like the engine's own prompts (the template's suffix), so an
        answer reads the same through :meth:`answer` and through ``complete(prompt(...))``.
        """
        embeddings = getattr(self.model, "get_input_embeddings", lambda: None)()
        prompt_ids = as_token_ids("prompt_ids", prompt_ids, getattr(embeddings, "num_embeddings", None))
        if not prompt_ids:
            raise InputError("prompt_ids: expected at least one token, got an empty prompt")
        seed = check_seed(seed)
        if lstrip is None:
            suffix = self.prompt_ids.suffix
            lstrip = bool(suffix) and tuple(prompt_ids[-len(suffix) :]) == tuple(suffix)
        cfg = self.decoding_config(decoding)
        cached = self.state_cache.longest_prefix(prompt_ids)
        with torch.inference_mode():
            if cached is None:
                ids = torch.tensor([list(prompt_ids)], device=self.device)
                logits, state = self.backend.prefill(ids, torch.ones_like(ids))
                session = self.backend.open(state)
                fed, reused = len(prompt_ids), 0
            else:
                session = self.backend.open(cached.state)
                rest = list(prompt_ids[len(cached.ids) :])
                logits = cached.logits
                if rest:
                    logits = session.feed(torch.tensor([rest], device=self.device))
                fed, reused = len(rest), len(cached.ids)
        generation = self.generation(session, logits, cfg, seed, lstrip=lstrip)
        generation.prompt_forward_tokens = fed  # type: ignore[attr-defined]
        generation.reused_tokens = reused  # type: ignore[attr-defined]
        return generation

    def vanilla_state(self, prompt: Sequence[int]) -> tuple[Any, torch.Tensor]:
        """Run one long prompt as a single sequence in segments of ``max_batch_tokens``; returns (session, logits)."""
        budget = self.config.batch_tokens
        with torch.inference_mode():
            first = torch.tensor([list(prompt[:budget])], device=self.device)
            logits, state = self.backend.prefill(first, torch.ones_like(first))
            session = self.backend.open(state)
            for start in range(budget, len(prompt), budget):
                logits = session.feed(torch.tensor([list(prompt[start : start + budget])], device=self.device))
        return session, logits

    def index(self, documents: Any, *, progress: bool = False) -> StateIndex:
        """Build a :class:`~overflow_core.index.StateIndex` over ``documents``: each chunk's state computed once."""
        return StateIndex.build(self, documents, progress=progress)

    def __repr__(self) -> str:
        return f"OPRM(model={self.name!r}, backend={self.backend.name!r}, chunk_tokens={self.config.chunk_tokens})"
