"""Helpers for tests, here and in the integration packages: tiny random models of every supported family.

Nothing here downloads anything: the tokenizer is trained on the fly on generated text and the models are
random-initialised from transformers configs, saved to and loaded from local folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "RANKING_ATOL",
    "assert_same_ranking",
    "continuation_errors",
    "make_remote_code_dir",
    "make_tiny_model",
    "make_tiny_model_dir",
    "make_tokenizer_dir",
    "sample_documents",
    "sharpen",
    "tiny_config",
]

FAMILIES = ("mamba2", "mamba", "falcon_mamba", "bamba", "zamba2", "falcon_h1")  # the engine/index suites' families

_LIN = ["linear_attention", "full_attention"]
# Tiny configs of the other registered families: 2-4 layers, every kind of layer the family has at least once.
# Gated-DeltaNet heads and a two-expert MoE block, as the Qwen3-Next family of configs spells them
_GDN: dict[str, Any] = dict(
    head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4
)
_MOE: dict[str, Any] = dict(
    moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=2, num_experts_per_tok=1
)
_TINY: dict[str, dict[str, Any]] = {
    "granitemoehybrid": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=1,
        shared_intermediate_size=32,
        layer_types=_LIN,
        mamba_n_heads=8,
        mamba_d_state=8,
        mamba_d_head=16,
        mamba_chunk_size=8,
        max_position_embeddings=512,
    ),
    "nemotron_h": dict(
        hidden_size=64,
        layers_block_type=["mamba", "attention", "mlp"],
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        ssm_state_size=8,
        mamba_num_heads=8,
        mamba_head_dim=16,
        n_groups=1,
        chunk_size=8,
        n_routed_experts=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32,
    ),
    "lfm2": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        layer_types=["conv", "full_attention"],
        full_attn_idxs=[1],
        block_auto_adjust_ff_dim=False,
    ),
    "lfm2_moe": dict(
        hidden_size=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_dense_layers=1,
        num_experts=2,
        num_experts_per_tok=1,
        layer_types=["conv", "full_attention"],
    ),
    "lfm3": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        layer_types=["conv", "sliding_attention", "full_attention"],
        sliding_window=8,
    ),
    "qwen3_next": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_GDN,
        **_MOE,
        layer_types=_LIN,
    ),
    "qwen3_5_text": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_GDN,
        layer_types=_LIN,
    ),
    "qwen3_5_moe_text": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_GDN,
        **_MOE,
        layer_types=_LIN,
    ),
    "olmo_hybrid": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        linear_num_key_heads=4,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        layer_types=_LIN,
    ),
    "kimi_linear": dict(
        hidden_size=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        num_experts=2,
        num_experts_per_token=1,
        mlp_layer_types=["dense", "sparse"],
        layer_types=_LIN,
        linear_head_dim=16,
        linear_num_heads=4,
        head_dim=16,
    ),
    "bailing_hybrid": dict(
        hidden_size=64,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        qk_nope_head_dim=8,
        num_experts=2,
        num_expert_group=1,
        topk_group=1,
        num_experts_per_token=1,
        first_k_dense_replace=1,
        mlp_layer_types=["dense", "sparse"],
        layer_types=_LIN,
        expert_swiglu_limit_list=[0, 0],
        share_expert_swiglu_limit_list=[0, 0],
        linear_head_dim=16,
        linear_num_heads=4,
        head_dim=16,
        layer_group_size=2,
        num_nextn_predict_layers=0,
    ),
    "zamba": dict(
        hidden_size=32,
        attention_hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=4,
        layers_block_type=["linear_attention", "hybrid", "linear_attention", "hybrid"],
        num_attention_heads=4,
        attention_head_dim=16,
        num_key_value_heads=4,
        n_mamba_heads=2,
        mamba_d_state=8,
        mamba_dt_rank=8,
        attn_layer_period=2,
        attn_layer_offset=1,
        use_mamba_kernels=False,
    ),
    "jamba": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        expert_layer_period=2,
        expert_layer_offset=1,
        attn_layer_period=2,
        attn_layer_offset=1,
        mamba_d_state=8,
        mamba_dt_rank=8,
        use_mamba_kernels=False,
    ),
    "lara_mini": dict(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        **_GDN,
        **_MOE,
        layer_types=["linear_attention", "sliding_attention", "full_attention"],
        sliding_window=8,
    ),
    "zaya": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        moe_intermediate_size=32,
        num_experts=2,
        num_experts_per_tok=1,
        layer_types=["hybrid", "hybrid"],
        router_hidden_size=16,
    ),
    "minimax": dict(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=2,
        num_experts_per_tok=1,
        layer_types=["linear_attention", "full_attention"],
        block_size=8,
    ),
    "recurrent_gemma": dict(
        num_hidden_layers=3,
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=4,
        lru_width=64,
        attention_window_size=8,
        head_dim=16,
        num_key_value_heads=4,
        block_types=["recurrent", "attention", "recurrent"],
    ),
    "rwkv": dict(
        hidden_size=64, num_hidden_layers=2, attention_hidden_size=64, intermediate_size=128, context_length=512
    ),
    "xlstm": dict(
        hidden_size=64,
        embedding_dim=64,
        num_hidden_layers=2,
        num_blocks=2,
        num_heads=4,
        chunk_size=8,
        qk_dim_factor=1.0,
        autocast_kernel_dtype="float32",
        mode="inference",
        chunkwise_kernel="chunkwise--native_autograd",
        sequence_kernel="native_sequence__native",
        step_kernel="native",
    ),
}
_INKLING: dict[str, Any] = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    swa_num_attention_heads=4,
    swa_num_key_value_heads=2,
    swa_head_dim=16,
    sliding_window_size=8,
    layer_types=["hybrid_sliding", "hybrid"],
    mlp_layer_types=["dense", "sparse"],
    intermediate_size=64,
    moe_intermediate_size=32,
    n_routed_experts=2,
    num_experts_per_tok=1,
    n_shared_experts=1,
    rel_extent=32,
    d_rel=4,
    logits_mup_width_multiplier=1.0,
)
_TINY["inkling_text"] = _INKLING
_TINY["qwen3_5"] = _TINY["qwen3_5_text"]  # wrapper model types: the text model AutoModelForCausalLM builds from them
_TINY["qwen3_5_moe"] = _TINY["qwen3_5_moe_text"]
_WRAPPED = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}

# Every registered model type with a tiny config here (the family suite runs each); the backends' table must match.
ALL_FAMILIES = (*FAMILIES, *_TINY)
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
    elif family in _WRAPPED:
        text = {**common, **_TINY[_WRAPPED[family]]}
        vision = {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 32, "out_hidden_size": 64}
        return AutoConfig.for_model(family, text_config=text, vision_config=vision)
    elif family in _TINY:
        extra = dict(_TINY[family])
    else:
        raise ValueError(f"family: expected one of {', '.join(ALL_FAMILIES)}, got {family!r}")
    return AutoConfig.for_model(family, **common, **extra)


def sharpen(model: Any, factor: float) -> Any:
    """Scale every linear and embedding weight of ``model`` by ``factor`` (in place; returns ``model``).

    A tiny random model at its default init (std 0.02) is nearly uniform: its next-token entropies barely depend on the
    context, so "the same chunk was selected" proves nothing. Scaled up, the outputs depend on history and on pads by
    orders of magnitude more than the tolerances (the family suite asserts how much)."""
    import torch

    seen: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            kind = isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
            if kind and weight is not None and id(weight) not in seen:
                seen.add(id(weight))
                weight.mul_(factor)
    return model


def make_tiny_model(
    family: str, vocab_size: int, pad_id: int, eos_id: int, *, factor: float = 1.0, seed: int = 0
) -> Any:
    """A tiny random ``family`` model in eval mode, its weights scaled by ``factor`` (see :func:`sharpen`)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, pad_id, eos_id))
    return sharpen(model, factor).eval() if factor != 1.0 else model.eval()


