"""One family per backend, loaded from a folder the way a user loads a checkpoint, ranked by the engine and by a saved
and reloaded state index (whose states must continue exactly like the engine's full prompts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overflow_core.testing import assert_same_ranking, make_tiny_model_dir, sample_documents

QUESTION = "What is the PIN of Alice Baker?"


@pytest.mark.parametrize("family", ["lfm3", "minimax", "recurrent_gemma", "rwkv", "xlstm"])
def test_a_folder_of_each_backend_loads_ranks_and_indexes(tmp_path: Path, tokenizer_dir: Path, family: str) -> None:
    from overflow_core import OPRM, StateIndex

    folder = make_tiny_model_dir(tmp_path / family, tokenizer_dir, family, chunk_tokens=40, max_batch_tokens=300)
    oprm = OPRM.from_pretrained(folder)
    assert oprm.backend.name == family
    docs = sample_documents(2, seed=3)
    expected = oprm.rank(QUESTION, docs)
    index = StateIndex.build(oprm, docs)
    index.save(tmp_path / "idx")
    loaded = StateIndex.load(tmp_path / "idx", oprm)
    assert_same_ranking(expected, loaded.rank(QUESTION))
    answer = loaded.answer(QUESTION, max_new_tokens=3)
    assert answer.ranking is not None


@pytest.mark.parametrize("wrapper", ["qwen3_5", "qwen3_5_moe"])
def test_a_multimodal_wrapper_checkpoint_runs_its_text_model(tmp_path: Path, tokenizer_dir: Path, wrapper: str) -> None:
    """Hub Qwen3.5 checkpoints are saved as the image-text model (config.json model_type ``qwen3_5``): the folder is
    accepted, and the text model transformers builds from it gives the full model's logits."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from overflow_core import OPRM
    from overflow_core.backends import describe_checkpoint
    from overflow_core.testing import tiny_config

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    full = AutoModelForImageTextToText.from_config(tiny_config(wrapper, len(tok), tok.pad_token_id, tok.eos_token_id))
    full.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    report = describe_checkpoint(tmp_path)
    assert report.runs and report.model_type == wrapper and any("wrapper" in n for n in report.notes)
    oprm = OPRM.from_pretrained(tmp_path)
    assert oprm.backend.name == f"{wrapper}_text"
    ids = torch.tensor([[5, 17, 33, 60, 71, 90, 101]])
    with torch.inference_mode():
        torch.testing.assert_close(oprm.model(input_ids=ids).logits, full.eval()(input_ids=ids).logits)
    assert oprm.rank(QUESTION, sample_documents(1, seed=2)).scores
