"""OverflowRetriever: LlamaIndex nodes ranked by the model's own next-token entropy (OPRM), one engine call per query."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.indices.base import BaseIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle
from llama_index.core.storage.docstore.types import BaseDocumentStore
from llama_index.core.storage.docstore.utils import doc_to_json, json_to_doc
from llama_index.llms.overflow.loading import shared_engine, split_settings
from llama_index.retrievers.overflow.nodes import _SOURCE as _SOURCE_KEY
from llama_index.retrievers.overflow.nodes import Pieces, question_of, ranking_to_nodes, to_pieces

from overflow_core import OPRM, Ranking
from overflow_core.index.storage import fsync_dir

__all__ = ["OverflowRetriever", "sentence_splitter"]

logger = logging.getLogger(__name__)

RETRIEVER_FILE = "retriever.json"
NODES_FILE = "nodes.json"
INDEX_DIR = "state_index"
_FORMAT = "llama-index-overflow/retriever"
_VERSION = 1
_OPTIONS = ("similarity_top_k", "use_state_index", "whole_nodes", "callback_manager", "verbose")


def sentence_splitter(engine: OPRM, *, chunk_overlap: int = 0, **kwargs: Any) -> SentenceSplitter:
    """A ``SentenceSplitter`` that counts in the model's own tokens and makes nodes of at most one engine chunk.

    Nodes cut this way are scored whole, so each retrieved node is exactly what the model read.
    """
    return SentenceSplitter(
        chunk_size=engine.config.chunk_tokens, chunk_overlap=chunk_overlap, tokenizer=_tokenize(engine), **kwargs
    )


def _tokenize(engine: OPRM) -> Callable[[str], list[int]]:
    def tokenize(text: str) -> list[int]:
        return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    return tokenize


class OverflowRetriever(BaseRetriever):
    """Rank nodes by the model's confidence about the question: every node is prefilled as ``prompt + node + question``
    and scored by the entropy of its next-token distribution (chunks whose first answer token is "not found" go last).

    Nodes may come from any node parser (use :func:`sentence_splitter` so sizes are in the model's tokens) or be whole
    ``Document``s: a node longer than one engine chunk is cut into pieces that each fit one chunk with the node's
    metadata header, and returned piece by piece (``ref_doc_id``, ``start_char_idx`` / ``end_char_idx`` into the
    source document's text, the text without the header; see :mod:`llama_index.retrievers.overflow.nodes`). Nodes
    without text are skipped with a warning. Scores are
    ``-entropy`` (higher is better; minus 1000 when the model abstains, so score order is rank order); ``oprm_entropy``,
    ``oprm_rank``, ``oprm_idk`` and ``oprm_not_found_prob`` go into each node's metadata,
    hidden from the LLM. The states of the top ``similarity_top_k`` prompts stay in the engine's state cache, so an
    :class:`~llama_index.llms.overflow.OverflowLLM` on the same engine answers without reading the node again.

    Args:
        engine: the OPRM engine.
        nodes: the nodes (or documents) to search.
        similarity_top_k: how many scored chunks to return (how many nodes, with ``whole_nodes``).
        use_state_index: precompute each chunk's state once (:meth:`OPRM.index`), so a query runs only the question
            tokens per chunk; the index is what :meth:`persist` saves.
        whole_nodes: return the ``similarity_top_k`` best of the nodes given, each whole and once, scored by its best
            chunk, instead of the best chunks.

    A query of the form ``"\\ninput is <question>\\n"`` (what LlamaIndex's ``RetrieverTool`` makes of an agent's
    ``{"input": question}``) is scored as ``<question>``.

    Example:
        >>> from llama_index.core import Document
        >>> retriever = OverflowRetriever(engine, [Document(text=long_text)], similarity_top_k=2)  # doctest: +SKIP
        >>> retriever.retrieve("What is the locker number of Alice Baker?")[0].node.text  # doctest: +SKIP
        'The locker number of Alice Baker is 4412. ...'
    """

    def __init__(
        self,
        engine: OPRM,
        nodes: Sequence[BaseNode],
        *,
        similarity_top_k: int = 2,
        use_state_index: bool = False,
        whole_nodes: bool = False,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if isinstance(engine, (str, Path)) or not hasattr(engine, "rank"):  # a path where the engine goes
            raise TypeError(
                f"engine: expected an overflow_core.OPRM (or use OverflowRetriever.from_pretrained(path, nodes)), got "
                f"{type(engine).__name__}"
            )
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k: expected a positive number of nodes, got {similarity_top_k}")
        if not nodes:
            raise ValueError("nodes: expected at least one node to search, got none")
        self._engine = engine
        self._nodes: dict[str, BaseNode] = {}
        for i, node in enumerate(nodes):
            if node.node_id in self._nodes:
                raise ValueError(f"nodes[{i}]: expected unique node ids, {node.node_id!r} appears twice")
            self._nodes[node.node_id] = node
        self._pieces = to_pieces(engine, list(self._nodes.values()))
        self._documents = self._pieces.documents
        self.similarity_top_k = similarity_top_k
        self.whole_nodes = whole_nodes
        self._index: Any | None = engine.index(self._documents) if use_state_index else None
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_defaults(
        cls,
        engine: OPRM,
        *,
        nodes: Sequence[BaseNode] | None = None,
        index: BaseIndex | None = None,
        docstore: BaseDocumentStore | None = None,
        similarity_top_k: int = 2,
        **kwargs: Any,
    ) -> OverflowRetriever:
        """Search ``nodes``, or the nodes of an existing LlamaIndex ``index`` or ``docstore`` (exactly one of them)."""
        given = [
            name for name, value in (("nodes", nodes), ("index", index), ("docstore", docstore)) if value is not None
        ]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of nodes, index or docstore, got {given or 'none'}")
        if index is not None:
            docstore = index.docstore
        if docstore is not None:
            nodes = list(docstore.docs.values())
        assert nodes is not None
        return cls(engine, nodes, similarity_top_k=similarity_top_k, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        nodes: Sequence[BaseNode] | None = None,
        *,
        index: BaseIndex | None = None,
        docstore: BaseDocumentStore | None = None,
        **kwargs: Any,
    ) -> OverflowRetriever:
        """Load a model (``None``: the bundled one) through the core's loader and search ``nodes`` (or an ``index``'s
        or ``docstore``'s nodes) with it.

        Keywords are the retriever's options (``similarity_top_k``, ``use_state_index``, ``whole_nodes``, ...) or
        settings of the engine (``device``, ``dtype``, ``chunk_tokens``, ...: whatever :meth:`OPRM.from_pretrained`
        takes); anything else raises ``TypeError``. With the same model and engine settings, the retriever shares its
        engine with ``OverflowLLM.from_pretrained`` and ``OverflowRerank.from_pretrained``, so the LLM continues from
        the states the retriever computed.

        Example:
            >>> retriever = OverflowRetriever.from_pretrained(None, documents, similarity_top_k=2)  # doctest: +SKIP
        """
        own, settings = split_settings("OverflowRetriever.from_pretrained", kwargs, _OPTIONS)
        return cls.from_defaults(
            shared_engine(name_or_path, **settings), nodes=nodes, index=index, docstore=docstore, **own
        )

    @property
    def engine(self) -> OPRM:
        return self._engine

    @property
    def nodes(self) -> list[BaseNode]:
        return list(self._nodes.values())

    @property
    def state_index(self) -> Any | None:
        """The :class:`overflow_core.index.StateIndex` behind this retriever, when it has one."""
        return self._index

    def rank(self, query: str, k: int | None = None) -> Ranking:
        """The engine's full :class:`~overflow_core.Ranking` for ``query`` (every chunk's entropy), cut to ``k``."""
        if self._index is not None:
            return self._index.rank(query, k=k)
        return self._engine.rank(query, self._documents, k=k)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        question = question_of(query_bundle.query_str)
        if self.whole_nodes:  # every chunk's score is needed to find the best k distinct nodes
            ranking = self.rank(question)
            return ranking_to_nodes(
                ranking, self._pieces, top=self.similarity_top_k, whole_nodes=list(self._nodes.values())
            )
        return ranking_to_nodes(self.rank(question, k=self.similarity_top_k), self._pieces)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # the model runs in a worker thread; the event loop stays free (the base class would run it inline)
        return await asyncio.to_thread(self._retrieve, query_bundle)

    # -- persistence: JSON for the nodes and settings, the state index's own files for states; no pickle ------------------
    def persist(self, persist_dir: str | Path) -> None:
        """Write the nodes, the settings and (when used) the state index to ``persist_dir``.

        A persist that fails (a full disk, an index folder another process is writing, ...) leaves what was there
        before loadable and unchanged: the new ``nodes.json`` and ``retriever.json`` are written to temporary files
        first, the state index is saved next (its own atomic commit), and only then do the two files replace the old
        ones (``os.replace``). :meth:`from_persist_dir` refuses a folder whose nodes do not match its state index.

        Raises:
            ValueError: ``persist_dir`` is a file or lies under one, its ``state_index`` folder holds files that are
                not an Overflow state index, or its ``nodes.json`` / ``retriever.json`` are not an OverflowRetriever's.
                Nothing is written.
        """
        folder = Path(persist_dir)
        _check_target(folder, with_index=self._index is not None)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"persist_dir: cannot create the folder {str(folder)!r} ({exc.strerror or exc}); nothing was written"
            ) from exc
        settings = {
            "format": _FORMAT,
            "version": _VERSION,
            "similarity_top_k": self.similarity_top_k,
            "whole_nodes": self.whole_nodes,
            "state_index": self._index is not None,
            "model": self._engine.name,
            "chunk_tokens": self._engine.config.chunk_tokens,
        }
        tag = uuid.uuid4().hex[:12]
        staged: list[Path] = []
        try:
            nodes = _stage(folder / NODES_FILE, json.dumps([doc_to_json(n) for n in self._nodes.values()]), tag, staged)
            meta = _stage(folder / RETRIEVER_FILE, json.dumps(settings, indent=2), tag, staged)
            if self._index is not None:
                self._index.save(folder / INDEX_DIR)  # atomic by itself: on failure the old index is still there
            # commit: the nodes, then the settings. An interruption after the index was saved can leave nodes and an
            # index that do not match; from_persist_dir checks the pairing and refuses such a folder
            os.replace(nodes, folder / NODES_FILE)
            os.replace(meta, folder / RETRIEVER_FILE)
            fsync_dir(folder)  # the renames, durable
        finally:
            for path in staged:
                path.unlink(missing_ok=True)

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | Path,
        engine: OPRM,
        *,
        similarity_top_k: int | None = None,
        use_state_index: bool | None = None,
        **kwargs: Any,
    ) -> OverflowRetriever:
        """Load what :meth:`persist` wrote; ``engine`` must be the model the retriever was built with.

        ``similarity_top_k``, ``use_state_index`` and ``whole_nodes`` default to the persisted values. With
        ``use_state_index=True`` on a retriever persisted without an index, the index is built; with ``False``, a
        persisted index is not loaded.

        Raises:
            ValueError: the folder holds no persisted retriever, or its nodes do not match its state index (the
                folder was changed by hand, or a persist by an older version was interrupted).
        """
        folder = Path(persist_dir)
        path = folder / RETRIEVER_FILE
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
            nodes = [json_to_doc(d) for d in json.loads((folder / NODES_FILE).read_text(encoding="utf-8"))]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"persist_dir {str(folder)!r}: expected a persisted OverflowRetriever ({exc})") from exc
        if not isinstance(settings, dict) or settings.get("format") != _FORMAT or settings.get("version") != _VERSION:
            got = settings if isinstance(settings, dict) else {}
            raise ValueError(
                f"{path}: expected format {_FORMAT!r} version {_VERSION}, "
                f"got {got.get('format')!r} version {got.get('version')!r}"
            )
        if settings.get("chunk_tokens") != engine.config.chunk_tokens:
            logger.warning(
                "%s was saved with chunk_tokens=%s, the engine uses %s: chunks will differ",
                path,
                settings.get("chunk_tokens"),
                engine.config.chunk_tokens,
            )
        saved_index = bool(settings.get("state_index"))
        want_index = saved_index if use_state_index is None else bool(use_state_index)
        if similarity_top_k is None:
            similarity_top_k = settings.get("similarity_top_k")
            if isinstance(similarity_top_k, bool) or not isinstance(similarity_top_k, int):
                raise ValueError(f"{path}: expected an integer similarity_top_k, got {similarity_top_k!r}")
        kwargs.setdefault("whole_nodes", bool(settings.get("whole_nodes", False)))
        # the constructor checks every argument (and builds the index when asked for one that was not persisted)
        retriever = cls(
            engine,
            nodes,
            similarity_top_k=similarity_top_k,
            use_state_index=want_index and not saved_index,
            **kwargs,
        )
        if want_index and saved_index:
            from overflow_core.index import StateIndex

            index = StateIndex.load(folder / INDEX_DIR, engine)
            problem = _mismatch(retriever._pieces, index)
            if problem is not None:
                index.close()
                raise ValueError(
                    f"persist_dir {str(folder)!r}: {NODES_FILE} does not match the state index ({problem}); the "
                    "folder was changed or a persist did not finish: persist the retriever again"
                )
            retriever._index = index
        return retriever


def _check_target(folder: Path, *, with_index: bool) -> None:
    """Refuse, before anything is written, a ``persist_dir`` that is a file or holds files that are not ours."""
    shown = str(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"persist_dir: expected a folder, {shown!r} is a file; nothing was written")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(
                    f"persist_dir: cannot create the folder {shown!r}: {str(parent)!r} is a file; nothing was written"
                )
            break
    if not folder.is_dir():
        return
    for name in (NODES_FILE, RETRIEVER_FILE):
        if (folder / name).exists() and not _is_ours(folder / RETRIEVER_FILE):
            raise ValueError(
                f"persist_dir: {shown!r} holds a {name} that is not an OverflowRetriever's (no {RETRIEVER_FILE} of "
                f"format {_FORMAT!r}); nothing was written (choose another folder, or move it away)"
            )
    index_dir = folder / INDEX_DIR
    if with_index and index_dir.exists():
        if not index_dir.is_dir():
            raise ValueError(
                f"persist_dir: {str(index_dir)!r} is a file, expected the state index folder; nothing was written"
            )
        from overflow_core.index import MARKER

        names = sorted(p.name for p in index_dir.iterdir())
        if names and MARKER not in names:
            raise ValueError(
                f"persist_dir: {str(index_dir)!r} holds files that are not an Overflow state index "
                f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); nothing was written (choose another "
                "folder, or move them away)"
            )


def _is_ours(path: Path) -> bool:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and settings.get("format") == _FORMAT


def _stage(target: Path, text: str, tag: str, staged: list[Path]) -> Path:
    """Write ``text`` durably to a temporary file next to ``target`` (recorded in ``staged``) and return its path."""
    tmp = target.with_name(f".{target.name}.tmp-{tag}")
    staged.append(tmp)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _mismatch(pieces: Pieces, index: Any) -> str | None:
    """Why the state index's chunks are not the chunks of ``pieces`` (None when they are): every chunk must be the
    text of its document at its recorded span, and the chunks of each document must cover all of its text."""
    documents = pieces.documents
    if index.documents != len(documents):
        return f"the index holds {index.documents} documents, the nodes make {len(documents)}"
    spans: dict[int, list[tuple[int, int]]] = {}
    for chunk in index.chunks:
        if not 0 <= chunk.doc_index < len(documents):
            return f"chunk {chunk.index} belongs to document {chunk.doc_index}, the nodes make {len(documents)}"
        doc = documents[chunk.doc_index]
        key = doc.metadata.get(_SOURCE_KEY)
        node = pieces.nodes[key].node_id if key in pieces.nodes else "?"
        if chunk.source != key or doc.text[chunk.start : chunk.end] != chunk.text:
            return f"node {node!r} reads {_short(doc.text)}, the index's chunk {chunk.index} {_short(chunk.text)}"
        spans.setdefault(chunk.doc_index, []).append((chunk.start, chunk.end))
    for i, doc in enumerate(documents):
        if not _covers(doc.text, spans.get(i, [])):
            key = doc.metadata.get(_SOURCE_KEY)
            node = pieces.nodes[key].node_id if key in pieces.nodes else "?"
            return f"node {node!r} reads {_short(doc.text)}, text the index's chunks do not hold"
    return None


def _covers(text: str, spans: list[tuple[int, int]]) -> bool:
    """Whether the character spans cover every non-space character of ``text``."""
    covered = 0
    for start, end in sorted(spans):
        if text[covered:start].strip():
            return False
        covered = max(covered, end)
    return not text[covered:].strip()


def _short(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")
