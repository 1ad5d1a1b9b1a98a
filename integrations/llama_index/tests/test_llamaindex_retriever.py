"""OverflowRetriever plumbing on a tiny random model: types, scores, metadata, chunking, async, persistence."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.retrievers.overflow import (
    ENTROPY_KEY,
    IDK_KEY,
    NOT_FOUND_PROB_KEY,
    RANK_KEY,
    SCORE_KEYS,
    OverflowRetriever,
    node_text,
    sentence_splitter,
)
from llamaindex_data import QUESTION, tiny_documents

from overflow_core import OPRM
from overflow_core.testing import sample_documents


def test_retrieve_returns_top_k_scored_nodes_best_first(tiny_engine: OPRM) -> None:
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=3)
    hits = retriever.retrieve(QUESTION)
    assert len(hits) == 3
    assert all(isinstance(h, NodeWithScore) for h in hits)
    scores = [h.get_score() for h in hits]
    assert scores == sorted(scores, reverse=True), "score must be higher-is-better, best first"
    for rank, hit in enumerate(hits):
        meta = hit.node.metadata
        assert hit.score == pytest.approx(-meta[ENTROPY_KEY] - (1000.0 if meta[IDK_KEY] else 0.0))
        assert meta[RANK_KEY] == rank
        assert isinstance(meta[IDK_KEY], bool)
        assert 0.0 < meta[NOT_FOUND_PROB_KEY] < 1.0
        shown = hit.node.get_content(metadata_mode=MetadataMode.LLM)
        assert not any(key in shown for key in SCORE_KEYS), "scores must stay out of the text the LLM sees"
        assert not any(key in hit.node.get_content(metadata_mode=MetadataMode.EMBED) for key in SCORE_KEYS)


def test_scores_are_the_engines_ranking(tiny_engine: OPRM) -> None:
    texts = [text for text, _ in sample_documents()]
    retriever = OverflowRetriever(tiny_engine, [TextNode(text=t) for t in texts], similarity_top_k=4)
    hits = retriever.retrieve(QUESTION)
    ranking = tiny_engine.rank(QUESTION, texts, k=4)
    assert [h.node.get_content() for h in hits] == [s.chunk.text for s in ranking.scores]
    assert [h.score for h in hits] == pytest.approx([s.score for s in ranking.scores])


def test_long_documents_come_back_as_chunk_nodes_with_their_lineage(tiny_engine: OPRM) -> None:
    """A node longer than one chunk comes back piece by piece: ``ref_doc_id`` is the source document, the offsets point
    into its text, the text carries no metadata header, and what the LLM sees (header included) is what the model
    scored. At 8650456 the pieces had no offsets and carried the header ("source: doc0.txt") in their text."""
    docs = tiny_documents()
    retriever = OverflowRetriever(tiny_engine, docs, similarity_top_k=len(docs) * 8)
    hits = retriever.retrieve(QUESTION)
    by_id = {d.doc_id: d for d in docs}
    assert len(hits) > len(docs), "the fixture documents are several chunks each"
    for hit in hits:
        node = hit.node
        assert node.ref_doc_id in by_id, "a chunk node's ref_doc_id must be its source document"
        source = by_id[node.ref_doc_id]
        assert node.start_char_idx is not None and node.end_char_idx is not None
        assert source.text[node.start_char_idx : node.end_char_idx] == node.text, "offsets into the source text"
        assert not node.text.startswith("source:"), "the metadata header must not be part of the node's text"
        assert node.metadata["source"] == source.metadata["source"]
        header = source.get_metadata_str(MetadataMode.LLM)
        assert node_text(node) == f"{header}\n\n{node.text}", "the LLM sees the header, as for the source"
    scored = {s.chunk.text for s in retriever.rank(QUESTION).scores}
    assert {node_text(h.node) for h in hits} <= scored, "the LLM text of each piece is exactly what the model scored"
    assert len(tiny_engine.tokenizer(max((node_text(h.node) for h in hits), key=len))["input_ids"]) <= 49


def test_pieces_of_parser_nodes_point_at_the_document_and_the_node(tiny_engine: OPRM) -> None:
    doc = Document(text=" ".join(text for text, _ in sample_documents()), metadata={"source": "all.txt"})
    parser = SentenceSplitter(chunk_size=400, chunk_overlap=0)  # nodes of several engine chunks each
    nodes = parser.get_nodes_from_documents([doc])
    hits = OverflowRetriever(tiny_engine, nodes, similarity_top_k=4).retrieve(QUESTION)
    parents = {n.node_id: n for n in nodes}
    for hit in hits:
        node = hit.node
        assert node.ref_doc_id == doc.doc_id
        assert node.parent_node is not None and node.parent_node.node_id in parents
        assert doc.text[node.start_char_idx : node.end_char_idx] == node.text
        parent: Any = parents[node.parent_node.node_id]
        assert parent.start_char_idx <= node.start_char_idx < node.end_char_idx <= parent.end_char_idx


def test_nodes_from_a_parser_with_the_model_tokenizer_come_back_whole(tiny_engine: OPRM) -> None:
    docs = [Document(text=text) for text, _ in sample_documents()]  # no metadata: each node is one engine chunk
    nodes = sentence_splitter(tiny_engine).get_nodes_from_documents(docs)
    assert all(len(tiny_engine.tokenizer(node_text(n))["input_ids"]) <= tiny_engine.config.chunk_tokens for n in nodes)
    before = [dict(n.metadata) for n in nodes]
    hits = OverflowRetriever(tiny_engine, nodes, similarity_top_k=len(nodes)).retrieve(QUESTION)
    assert sorted(h.node.node_id for h in hits) == sorted(n.node_id for n in nodes)
    originals = {n.node_id: n for n in nodes}
    for hit in hits:
        assert hit.node is not originals[hit.node.node_id], "the caller's nodes must not be annotated in place"
        assert node_text(hit.node) == node_text(originals[hit.node.node_id])
    assert [dict(n.metadata) for n in nodes] == before


def test_arguments_are_checked(tiny_engine: OPRM) -> None:
    node = TextNode(text="Some text.", id_="a")
    with pytest.raises(ValueError, match="similarity_top_k"):
        OverflowRetriever(tiny_engine, [node], similarity_top_k=0)
    with pytest.raises(ValueError, match="nodes"):
        OverflowRetriever(tiny_engine, [])
    with pytest.raises(ValueError, match="unique"):
        OverflowRetriever(tiny_engine, [node, TextNode(text="Other.", id_="a")])
    with pytest.raises(ValueError, match="empty"):
        OverflowRetriever(tiny_engine, [TextNode(text="  ", id_="b")])


class SlowEngine:
    """Delegates to the engine after blocking its thread for a while, as a big model would."""

    def __init__(self, engine: OPRM, seconds: float) -> None:
        self._engine, self._seconds = engine, seconds

    def rank(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._seconds)
        return self._engine.rank(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


async def test_aretrieve_matches_retrieve_and_leaves_the_event_loop_free(tiny_engine: OPRM) -> None:
    retriever = OverflowRetriever(SlowEngine(tiny_engine, 0.3), tiny_documents(), similarity_top_k=2)  # type: ignore[arg-type]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    hits = await retriever._aretrieve(query_bundle=QueryBundle(QUESTION))  # the keyword LlamaIndex calls it with
    task.cancel()
    assert ticks >= 10, f"the event loop ticked {ticks} times in 0.3 s of retrieval: retrieval blocked it"
    again = await retriever.aretrieve(QUESTION)
    sync = retriever.retrieve(QUESTION)
    assert [h.node.node_id for h in hits] == [h.node.node_id for h in again] == [h.node.node_id for h in sync]
    assert [h.score for h in hits] == pytest.approx([h.score for h in sync])


def test_persist_round_trip_without_pickle(tiny_engine: OPRM, tmp_path: Path) -> None:
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=3)
    retriever.persist(tmp_path)
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".bin"))], files
    json.loads((tmp_path / "retriever.json").read_text())  # plain JSON
    loaded = OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)
    assert loaded.similarity_top_k == 3
    assert [n.node_id for n in loaded.nodes] == [n.node_id for n in retriever.nodes]
    assert [n.metadata for n in loaded.nodes] == [n.metadata for n in retriever.nodes]
    before, after = retriever.retrieve(QUESTION), loaded.retrieve(QUESTION)
    assert [h.node.node_id for h in after] == [h.node.node_id for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before])


def test_from_persist_dir_rejects_other_folders(tiny_engine: OPRM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="persist_dir"):
        OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)
    (tmp_path / "retriever.json").write_text(json.dumps({"format": "something else", "version": 1}))
    (tmp_path / "nodes.json").write_text("[]")
    with pytest.raises(ValueError, match="format"):
        OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)


def test_state_index_backed_retriever_equals_the_plain_one(tiny_engine: OPRM) -> None:
    docs = tiny_documents()
    plain = OverflowRetriever(tiny_engine, docs, similarity_top_k=3)
    indexed = OverflowRetriever(tiny_engine, docs, similarity_top_k=3, use_state_index=True)
    assert indexed.state_index is not None and len(indexed.state_index) > 3
    expected, got = plain.retrieve(QUESTION), indexed.retrieve(QUESTION)
    assert [h.node.node_id for h in got] == [h.node.node_id for h in expected]
    assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_persist_round_trip_through_the_state_index(tiny_engine: OPRM, tmp_path: Path) -> None:
    retriever = OverflowRetriever(tiny_engine, tiny_documents(), similarity_top_k=2, use_state_index=True)
    retriever.persist(tmp_path)
    assert (tmp_path / "state_index" / "manifest.json").exists()
    assert list((tmp_path / "state_index").glob("*.safetensors")), "states go to safetensors shards"
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".bin"))], files
    loaded = OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)
    assert loaded.state_index is not None and loaded.state_index.path == tmp_path / "state_index"
    before, after = retriever.retrieve(QUESTION), loaded.retrieve(QUESTION)
    assert [h.node.node_id for h in after] == [h.node.node_id for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before], abs=1e-4)


def test_from_defaults_takes_an_existing_index_or_docstore(tiny_engine: OPRM) -> None:
    nodes = sentence_splitter(tiny_engine).get_nodes_from_documents(tiny_documents())
    index = SummaryIndex(nodes)
    from_index = OverflowRetriever.from_defaults(tiny_engine, index=index, similarity_top_k=3)
    from_store = OverflowRetriever.from_defaults(tiny_engine, docstore=index.docstore, similarity_top_k=3)
    from_nodes = OverflowRetriever.from_defaults(tiny_engine, nodes=nodes, similarity_top_k=3)
    assert sorted(n.node_id for n in from_index.nodes) == sorted(n.node_id for n in nodes)
    ids = [[h.node.node_id for h in r.retrieve(QUESTION)] for r in (from_index, from_store, from_nodes)]
    assert ids[0] == ids[1] == ids[2]
    with pytest.raises(ValueError, match="exactly one"):
        OverflowRetriever.from_defaults(tiny_engine, nodes=nodes, index=index)
