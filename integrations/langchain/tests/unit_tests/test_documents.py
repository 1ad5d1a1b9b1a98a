"""Documents in and out, on a tiny random model: any Document-like input (LangChain Documents included, into a state
index too), the user's ids and metadata kept, scores under their own key, the 0-1 relevance score, empty documents
skipped with a warning."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

from langchain_overflow import OverflowReranker, OverflowRetriever
from overflow_core import OPRM, Chunk, ChunkScore
from tests.engines import QUESTION, tiny_corpus

USER_KEYS = {"score": "mine", "rank": "gold", "start": "page 3", "end": -1, "not_found": "n/a", "entropy": None}


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    """The tiny corpus as LangChain Documents with ids and metadata that use the names Overflow's scores have."""
    return [
        Document(page_content=text, metadata={**meta, **USER_KEYS, "n": i}, id=f"doc-{i}")
        for i, (text, meta) in enumerate(tiny_corpus())
    ]


def _check_kept(out: list[Document], docs: list[Document]) -> None:
    by_id = {d.id: d for d in docs}
    for doc in out:
        assert doc.id in by_id, f"the source document's id must come back, got {doc.id!r}"
        source = by_id[doc.id]
        assert {k: v for k, v in doc.metadata.items() if k != "overflow"} == source.metadata, "user metadata changed"
        assert (
            source.page_content[doc.metadata["overflow"]["start"] : doc.metadata["overflow"]["end"]] == doc.page_content
        )
        assert {"score", "entropy", "rank", "not_found", "top_prob", "not_found_prob"} <= set(doc.metadata["overflow"])


def test_retrieved_documents_keep_ids_and_user_metadata(engine: OPRM, docs: list[Document]) -> None:
    out = OverflowRetriever(engine=engine, documents=docs, k=4).invoke(QUESTION)
    assert len(out) == 4
    _check_kept(out, docs)
    assert [d.metadata["overflow"]["rank"] for d in out] == [0, 1, 2, 3]
    assert "overflow" not in docs[0].metadata, "the input Documents must not be modified"


def test_langchain_documents_build_a_state_index_and_come_back_from_it(
    engine: OPRM, docs: list[Document], tmp_path: Path
) -> None:
    from overflow_core.index import StateIndex

    retriever = OverflowRetriever.from_documents(docs, engine, index=True, k=3)
    assert retriever.index is not None and len(retriever.index) == len(engine.chunk([d.page_content for d in docs]))
    out = retriever.invoke(QUESTION)
    _check_kept(out, docs)
    plain = OverflowRetriever(engine=engine, documents=docs, k=3).invoke(QUESTION)
    assert {d.id for d in out} <= {d.id for d in docs} and len(plain) == len(out)

    retriever.index.save(tmp_path / "corpus.oprm-index")
    loaded = OverflowRetriever(index=StateIndex.load(tmp_path / "corpus.oprm-index", engine), k=3)
    again = loaded.invoke(QUESTION)
    assert [(d.id, d.page_content) for d in again] == [(d.id, d.page_content) for d in out], "ids survive save/load"
    _check_kept(again, docs)


@dataclass
class _OtherDocument:
    """Some other library's document type: page_content, metadata, id."""

    page_content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


def test_any_document_like_input(engine: OPRM) -> None:
    from overflow_core.types import Document as CoreDocument

    (t0, m0), (t1, m1), (t2, m2) = tiny_corpus()
    mixed: list[Any] = [
        Document(page_content=t0, metadata=m0, id="lc"),
        _OtherDocument(t1, dict(m1), id="other"),
        {"page_content": t2, "metadata": m2, "id": "dict"},
    ]
    out = OverflowRetriever(engine=engine, documents=mixed, k=20).invoke(QUESTION)
    assert {d.id for d in out} == {"lc", "other", "dict"}
    assert {d.metadata["source"] for d in out} == {m0["source"], m1["source"], m2["source"]}
    more: list[Any] = [t0, (t1, m1), {"text": t2, "metadata": m2}, CoreDocument(t0, {"source": "core"})]
    out = OverflowRetriever(engine=engine, documents=more, k=50).invoke(QUESTION)
    assert {d.metadata.get("source") for d in out} == {None, m1["source"], m2["source"], "core"}
    reranked = OverflowReranker(engine=engine, top_n=None).compress_documents(mixed, QUESTION)
    assert {d.id for d in reranked} == {"lc", "other", "dict"}
    with pytest.raises(ValueError, match=r"documents\[1\]: expected a LangChain Document, a string"):
        OverflowRetriever(engine=engine, documents=[t0, 42])


