"""Train the bundled default model from scratch on CPU: seeded, resumable, checkpointed (safetensors only).

Usage (the shipped weights, run v10; docs/model.md, "Reproduce")::

    python -m training.train --run runs/v10s1 --steps 3200 --seed 0 --compile   # stage 1, from scratch
    python -m training.train --run runs/v10s1 --export runs/v10s1/model
    python -m training.train --run runs/v10 --steps 1000 --seed 1 --stage 2 --init runs/v10s1/model \
        --open-share 0.3 --lr 1e-3 --warmup 50 --compile                                     # stage 2, continued
    python -m training.train --run runs/v10 --export overflow_core/models/default

Training runs the Mamba-2 scan through :mod:`training.ssd` (the same maths as transformers' with fewer
copies; ``--no-fast-scan`` selects transformers' own, which trained v4 and v5). ``--compile`` (torch.compile with static,
padded shapes) takes 28-34% less time per step than eager float32, and 34-50% less with ``--bf16`` (docs/model.md,
"Training speed").

The recipe follows ``shared/TRAINING_NOTES.md``: an easy start (few facts, short contexts) with loss on every token (context
weight 0.25, answer weight 1), then longer contexts, more facts, more absent questions and harder negatives. Each context is
followed by several question turns (the first in exactly the engine's prompt format, the rest as follow-up chat turns), which
gives several answers of supervision per context read. Stage 2 continues a stage-1 export on full-length contexts aimed at
key checking, with part of the data from open-vocabulary generators (``Curriculum.key_checking``, ``FactWorld.open_share``).
Data for step ``s`` is drawn from ``Random(seed * 1_000_003 + s)``, so a resumed run sees exactly the data an
uninterrupted run would have seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from overflow_core.prompting import DEFAULT_NOT_FOUND, build_template, encode_template
from overflow_core.synthetic.facts import Curriculum, FactWorld, Sample
from overflow_core.synthetic.tokenizer import train_tokenizer
from training.ssd import fast_chunk_scan

logger = logging.getLogger("overflow_core.training")

__all__ = ["TrainConfig", "answer_ids", "encode_sample", "export", "snapshot", "train"]


# TrainConfig fields that shape the weights, by their name in a transformers Mamba2Config
_HF_NAMES = {"hidden_size": "hidden_size", "layers": "num_hidden_layers", "state_size": "state_size", "head_dim": "head_dim"}
ARCHITECTURE_FIELDS = tuple(_HF_NAMES)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2.5e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.05
    context_weight: float = 0.25
    seed: int = 0
    hidden_size: int = 256
    layers: int = 4
    state_size: int = 64
    head_dim: int = 32
    vocab_size: int = 2048
    chunk_tokens: int = 256  # the training length: contexts are at most this many tokens
    checkpoint_every: int = 100
    eval_every: int = 200  # 0: no in-training evaluation
    threads: int = 2
    stage: int = 1  # 1: the from-scratch curriculum; 2: the key-checking, open-vocabulary continuation
    init: str = ""  # stage 2: the model folder (an export of stage 1) to continue from
    open_share: float = 0.0  # stage 2: share of data from the open-vocabulary generators (data.FactWorld.open_share)
    # stage 2: overrides of Curriculum.key_checking's absent share, hard share and hard-negative mix (None keeps its own)
    absent_rate: float | None = None
    hard_negative_rate: float | None = None
    negative_mix: tuple[float, float, float] | None = None
    fast_scan: bool = True  # Mamba-2's scan through training.ssd.chunk_scan (same maths as transformers' torch path)
    bf16: bool = False  # bfloat16 autocast for the forward pass (weights, optimizer and loss stay float32)
    compile: bool = False  # torch.compile the model (needs a C++ compiler); batches pad to a multiple of PAD_MULTIPLE
    noise_share: float = 0.0  # share of filler sentences made of random vocabulary pieces (data.noise_sentence)
    free_value_share: float = 0.0  # share of values of any kind, whatever the attribute's name (data.free_value)
    symbol_share: float = 0.0  # share of attribute names made of random vocabulary pieces (data.symbol_attribute)
    # "facts": the fact world of v1-v11 (overflow_core.synthetic.facts); "composed": the skill recipe (training.skill:
    # the compositional generator over real text, its own tokenizer and curriculum, checks against the held-out family)
    data: str = "facts"
    schedule: str = "cosine"  # "cosine", or "wsd": warm-up, constant, then linear decay over the last decay_share
    decay_share: float = 0.2
    checkpoint_minutes: float = 0.0  # also checkpoint when this many minutes passed since the last one (0: off)
    # the curriculum's length in steps (0: ``steps``): with it fixed, a run can be extended (more ``steps``, a later wsd
    # decay) and still draw, for every step already taken, the data it drew before
    curriculum_steps: int = 0

    def __post_init__(self) -> None:
        if self.data not in ("facts", "composed"):
            raise ValueError(f"data: expected 'facts' or 'composed', got {self.data!r}")
        if self.data == "composed" and self.stage != 1:
            raise ValueError(f"data 'composed': expected stage 1 (its curriculum has no stage 2), got {self.stage}")
        if self.schedule not in ("cosine", "wsd") or not 0.0 < self.decay_share <= 1.0:
            raise ValueError(
                f"schedule {self.schedule!r}, decay_share {self.decay_share}: expected 'cosine' or 'wsd' and a share"
                " in (0, 1]"
            )
        if self.stage not in (1, 2):
            raise ValueError(f"stage: expected 1 (from scratch) or 2 (continuation), got {self.stage}")
        if (self.stage == 2) != bool(self.init):
            raise ValueError(f"stage {self.stage} with init={self.init!r}: stage 2, and only stage 2, starts from --init")
        for name in ARCHITECTURE_FIELDS:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive size, got {getattr(self, name)}")
        if 2 * self.hidden_size % self.head_dim:
            raise ValueError(
                f"hidden_size {self.hidden_size}: expected 2 * hidden_size (the Mamba-2 inner width) to be a multiple"
                f" of head_dim {self.head_dim}"
            )
        if self.compile and self.bf16 and not self.fast_scan:
            raise ValueError(
                "compile with bf16: expected the fast scan (it keeps the scan out of the compiled graph, whose backward"
                " gives NaN under bfloat16 autocast), got fast_scan=False"
            )
        overrides = self._overrides()
        if overrides and self.stage != 2:
            raise ValueError(f"{sorted(overrides)}: stage-2 settings, got them with stage {self.stage}")
        for name in ("absent_rate", "hard_negative_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a share in [0, 1], got {value}")
        if self.negative_mix is not None:
            mix = tuple(float(t) for t in self.negative_mix)  # config.json stores it as a list
            if len(mix) != 3 or not 0.0 <= mix[0] <= mix[1] <= mix[2] <= 1.0:
                raise ValueError(f"negative_mix: expected three rising thresholds in [0, 1], got {self.negative_mix}")
            object.__setattr__(self, "negative_mix", mix)

    def _overrides(self) -> dict[str, Any]:
        """The stage-2 curriculum settings given (not None), by ``Curriculum`` field name."""
        given = {
            "absent_rate": self.absent_rate,
            "hard_negative_rate": self.hard_negative_rate,
            "negative_mix": self.negative_mix,
        }
        return {k: v for k, v in given.items() if v is not None}

    def curriculum(self, progress: float) -> Curriculum:
        if self.data == "composed":
            from training.skill import curriculum

            return curriculum(progress)
        if self.stage == 1:
            return Curriculum.at(progress)
        return replace(Curriculum.key_checking(progress), **self._overrides())


def build_model(cfg: TrainConfig, tokenizer: Any) -> Any:
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(
        vocab_size=len(tokenizer),
        **{name: getattr(cfg, field) for field, name in _HF_NAMES.items()},
        num_heads=2 * cfg.hidden_size // cfg.head_dim,
        expand=2,
        n_groups=1,
        chunk_size=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    torch.manual_seed(cfg.seed)
    return Mamba2ForCausalLM(config)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The tokens the model is trained to answer ``answer`` with: with the leading space the value has inside a sentence,
    so that answering is copying the context's tokens (without it, "Paris" is "P ar is" here and "ĠP ar is" in the
    context; see docs/model.md, run v2)."""
    return _ids(tokenizer, " " + answer)