def continuation_errors(backend: Any, prompt: list[int], continuation: list[int]) -> tuple[float, float]:
    """``(block, token)``: the largest logit error, against one full forward over ``prompt + continuation``, of
    continuing ``prompt``'s prefilled state with ``continuation`` fed as one block, and fed one token at a time.

    Measures, never assumes, whether a family can continue a stored state with a multi-token block: a family whose
    block error is far above its token error needs ``token_by_token``. The backend's own setting is bypassed."""
    import torch

    model = backend.model
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        _, state = backend.prefill(ids, torch.ones_like(ids))
        full = model(input_ids=torch.tensor([prompt + continuation])).logits[0, -len(continuation) :].float()
        saved = getattr(backend, "token_by_token", None)
        try:
            if saved is not None:
                backend.token_by_token = False
            block = backend.open(state).feed(torch.tensor([continuation]), all_logits=True)[0].float()
        finally:
            if saved is not None:
                backend.token_by_token = saved
        session = backend.open(state)
        token = torch.stack([session.feed(torch.tensor([[t]]))[0] for t in continuation]).float()
    return float((block - full).abs().max()), float((token - full).abs().max())


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


_REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyListStateConfig(PretrainedConfig):
    model_type = "rwkv6"

    def __init__(self, vocab_size=512, hidden_size=32, num_hidden_layers=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        super().__init__(**kwargs)
"""

_REMOTE_MODELING = '''
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_tiny import TinyListStateConfig


@dataclass
class TinyListStateOutput(ModelOutput):
    logits: torch.FloatTensor | None = None
    state: list | None = None


class TinyListStateForCausalLM(PreTrainedModel):
    """RWKV-6's remote-code interface in miniature: ``state`` is a list of tensors ``[B, hidden, layers]`` that the
    forward updates in place; the attention mask is ignored."""

    config_class = TinyListStateConfig

    def __init__(self, config):
        super().__init__(config)
        h, n = config.hidden_size, config.num_hidden_layers
        self.embeddings = nn.Embedding(config.vocab_size, h)
        self.mix = nn.ModuleList(nn.Linear(2 * h, h) for _ in range(n))
        self.key = nn.ModuleList(nn.Linear(h, h) for _ in range(n))
        self.decay = nn.Parameter(torch.full((n, h), 0.9))
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, state=None, use_cache=None, **kwargs):
        x = self.embeddings(input_ids)
        b, t, h = x.shape
        n = self.config.num_hidden_layers
        if state is None:
            state = [torch.zeros(b, h, n, dtype=x.dtype, device=x.device) for _ in range(2)]
        for layer in range(n):
            outs = []
            for i in range(t):
                cur = x[:, i]
                shifted = state[0][:, :, layer]
                acc = self.decay[layer] * state[1][:, :, layer] + torch.tanh(self.key[layer](cur))
                state[0][:, :, layer] = cur
                state[1][:, :, layer] = acc
                outs.append(cur + torch.tanh(self.mix[layer](torch.cat([shifted, acc], -1))))
            x = torch.stack(outs, 1)
        logits = self.head(self.norm(x))
        return TinyListStateOutput(logits=logits, state=state if use_cache else None)
'''


def make_remote_code_dir(folder: str | Path, tokenizer_dir: str | Path, *, factor: float = 3.0) -> Path:
    """A local checkpoint that ships its own modeling code (``auto_map``), RWKV-6's interface in miniature.

    Its ``model_type`` is ``rwkv6``; its state is a list of tensors mutated in place and it ignores the attention
    mask. Loading it needs ``trust_remote_code=True``. Weights scaled by ``factor`` (see :func:`sharpen`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    (out / "configuration_tiny.py").write_text(_REMOTE_CONFIG)
    (out / "modeling_tiny.py").write_text(_REMOTE_MODELING)
    config = {
        "model_type": "rwkv6",
        "architectures": ["TinyListStateForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_tiny.TinyListStateConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyListStateForCausalLM",
        },
        "vocab_size": len(tok),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    (out / "config.json").write_text(json.dumps(config))
    hf_config = AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    torch.manual_seed(0)
    model = sharpen(AutoModelForCausalLM.from_config(hf_config, trust_remote_code=True), factor)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / "overflow.json").write_text(json.dumps({"chunk_tokens": 48, "max_new_tokens": 8}))
    return out
