"""Helpers for tests, here and in the integration packages: tiny random models of every supported family.

Nothing here downloads anything: the tokenizer is trained on the fly on generated text and the models are
random-initialised from transformers configs, saved to and loaded from local folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "FAMILIES",
    "RANKING_ATOL",
    "assert_same_ranking",
    "make_tiny_model_dir",
    "make_tokenizer_dir",
    "sample_documents",
    "tiny_config",
]

FAMILIES = ("mamba2", "mamba", "falcon_mamba", "bamba", "zamba2", "falcon_h1")
RANKING_ATOL = 1e-4  # entropy tolerance between two paths to the same scores (batched vs single row, index vs engine)


def tiny_config(family: str, vocab_size: int, pad_id: int, eos_id: int) -> Any:
    from transformers import AutoConfig

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "bos_token_id": None,
    }
    extra: dict[str, Any]
    if family == "mamba2":
        extra = dict(
            hidden_size=32,
            state_size=8,
            num_heads=4,
            head_dim=16,
            expand=2,
            n_groups=1,
            num_hidden_layers=2,
            chunk_size=8,
        )
    elif family in ("mamba", "falcon_mamba"):
        extra = dict(hidden_size=32, state_size=8, num_hidden_layers=2, expand=2)
    elif family == "bamba":
        extra = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            mamba_d_state=8,
            mamba_d_head=8,
            mamba_n_heads=16,
            mamba_n_groups=1,
            attn_layer_indices=[1],
            mamba_chunk_size=8,
        )
    elif family == "zamba2":
        extra = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=64,
            mamba_d_state=8,
            mamba_headdim=8,
            mamba_ngroups=1,
            n_mamba_heads=16,
            hybrid_layer_ids=[1],
            layers_block_type=["mamba", "hybrid"],
            attention_head_dim=16,
            num_mem_blocks=1,
            chunk_size=8,
        )
    elif family == "falcon_h1":
        extra = dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            mamba_d_state=8,
            mamba_d_head=8,
            mamba_n_heads=16,
            mamba_n_groups=1,
            head_dim=16,
            mamba_chunk_size=8,
            mamba_d_ssm=128,
            mamba_expand=2,
        )
    else:
        raise ValueError(family)
    return AutoConfig.for_model(family, **common, **extra)


def make_tokenizer_dir(folder: str | Path, *, vocab_size: int = 512, samples: int = 300, seed: int = 3) -> Path:
    """Train a small byte-level BPE tokenizer (with the bundled model's chat template) into ``folder``."""
    from overflow_core.synthetic.tokenizer import train_tokenizer

    return train_tokenizer(folder, vocab_size=vocab_size, samples=samples, seed=seed)


def make_tiny_model_dir(folder: str | Path, tokenizer_dir: str | Path, family: str = "mamba2", **settings: Any) -> Path:
    """Save a tiny random ``family`` model, the tokenizer and ``overflow.json`` (``settings``) into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tok), tok.pad_token_id, tok.eos_token_id))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "overflow.json").write_text(json.dumps({"chunk_tokens": 48, "max_new_tokens": 8, **settings}))
    return out


def sample_documents(n_docs: int = 3, seed: int = 0, n_facts: int = 3) -> list[tuple[str, dict[str, str]]]:
    """A few documents in the bundled model's training style, each with a ``source``."""
    import random

    from overflow_core.synthetic.facts import Curriculum, FactWorld

    rng = random.Random(seed)
    world = FactWorld("train")
    docs = []
    for i in range(n_docs):
        sample = world.sample(rng, Curriculum.at(1.0), n_facts=n_facts, target_chars=600)
        docs.append((sample.context, {"source": f"doc{i}.txt"}))
    return docs


def assert_same_ranking(expected: Any, got: Any) -> None:
    """``got`` ranks like ``expected`` (two :class:`~overflow_core.Ranking` of the same chunks by two paths, e.g. the state
    index and the engine): same chunks, entropies within ``RANKING_ATOL``, same order except between chunks whose
    entropies are within that tolerance (a random model's near-uniform rows differ in the 6th decimal between paths)."""

    def where(r: Any) -> list[tuple[Any, ...]]:
        return sorted((s.chunk.index, s.chunk.doc_index, s.chunk.source, s.chunk.start, s.chunk.ids) for s in r.scores)

    assert where(got) == where(expected), (
        "the index must hold exactly the chunks the engine makes of the same documents"
    )
    ref = {s.chunk.index: s for s in expected.scores}
    for s in got.scores:
        assert abs(s.entropy - ref[s.chunk.index].entropy) <= RANKING_ATOL, (
            f"chunk {s.chunk.index}: entropy {s.entropy} from the stored state, {ref[s.chunk.index].entropy} from the "
            "full prompt; a state that does not continue exactly (wrong row, padding, Mamba-1 block feed) shows here"
        )
        assert s.idk == ref[s.chunk.index].idk
        assert abs(s.not_found_prob - ref[s.chunk.index].not_found_prob) <= RANKING_ATOL
    for r, (e, g) in enumerate(zip(expected.scores, got.scores, strict=True)):
        assert e.idk == ref[g.chunk.index].idk and abs(e.entropy - ref[g.chunk.index].entropy) <= RANKING_ATOL, (
            f"rank {r}: the engine puts chunk {e.chunk.index} (entropy {e.entropy}) there, the index chunk "
            f"{g.chunk.index} (engine entropy {ref[g.chunk.index].entropy}): more than a tie apart"
        )
    top = [s for s in expected.scores if not s.idk]
    if len(top) > 1 and top[1].entropy - top[0].entropy > 2 * RANKING_ATOL:
        assert got.best is not None and got.best.chunk.index == top[0].chunk.index