def encode_sample(tokenizer: Any, sample: Sample, max_context: int) -> tuple[list[int], list[float]] | None:
    """Token ids and per-token loss weights (weight of predicting token t from tokens < t).

    The first turn is exactly the engine's prompt (prefix + chunk + infix + question + suffix, each part tokenized on its
    own); the answer and ``<|end|>`` follow. Returns None when the context exceeds ``max_context`` tokens.
    """
    template = build_template(tokenizer)
    parts = encode_template(tokenizer, template)
    context = _ids(tokenizer, sample.context)
    if len(context) > max_context:
        return None
    end = tokenizer.eos_token_id
    ids = [*parts.prefix, *context, *parts.infix]
    weights = [0.25] * len(ids)
    follow_up = _ids(tokenizer, "<|user|>Question: ")
    for i, q in enumerate(sample.questions):
        lead = list(parts.infix[:0]) if i == 0 else follow_up
        prompt = [*lead, *_ids(tokenizer, q.text), *parts.suffix]
        answer = [*answer_ids(tokenizer, q.answer), end]
        ids += prompt + answer
        weights += [0.25] * len(prompt) + [1.0] * len(answer)
    return ids, weights


PAD_MULTIPLE = 64  # with --compile, batch widths round up to this (Mamba-2's chunk): a handful of shapes, one compile each