def test_scores_go_under_their_own_key_never_over_the_users(engine: OPRM, docs: list[Document]) -> None:
    taken = [Document(page_content=d.page_content, metadata={**d.metadata, "overflow": "my field"}) for d in docs]
    with pytest.raises(ValueError, match=r"already has a key 'overflow'.*metadata_key="):
        OverflowRetriever(engine=engine, documents=taken)
    out = OverflowRetriever(engine=engine, documents=taken, metadata_key="oprm", k=2).invoke(QUESTION)
    assert all(d.metadata["overflow"] == "my field" and "entropy" in d.metadata["oprm"] for d in out)
    reranked = OverflowReranker(engine=engine, metadata_key="oprm").compress_documents(taken, QUESTION)
    assert all(d.metadata["overflow"] == "my field" and "entropy" in d.metadata["oprm"] for d in reranked)
    # the retriever's own output fed to a reranker: its scores are replaced (spans now within each candidate), the
    # user's fields and ids kept
    retrieved = OverflowRetriever(engine=engine, documents=docs, k=3).invoke(QUESTION)
    chained = OverflowReranker(engine=engine, top_n=None).compress_documents(retrieved, QUESTION)
    by_content = {d.page_content: d for d in retrieved}
    for doc in chained:
        before = by_content[doc.page_content]
        span = doc.metadata["overflow"]
        assert doc.id == before.id and 0 <= span["start"] < span["end"] <= len(doc.page_content)
        assert {k: v for k, v in doc.metadata.items() if k != "overflow"} == docs[int(doc.metadata["n"])].metadata


def _score(entropy: float, idk: bool, score: float) -> ChunkScore:
    chunk = Chunk(index=0, doc_index=0, text="x", start=0, end=1, ids=(1,))
    return ChunkScore(chunk=chunk, rank=0, entropy=entropy, top_prob=0.3, not_found_prob=0.1, idk=idk, score=score)


def test_relevance_score_is_0_to_1_in_rank_order_and_above_half_exactly_for_answers() -> None:
    from langchain_overflow._documents import relevance_score

    answering = [_score(h, False, -h) for h in (0.0, 0.4, 2.0, 9.0)]
    abstaining = [_score(h, True, -h - 1000) for h in (0.0, 1.0, 5.0)]
    values = [relevance_score(s, criterion="entropy", idk_filter=True) for s in answering + abstaining]
    assert values == sorted(values, reverse=True), "higher relevance must mean better rank"
    assert all(v > 0.5 for v in values[:4]) and all(0.0 < v <= 0.5 for v in values[4:])
    assert values[0] == 1.0 and values[1] == pytest.approx(0.5 + 0.5 * math.exp(-0.4))
    assert relevance_score(_score(1.0, True, -1.0), criterion="entropy", idk_filter=False) > 0.5, "no IDK filter"
    assert relevance_score(answering[0], criterion="max_prob", idk_filter=True) == pytest.approx(0.65)
    assert relevance_score(answering[0], criterion="not_found_prob", idk_filter=True) == pytest.approx(0.95)


def test_relevance_score_option(engine: OPRM, docs: list[Document]) -> None:
    out = OverflowRetriever(engine=engine, documents=docs, k=6, relevance_score=True).invoke(QUESTION)
    values = [d.metadata["relevance_score"] for d in out]
    assert values == sorted(values, reverse=True) and all(0.0 <= v <= 1.0 for v in values)
    assert all((d.metadata["relevance_score"] > 0.5) is (not d.metadata["overflow"]["not_found"]) for d in out)
    assert "relevance_score" not in OverflowRetriever(engine=engine, documents=docs).invoke(QUESTION)[0].metadata


def test_empty_documents_are_skipped_with_a_warning(engine: OPRM, docs: list[Document]) -> None:
    with_empty = [docs[0], Document(page_content=""), docs[1], Document(page_content=" \n ", id="blank"), docs[2]]
    with pytest.warns(UserWarning, match=r"2 empty document\(s\) skipped: documents\[1\], documents\[3\]"):
        retriever = OverflowRetriever(engine=engine, documents=with_empty, k=3)
    out = retriever.invoke(QUESTION)
    assert [d.page_content for d in out] == [
        d.page_content for d in OverflowRetriever(engine=engine, documents=docs, k=3).invoke(QUESTION)
    ]
    with pytest.warns(UserWarning, match="empty document"):
        reranked = OverflowReranker(engine=engine, top_n=None).compress_documents(with_empty, QUESTION)
    assert sorted(d.id or "" for d in reranked) == sorted(d.id or "" for d in docs)
    with (
        pytest.raises(ValueError, match="documents: expected at least one non-empty Document"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        OverflowRetriever(engine=engine, documents=[Document(page_content="  ")])
