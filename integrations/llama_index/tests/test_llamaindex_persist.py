"""OverflowRetriever.persist / from_persist_dir on a tiny random model: a failed persist leaves the previous one intact,
a folder whose nodes do not match its state index is refused, bad targets are refused before anything is written, and
from_persist_dir honours its arguments.

At e1b1a4c (QA's li5.py / li13.py): a failed index save left the new nodes.json next to the old index, and loading
returned one node's id with another node's text; persisting to a file raised a raw FileExistsError; a state_index/
folder of the user's own files got a nodes.json written beside it first; ``use_state_index=True`` built an index and
threw it away; ``similarity_top_k=0`` became the saved value."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import TextNode
from llama_index.core.storage.docstore.utils import doc_to_json
from llama_index.retrievers.overflow import OverflowRetriever, node_text

from overflow_core import OPRM
from overflow_core.errors import IndexBusyError, InputError
from overflow_core.index import StateIndex

QUESTION = "What is the locker number of Alice Baker?"


def old_nodes() -> list[TextNode]:
    return [
        TextNode(text="The locker number of Alice Baker is 4412.", id_="alice"),
        TextNode(text="The badge number of Bob Stone is 9981.", id_="bob"),
    ]


def new_nodes() -> list[TextNode]:
    return [
        TextNode(text="The home city of Carl Young is Oslo.", id_="carl"),
        TextNode(text="The birth year of Dana Fox is 1970.", id_="dana"),
        TextNode(text="The favorite color of Eve Li is red.", id_="eve"),
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_ids_match_texts(retriever: OverflowRetriever, expected: list[TextNode]) -> None:
    """Every retrieved node carries its own text (the bug handed back one node's id with another node's text)."""
    texts = {n.node_id: n.text for n in expected}
    hits = retriever.retrieve(QUESTION)
    assert hits
    for hit in hits:
        assert hit.node.node_id in texts, f"retrieved {hit.node.node_id!r}, not one of {sorted(texts)}"
        assert node_text(hit.node) == texts[hit.node.node_id]


def _fail_with(error: Exception) -> Any:
    def save(self: StateIndex, path: Any, **kwargs: Any) -> None:
        raise error

    return save


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        IndexBusyError("another writer holds the index"),
        InputError("path: cannot write the index"),
    ],
    ids=["disk-full", "busy", "input-error"],
)
def test_a_failed_index_save_leaves_the_previous_persist_intact(
    tiny_engine: OPRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    OverflowRetriever(tiny_engine, old_nodes(), similarity_top_k=1, use_state_index=True).persist(tmp_path)
    before = snapshot(tmp_path)
    newer = OverflowRetriever(tiny_engine, new_nodes(), similarity_top_k=2, use_state_index=True)
    with monkeypatch.context() as patch:
        patch.setattr(StateIndex, "save", _fail_with(error))
        with pytest.raises(type(error)):
            newer.persist(tmp_path)
    assert snapshot(tmp_path) == before, "a failed persist must change no file (and leave no temporary file)"
    loaded = OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)
    assert [n.node_id for n in loaded.nodes] == ["alice", "bob"] and loaded.similarity_top_k == 1
    assert loaded.state_index is not None and len(loaded.state_index) == 2
    assert_ids_match_texts(loaded, old_nodes())
    loaded.state_index.close()

    newer.persist(tmp_path)  # the same persist, once the index can be saved, replaces all of it
    again = OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)
    assert [n.node_id for n in again.nodes] == ["carl", "dana", "eve"] and again.similarity_top_k == 2
    assert again.state_index is not None and len(again.state_index) == 3
    assert_ids_match_texts(again, new_nodes())
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _interrupted_commit(folder: Path, engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new index is committed, then writing nodes.json fails (an I/O error at the worst moment)."""
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "nodes.json":
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    newer = OverflowRetriever(engine, new_nodes(), use_state_index=True)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="Input/output"):
            newer.persist(folder)
    assert len(json.loads((folder / "nodes.json").read_text())) == 2, "the old nodes stay next to the new index"


def _write_nodes(folder: Path, nodes: list[TextNode]) -> None:
    (folder / "nodes.json").write_text(json.dumps([doc_to_json(n) for n in nodes]))


