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