def _batch(
    tokenizer: Any, world: FactWorld, rng: random.Random, cfg: TrainConfig, progress: float, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch for ``progress`` in [0, 1]: ids and loss weights, right-padded to the longest row rounded up to
    ``multiple`` (pads have weight 0 and, being causal, never touch real tokens, so the padding changes no loss)."""
    curriculum = cfg.curriculum(progress)
    rows: list[tuple[list[int], list[float]]] = []
    while len(rows) < cfg.batch_size:
        encoded = encode_sample(tokenizer, world.sample(rng, curriculum), cfg.chunk_tokens)
        if encoded is not None:
            rows.append(encoded)
    width = -(-max(len(r[0]) for r in rows) // multiple) * multiple
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    weights = torch.zeros((len(rows), width))
    for i, (row, w) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)  # right padding: causal, so pads never touch real tokens
        weights[i, : len(w)] = torch.tensor(w)
    weights[:, 0] = 0.0  # nothing predicts the first token
    return ids, weights


def weighted_loss(
    logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, context_weight: float
) -> torch.Tensor:
    """Cross-entropy of logits ``[B, T, V]`` predicting ``ids[:, 1:]``, weighted per target token (``weights [B, T]``)."""
    w = weights[:, 1:].clone()
    w[(w > 0) & (w < 1)] = context_weight
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none"
    )
    return (losses * w.flatten()).sum() / w.sum().clamp_min(1.0)


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "wsd":  # constant, then a linear decay: a longer run only moves the decay (resumable budgets)
        decay_from = cfg.steps - cfg.decay_share * cfg.steps
        t = max(0.0, (step - decay_from) / max(1.0, cfg.steps - decay_from))
        return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * min(t, 1.0))
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.inference_mode()
def quick_eval(model: torch.nn.Module, tokenizer: Any, seed: int, n: int = 32) -> dict[str, float]:
    """Teacher-forced exact match of the first answer (equal to greedy exact match) on fresh contexts of full length."""
    model.eval()
    out: dict[str, float] = {}
    for split in ("train", "heldout"):
        world = FactWorld(split)  # type: ignore[arg-type]
        for n_facts in (1, 4, 8):
            rng = random.Random(seed + 7919 * n_facts + (0 if split == "train" else 1))
            hits = {"present": [0, 0], "absent": [0, 0]}
            for _ in range(n):
                cur = Curriculum(absent_rate=0.5, hard_negative_rate=0.7, questions=1, max_chars=880, min_chars=700)
                sample = world.sample(rng, cur, n_facts=n_facts)
                enc = encode_sample(tokenizer, Sample(sample.context, sample.facts, sample.questions[:1]), 10_000)
                assert enc is not None
                ids, weights = enc
                x = torch.tensor([ids])
                pred = model(input_ids=x).logits[0].argmax(-1)
                answer_pos = [t for t in range(1, len(ids)) if weights[t] == 1.0]
                ok = all(int(pred[t - 1]) == ids[t] for t in answer_pos)
                kind = "present" if sample.questions[0].present else "absent"
                hits[kind][0] += int(ok)
                hits[kind][1] += 1
            for kind, (h, t) in hits.items():
                if t:
                    out[f"{split}/{n_facts}facts/{kind}"] = round(h / t, 3)
    model.train()
    return out


def _save_checkpoint(
    run: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, elapsed: float, cpu: float | None = None
) -> None:
    """Write the checkpoint beside the last one, then swap it in; refuse non-finite weights, keeping the last good one."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(
            f"step {step}: expected finite weights to checkpoint, got non-finite values in {', '.join(bad[:3])}"
            f"{' and more' if len(bad) > 3 else ''}; the last checkpoint ({run / 'checkpoint'}) is kept"
        )
    tmp = run / "checkpoint.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding / lm_head weight
    opt_tensors: dict[str, torch.Tensor] = {}
    for i, p in enumerate(model.parameters()):
        state = opt.state.get(p, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                opt_tensors[f"{i}.{name}"] = state[name].contiguous()
        if "step" in state:
            opt_tensors[f"{i}.step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1)
    opt_tensors["torch_rng_state"] = torch.get_rng_state()
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    record: dict[str, float] = {"step": step, "elapsed_s": elapsed}
    if cpu is not None:  # CPU seconds of the training process, all threads, summed over resumes
        record["cpu_s"] = round(cpu, 1)
    (tmp / "state.json").write_text(json.dumps(record))
    final = run / "checkpoint"
    old = run / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def _load_checkpoint(run: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, float]:
    ckpt = run / "checkpoint"
    if not (ckpt / "state.json").exists():
        return 0, 0.0
    load_model(model, str(ckpt / "model.safetensors"))
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    for i, p in enumerate(model.parameters()):
        if f"{i}.exp_avg" in tensors:
            opt.state[p] = {
                "exp_avg": tensors[f"{i}.exp_avg"],
                "exp_avg_sq": tensors[f"{i}.exp_avg_sq"],
                "step": tensors[f"{i}.step"].reshape(()),
            }
    if "torch_rng_state" in tensors:
        torch.set_rng_state(tensors["torch_rng_state"])
    state = json.loads((ckpt / "state.json").read_text())
    return int(state["step"]), float(state["elapsed_s"])


def _checkpoint_cpu(run: Path) -> float:
    """The CPU seconds recorded with a run's checkpoint (0 without one, or for checkpoints written before it was)."""
    path = run / "checkpoint" / "state.json"
    return float(json.loads(path.read_text()).get("cpu_s", 0.0)) if path.exists() else 0.0


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log records of steps after ``step`` (the checkpoint a run resumes from): those steps run again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if int(record.get("step", 0)) <= step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


SNAPSHOT_FILES = ("config.json", "log.jsonl")


def snapshot(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a run's last checkpoint (weights, optimizer moments, step, RNG), config, tokenizer and log to ``out_dir``: a
    folder small enough to commit, from which ``--resume-from`` continues exactly. Safe while the run goes on."""
    import shutil

    run, out = Path(run_dir), Path(out_dir)
    if not (run / "checkpoint" / "state.json").exists():
        raise FileNotFoundError(f"--snapshot: expected a checkpoint in {run / 'checkpoint'}, got none")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for attempt in range(5):  # the run may swap in a newer checkpoint mid-copy: copy again until one step's files came
        before = (run / "checkpoint" / "state.json").read_text()
        try:
            shutil.copytree(run / "checkpoint", tmp / "checkpoint")
            if (run / "checkpoint" / "state.json").read_text() == before == (tmp / "checkpoint" / "state.json").read_text():
                break
        except FileNotFoundError:
            if attempt == 4:
                raise
        shutil.rmtree(tmp / "checkpoint", ignore_errors=True)
        time.sleep(2)
    else:
        raise RuntimeError(f"--snapshot: the checkpoint in {run} kept changing while it was copied; try again")
    shutil.copytree(run / "tokenizer", tmp / "tokenizer")
    for name in SNAPSHOT_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, tmp / name)
    step = json.loads((tmp / "checkpoint" / "state.json").read_text())["step"]
    _truncate_log(tmp / "log.jsonl", step)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _seed_from_snapshot(run: Path, folder: Path) -> None:
    """Start ``run`` from a :func:`snapshot` when it has no checkpoint of its own."""
    import shutil

    if (run / "checkpoint" / "state.json").exists():
        return
    if not (folder / "checkpoint" / "state.json").exists():
        raise FileNotFoundError(f"--resume-from {folder}: expected a --snapshot folder with checkpoint/state.json")
    run.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint", "tokenizer"):
        if (run / name).exists():
            shutil.rmtree(run / name)
        shutil.copytree(folder / name, run / name)
    for name in SNAPSHOT_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, run / name)


def init_architecture(folder: str | Path) -> dict[str, int]:
    """The :data:`ARCHITECTURE_FIELDS` of a model folder (an ``--export``), read from its ``config.json``."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
        return {field: int(config[name]) for field, name in _HF_NAMES.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--init {folder}: expected a Mamba-2 model folder with a config.json, got {e!r}") from e


def _check_architecture(cfg: TrainConfig, other: dict[str, Any], what: str) -> None:
    """Raise if ``other`` (a run's stored config or an init model's) shapes the weights differently from ``cfg``."""
    diff = {f: (other[f], getattr(cfg, f)) for f in ARCHITECTURE_FIELDS if f in other and other[f] != getattr(cfg, f)}
    if diff:
        got = ", ".join(f"{f} {old} (now {new})" for f, (old, new) in diff.items())
        raise ValueError(f"{what} has another architecture: {got}; train with the same sizes or use another --run")


def _load_init(model: torch.nn.Module, folder: Path) -> None:
    """Load a stage-1 export's weights into ``model`` (built from the same ``TrainConfig`` sizes)."""
    missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
    tied = {"lm_head.weight"}  # tied to the embeddings: save_pretrained stores it once
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"--init {folder}: weights do not fit the configured model (missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}); expected a model of the TrainConfig sizes"
        )


def train(run_dir: str | Path, cfg: TrainConfig, resume_from: str | Path | None = None) -> Path:
    """Train (or resume) in ``run_dir``; returns the checkpoint folder. ``resume_from``: a :func:`snapshot` to start
    from when ``run_dir`` has no checkpoint."""
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg.threads)
    run = Path(run_dir)
    if resume_from:
        _seed_from_snapshot(run, Path(resume_from))
    if cfg.init and not (Path(cfg.init) / "model.safetensors").is_file():
        raise FileNotFoundError(f"--init {cfg.init}: expected a model folder with model.safetensors (a stage-1 --export)")
    if cfg.init:
        _check_architecture(cfg, init_architecture(cfg.init), f"--init {cfg.init}")
    if (run / "checkpoint" / "state.json").exists() and (run / "config.json").exists():
        _check_architecture(cfg, json.loads((run / "config.json").read_text()), f"the checkpoint in {run}")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    if not (run / "tokenizer" / "tokenizer.json").exists():
        if cfg.init:  # a continuation keeps the tokenizer its embeddings were trained with
            AutoTokenizer.from_pretrained(cfg.init).save_pretrained(str(run / "tokenizer"))
        elif cfg.data == "composed":
            from training.skill import train_skill_tokenizer

            train_skill_tokenizer(run / "tokenizer", vocab_size=cfg.vocab_size, seed=cfg.seed + 1)
        else:
            train_tokenizer(run / "tokenizer", vocab_size=cfg.vocab_size, seed=cfg.seed + 1)
    tokenizer = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    model = build_model(cfg, tokenizer)
    if cfg.init:
        _load_init(model, Path(cfg.init))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    step, elapsed = _load_checkpoint(run, model, opt)
    _truncate_log(run / "log.jsonl", step)
    pieces = _pieces(tokenizer) if cfg.noise_share or cfg.symbol_share else ()
    world: FactWorld
    if cfg.data == "composed":
        from overflow_core.synthetic.compose import ComposedWorld

        world = ComposedWorld()
    else:
        world = FactWorld(
            "train",
            open_share=cfg.open_share,
            noise_share=cfg.noise_share,
            noise_pieces=pieces,
            free_value_share=cfg.free_value_share,
            symbol_share=cfg.symbol_share,
        )
    log = (run / "log.jsonl").open("a")
    model.train()
    start = time.time() - elapsed
    forward = _compiled(model) if cfg.compile else model
    scan = fast_chunk_scan(outside_compile=cfg.compile and cfg.bf16) if cfg.fast_scan else nullcontext()
    cpu_base = _checkpoint_cpu(run) - time.process_time()
    STOP.clear()
    previous = _on_sigterm()
    try:
        with scan:
            _loop(run, cfg, model, forward, tokenizer, opt, world, log, step, start, cpu_base)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return run / "checkpoint"


# Set by SIGTERM (``kill <pid>``): the run finishes its step, checkpoints and returns, losing nothing.
STOP = threading.Event()


def _on_sigterm() -> Any:
    """Make SIGTERM set :data:`STOP` (main thread only); returns the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())


def _compiled(model: torch.nn.Module) -> Any:
    """``torch.compile(model)`` for training on CPU: static shapes (``_batch`` pads widths to :data:`PAD_MULTIPLE`, so
    a stage meets a handful of widths, each compiled once, about a minute apiece on two cores), and room for all of
    them before dynamo falls back to eager. Same parameters as ``model``: checkpoints save ``model`` itself."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
    return torch.compile(model, dynamic=False)


def _pieces(tokenizer: Any) -> tuple[str, ...]:
    """Every non-special vocabulary token, decoded on its own (the material of ``data.noise_sentence`` and
    ``data.symbol_attribute``)."""
    special = set(tokenizer.all_special_ids)
    return tuple(p for i in range(len(tokenizer)) if i not in special and (p := tokenizer.decode([i])).strip())


def _loop(
    run: Path,
    cfg: TrainConfig,
    model: torch.nn.Module,
    forward: Any,
    tokenizer: Any,
    opt: torch.optim.Optimizer,
    world: FactWorld,
    log: Any,
    step: int,
    start: float,
    cpu_base: float = 0.0,
) -> None:
    multiple = PAD_MULTIPLE if cfg.compile else 1
    last_save = time.time()
    while step < cfg.steps:
        rng = random.Random(cfg.seed * 1_000_003 + step)
        ids, weights = _batch(tokenizer, world, rng, cfg, step / (cfg.curriculum_steps or cfg.steps), multiple)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        with torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else nullcontext():
            logits = forward(input_ids=ids).logits
        loss = weighted_loss(logits, ids, weights, cfg.context_weight)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        finite = bool(torch.isfinite(loss.detach()) and torch.isfinite(norm))
        if finite:
            opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        record: dict[str, Any] = {
            "step": step,
            "loss": round(float(loss.detach()), 4),
            "s": round(time.time() - start, 1),
            "cpu_s": round(time.process_time() + cpu_base, 1),
        }
        if not finite:  # one bad batch must not turn every weight into NaN: skip its update and say so
            log.write(json.dumps({**record, "skipped": "non-finite loss or gradient norm"}) + "\n")
            log.flush()
        if step % 10 == 0:
            record["tokens"] = int(ids.numel())
            log.write(json.dumps(record) + "\n")
            log.flush()
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            began = time.time()
            if cfg.data == "composed":
                from training.skill import skill_checks

                checks = skill_checks(model, tokenizer, encode_sample, seed=10_000 + cfg.seed)
            else:
                checks = quick_eval(model, tokenizer, seed=10_000 + cfg.seed)
            log.write(json.dumps({"step": step, "eval": checks, "eval_s": round(time.time() - began, 1)}) + "\n")
            log.flush()
        due = cfg.checkpoint_minutes and time.time() - last_save >= 60 * cfg.checkpoint_minutes
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or due or STOP.is_set():
            _save_checkpoint(run, model, opt, step, time.time() - start, time.process_time() + cpu_base)
            last_save = time.time()
        if STOP.is_set():
            log.write(json.dumps({"step": step, "stopped": "SIGTERM: checkpointed, resume with the same command"}) + "\n")
            log.flush()
            logger.info("stopped at step %d on SIGTERM; checkpoint written", step)
            return


def export(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the Hugging Face model folder (config, safetensors, tokenizer, ``overflow.json``) from a run's checkpoint."""
    from transformers import AutoTokenizer

    run = Path(run_dir)
    cfg = TrainConfig(**json.loads((run / "config.json").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    model = build_model(cfg, tokenizer)
    load_model(model, str(run / "checkpoint" / "model.safetensors"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    template = build_template(tokenizer)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    trained: dict[str, Any] = {"steps": state["step"], "wall_time_s": round(state["elapsed_s"]), "seed": cfg.seed}
    if cfg.init:  # a continuation: report its stage and the stage it continued (its record, or its folder if gone)
        init_settings = Path(cfg.init) / "overflow.json"
        earlier = json.loads(init_settings.read_text()).get("trained", {}) if init_settings.is_file() else {}
        trained.update(stage=cfg.stage, continued_from=earlier or {"folder": cfg.init})
    settings = {
        "chunk_tokens": cfg.chunk_tokens,
        "not_found": DEFAULT_NOT_FOUND,
        "template": template.to_dict(),
        "stop": ["<|end|>"],
        "max_new_tokens": 24,
        "trained": trained,
    }
    (out / "overflow.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the bundled Overflow model (CPU, resumable).")
    parser.add_argument("--run", default="runs/default", help="run folder: tokenizer, checkpoints, log")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup, help="warm-up steps")
    parser.add_argument(
        "--hidden-size", type=int, help=f"model width (default {TrainConfig.hidden_size}; stage 2: the --init model's)"
    )
    parser.add_argument(
        "--layers", type=int, help=f"Mamba-2 layers (default {TrainConfig.layers}; stage 2: the --init model's)"
    )
    parser.add_argument("--stage", type=int, default=TrainConfig.stage, choices=(1, 2))
    parser.add_argument("--init", default="", help="stage 2: the stage-1 model folder (an --export) to continue from")
    parser.add_argument("--open-share", type=float, default=TrainConfig.open_share)
    parser.add_argument("--absent-rate", type=float, help="stage 2: share of absent questions (default 0.5)")
    parser.add_argument("--hard-negative-rate", type=float, help="stage 2: share of absent questions that are hard")
    parser.add_argument(
        "--negative-mix",
        help="stage 2: three rising thresholds splitting hard negatives into other attribute / similar key / other key"
        " / near attribute (default 0.15,0.35,0.65)",
    )
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    parser.add_argument(
        "--noise-share", type=float, default=TrainConfig.noise_share, help="share of filler made of random tokens"
    )
    parser.add_argument(
        "--free-value-share",
        type=float,
        default=TrainConfig.free_value_share,
        help="share of values of any kind, whatever the attribute's name",
    )
    parser.add_argument(
        "--symbol-share",
        type=float,
        default=TrainConfig.symbol_share,
        help="share of attribute names made of random vocabulary pieces",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (needs a C++ compiler; 28-34%% less time a step, 34-50%% with --bf16)",
    )
    parser.add_argument("--no-fast-scan", action="store_true", help="use transformers' own Mamba-2 scan")
    parser.add_argument(
        "--data",
        default=TrainConfig.data,
        choices=("facts", "composed"),
        help="facts: the fact world of v1-v11; composed: the skill recipe (training/skill.py, training/README.md)",
    )
    parser.add_argument("--schedule", default=TrainConfig.schedule, choices=("cosine", "wsd"))
    parser.add_argument("--decay-share", type=float, default=TrainConfig.decay_share, help="wsd: share of steps decaying")
    parser.add_argument("--vocab-size", type=int, default=TrainConfig.vocab_size)
    parser.add_argument(
        "--curriculum-steps",
        type=int,
        default=TrainConfig.curriculum_steps,
        help="the curriculum's length in steps (default: --steps); fixed, it lets a run be extended",
    )
    parser.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, help="steps between checks (0: none)")
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, help="steps")
    parser.add_argument(
        "--checkpoint-minutes", type=float, default=TrainConfig.checkpoint_minutes, help="also checkpoint this often"
    )
    parser.add_argument(
        "--snapshot", metavar="DIR", help="copy the run's last checkpoint, tokenizer, config and log to DIR and exit"
    )
    parser.add_argument("--resume-from", metavar="DIR", help="a --snapshot folder to start from if --run has none")
    parser.add_argument("--export", metavar="DIR", help="export the run's checkpoint as a model folder and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.export:
        print(export(args.run, args.export))
        return
    if args.snapshot:
        print(snapshot(args.run, args.snapshot))
        return
    arch = init_architecture(args.init) if args.init else {}
    cfg = TrainConfig(
        hidden_size=args.hidden_size if args.hidden_size is not None else arch.get("hidden_size", TrainConfig.hidden_size),
        layers=args.layers if args.layers is not None else arch.get("layers", TrainConfig.layers),
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        threads=args.threads,
        lr=args.lr,
        warmup=args.warmup,
        stage=args.stage,
        init=args.init,
        open_share=args.open_share,
        absent_rate=args.absent_rate,
        hard_negative_rate=args.hard_negative_rate,
        negative_mix=_thresholds(args.negative_mix) if args.negative_mix else None,
        fast_scan=not args.no_fast_scan,
        bf16=args.bf16,
        compile=args.compile,
        noise_share=args.noise_share,
        free_value_share=args.free_value_share,
        symbol_share=args.symbol_share,
        data=args.data,
        schedule=args.schedule,
        decay_share=args.decay_share,
        vocab_size=args.vocab_size,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes,
        curriculum_steps=args.curriculum_steps,
    )
    train(args.run, cfg, resume_from=args.resume_from)


def _thresholds(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"--negative-mix: expected three comma-separated thresholds, got {text!r}")
    return parts[0], parts[1], parts[2]


if __name__ == "__main__":
    main()
