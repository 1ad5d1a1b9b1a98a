"""Copies and pickles: a deep copy shares the engine (heavy, thread-safe) and copies the rest; a pickle carries how the
engine was loaded and loads it again where it is unpickled, or, for an engine given as ``engine=``, refuses in one line
saying why and what to do. Both used to fail with "cannot pickle '_thread.lock' object"."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document

from langchain_overflow import ChatOverflow, OverflowLLM, OverflowReranker, OverflowRetriever, _engines
from overflow_core import OPRM
from tests.engines import tiny_corpus

QUESTION = "What is the rank of the ship?"


def _folder(engine: OPRM) -> Path:
    return Path(engine.model.config._name_or_path)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [Document(page_content=t, metadata=m) for t, m in tiny_corpus()]


def _ranks(documents: list[Document]) -> list[tuple[str, int, int]]:
    return [(d.page_content, d.metadata["overflow"]["start"], d.metadata["overflow"]["rank"]) for d in documents]


def test_a_deep_copy_shares_the_engine_and_copies_the_rest(engine: OPRM, docs: list[Document]) -> None:
    retriever = OverflowRetriever(engine=engine, documents=docs, k=2, tags=["mine"])
    for clone in (copy.deepcopy(retriever), retriever.model_copy(deep=True)):
        assert clone.engine is engine, "a copy must share the loaded model, not duplicate it"
        assert clone.documents == retriever.documents and clone.documents is not retriever.documents
        assert clone.documents[0] is not retriever.documents[0]
        clone.documents[0].metadata["edited"] = True
        clone.tags.append("copy")  # type: ignore[union-attr]
        assert "edited" not in retriever.documents[0].metadata and retriever.tags == ["mine"]
        assert _ranks(clone.invoke(QUESTION)) == _ranks(retriever.invoke(QUESTION))

    chat = ChatOverflow(engine=engine, max_tokens=6, stop=["zz"])
    clone_chat = copy.deepcopy(chat)
    assert clone_chat.engine is engine and clone_chat.stop == ["zz"] and clone_chat.stop is not chat.stop
    assert clone_chat.invoke("Hello").content == chat.invoke("Hello").content
    # a copy of a model that has not loaded its engine yet loads the same shared one
    lazy = ChatOverflow(model=str(_folder(engine)), engine_kwargs={"chunk_tokens": 40}, max_tokens=4)
    lazy_clone = copy.deepcopy(lazy)
    assert lazy_clone.engine_ is None and lazy_clone.engine is lazy.engine


def test_a_deep_copy_of_an_index_retriever_shares_the_index(engine: OPRM, docs: list[Document]) -> None:
    retriever = OverflowRetriever.from_documents(docs, engine, index=True, k=2)
    clone = copy.deepcopy(retriever)
    assert clone.index is retriever.index and clone.engine is engine
    assert _ranks(clone.invoke(QUESTION)) == _ranks(retriever.invoke(QUESTION))


@pytest.fixture
def fresh_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the engines loaded so far, as a new process would not have them (the requests stay recorded)."""
    import weakref

    monkeypatch.setattr(_engines, "_loaded", weakref.WeakValueDictionary())


def test_a_pickle_loads_the_model_again_from_model(engine: OPRM, docs: list[Document], fresh_loader: None) -> None:
    folder = str(_folder(engine))
    chat = ChatOverflow(model=folder, engine_kwargs={"chunk_tokens": 40}, max_tokens=6, temperature=0.0)
    unloaded = pickle.loads(pickle.dumps(chat))  # nothing loaded yet: that always worked
    answer = chat.invoke("Hello").content
    clone = pickle.loads(pickle.dumps(chat))
    assert clone.engine_ is None, "unpickling loads nothing; the first call does"
    _engines._loaded.clear()  # as in another process: the clone must load the model itself
    assert clone.invoke("Hello").content == answer
    assert clone.engine is not chat.engine and clone.engine.config.chunk_tokens == 40
    assert unloaded.engine is clone.engine, "loaded through the shared loader: one engine per model and settings"
    assert clone.model == chat.model and clone.max_tokens == 6

    retriever = OverflowRetriever(model=folder, engine_kwargs={"chunk_tokens": 40}, documents=docs, k=2)
    expected = _ranks(retriever.invoke(QUESTION))
    assert _ranks(pickle.loads(pickle.dumps(retriever)).invoke(QUESTION)) == expected
    reranker = OverflowReranker(model=folder, engine_kwargs={"chunk_tokens": 40}, top_n=1)
    reranker.engine  # noqa: B018  (load it)
    assert pickle.loads(pickle.dumps(reranker)).engine.config.chunk_tokens == 40


def test_a_pickle_of_from_pretrained_loads_the_resolved_folder_again(
    engine: OPRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_loader: None
) -> None:
    folder = _folder(engine)
    monkeypatch.chdir(folder.parent)
    llm = OverflowLLM.from_pretrained(folder.name, max_new_tokens=5, max_tokens=4)  # a relative path
    answer = llm.invoke("Hello")
    data = pickle.dumps(llm)
    monkeypatch.chdir(tmp_path)  # the relative path means nothing here
    _engines._loaded.clear()
    clone: Any = pickle.loads(data)
    assert clone.invoke("Hello") == answer
    assert clone.engine is not llm.engine and clone.engine.config.max_new_tokens == 5


def test_a_pickle_of_a_given_engine_is_refused_in_one_line(engine: OPRM, docs: list[Document]) -> None:
    for model in (
        ChatOverflow(engine=engine),
        OverflowLLM(engine=engine),
        OverflowRetriever(engine=engine, documents=docs),
        OverflowReranker(engine=engine),
    ):
        with pytest.raises(TypeError) as caught:
            pickle.dumps(model)
        message = str(caught.value)
        assert "\n" not in message and "_thread.lock" not in message
        assert message.startswith(f"cannot pickle {type(model).__name__}: it was given a loaded engine (engine=)")
        assert "model='<folder or hub id>'" in message
    indexed = OverflowRetriever.from_documents(docs, engine, index=True)
    with pytest.raises(TypeError, match=r"^cannot pickle OverflowRetriever built on a state index .*StateIndex\.load"):
        pickle.dumps(indexed)