def _edited(folder: Path, engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = old_nodes()
    nodes[0].text = nodes[0].text.replace("4412", "4413")  # same ids, same length, one character differs
    _write_nodes(folder, nodes)


def _appended(folder: Path, engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_nodes(folder, [*old_nodes(), TextNode(text="The home city of Carl Young is Oslo.", id_="carl")])


def _extended(folder: Path, engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = old_nodes()
    nodes[1].text += " Bob also owns a boat."  # every chunk of the index still reads true, but does not hold this
    _write_nodes(folder, nodes)


@pytest.mark.parametrize(
    "damage",
    [
        _interrupted_commit,
        lambda folder, engine, mp: _write_nodes(folder, new_nodes()),  # what the old persist left after a failed save
        _edited,
        _appended,
        _extended,
    ],
    ids=["interrupted-commit", "other-nodes", "text-edited", "node-appended", "text-extended"],
)
def test_from_persist_dir_refuses_nodes_that_do_not_match_the_index(
    tiny_engine: OPRM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Any
) -> None:
    OverflowRetriever(tiny_engine, old_nodes(), use_state_index=True).persist(tmp_path)
    damage(tmp_path, tiny_engine, monkeypatch)
    with pytest.raises(ValueError, match=r"nodes\.json does not match the state index") as info:
        OverflowRetriever.from_persist_dir(tmp_path, tiny_engine)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
    # without its index the folder's nodes load (the user asked not to use the index)
    plain = OverflowRetriever.from_persist_dir(tmp_path, tiny_engine, use_state_index=False)
    assert plain.state_index is None


def test_persist_refuses_bad_targets_before_writing_anything(tiny_engine: OPRM, tmp_path: Path) -> None:
    retriever = OverflowRetriever(tiny_engine, old_nodes(), use_state_index=True)
    a_file = tmp_path / "retriever"
    a_file.write_text("mine")
    for target, match in ((a_file, "is a file"), (a_file / "sub", "is a file")):
        with pytest.raises(ValueError, match=match) as info:
            retriever.persist(target)
        assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert a_file.read_text() == "mine"

    users = tmp_path / "users"
    (users / "state_index").mkdir(parents=True)
    (users / "state_index" / "mine.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not an Overflow state index \(mine\.txt\); nothing was written"):
        retriever.persist(users)
    assert snapshot(users) == {"state_index/mine.txt": b"mine"}, "nothing may be written beside the user's files"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "nodes.json").write_text('{"mine": true}')
    with pytest.raises(ValueError, match=r"nodes\.json that is not an OverflowRetriever's"):
        retriever.persist(foreign)
    assert snapshot(foreign) == {"nodes.json": b'{"mine": true}'}


def test_from_persist_dir_honours_use_state_index_and_similarity_top_k(tiny_engine: OPRM, tmp_path: Path) -> None:
    plain_dir, indexed_dir = tmp_path / "plain", tmp_path / "indexed"
    plain = OverflowRetriever(tiny_engine, old_nodes(), similarity_top_k=2)
    plain.persist(plain_dir)
    OverflowRetriever(tiny_engine, old_nodes(), similarity_top_k=2, use_state_index=True).persist(indexed_dir)
    expected = [h.node.node_id for h in plain.retrieve(QUESTION)]

    built = OverflowRetriever.from_persist_dir(plain_dir, tiny_engine, use_state_index=True)
    assert built.state_index is not None and len(built.state_index) == 2, "asked for an index: it must be kept"
    assert [h.node.node_id for h in built.retrieve(QUESTION)] == expected
    without = OverflowRetriever.from_persist_dir(indexed_dir, tiny_engine, use_state_index=False)
    assert without.state_index is None
    assert [h.node.node_id for h in without.retrieve(QUESTION)] == expected
    default = OverflowRetriever.from_persist_dir(indexed_dir, tiny_engine)
    assert default.state_index is not None and default.similarity_top_k == 2
    default.state_index.close()

    one = OverflowRetriever.from_persist_dir(indexed_dir, tiny_engine, similarity_top_k=1)
    assert one.similarity_top_k == 1 and len(one.retrieve(QUESTION)) == 1
    assert one.state_index is not None
    one.state_index.close()
    for folder in (plain_dir, indexed_dir):
        for bad in (0, -1):
            with pytest.raises(ValueError, match=rf"similarity_top_k: expected a positive number of nodes, got {bad}"):
                OverflowRetriever.from_persist_dir(folder, tiny_engine, similarity_top_k=bad)
