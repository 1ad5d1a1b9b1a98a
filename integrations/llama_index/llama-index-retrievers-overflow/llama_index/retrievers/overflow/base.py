"""OverflowRetriever: LlamaIndex nodes ranked by the model's own next-token entropy (OPRM), one engine call per query."""

from __future__ import annotations

import asyncio
import json
import logging
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
from llama_index.retrievers.overflow.nodes import question_of, ranking_to_nodes, to_pieces

from overflow_core import OPRM, Ranking

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
        """Write the nodes, the settings and (when used) the state index to ``persist_dir``."""
        folder = Path(persist_dir)
        folder.mkdir(parents=True, exist_ok=True)
        settings = {
            "format": _FORMAT,
            "version": _VERSION,
            "similarity_top_k": self.similarity_top_k,
            "whole_nodes": self.whole_nodes,
            "state_index": self._index is not None,
            "model": self._engine.name,
            "chunk_tokens": self._engine.config.chunk_tokens,
        }
        (folder / NODES_FILE).write_text(json.dumps([doc_to_json(n) for n in self._nodes.values()]), encoding="utf-8")
        if self._index is not None:
            self._index.save(folder / INDEX_DIR)
        (folder / RETRIEVER_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

    @classmethod
    def from_persist_dir(
        cls, persist_dir: str | Path, engine: OPRM, *, similarity_top_k: int | None = None, **kwargs: Any
    ) -> OverflowRetriever:
        """Load what :meth:`persist` wrote; ``engine`` must be the model the retriever was built with."""
        folder = Path(persist_dir)
        path = folder / RETRIEVER_FILE
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
            nodes = [json_to_doc(d) for d in json.loads((folder / NODES_FILE).read_text(encoding="utf-8"))]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"persist_dir {str(folder)!r}: expected a persisted OverflowRetriever ({exc})") from exc
        if settings.get("format") != _FORMAT or settings.get("version") != _VERSION:
            raise ValueError(
                f"{path}: expected format {_FORMAT!r} version {_VERSION}, "
                f"got {settings.get('format')!r} version {settings.get('version')!r}"
            )
        if settings.get("chunk_tokens") != engine.config.chunk_tokens:
            logger.warning(
                "%s was saved with chunk_tokens=%s, the engine uses %s: chunks will differ",
                path,
                settings.get("chunk_tokens"),
                engine.config.chunk_tokens,
            )
        index = None
        if settings.get("state_index"):
            from overflow_core.index import StateIndex

            index = StateIndex.load(folder / INDEX_DIR, engine)
        kwargs.setdefault("whole_nodes", bool(settings.get("whole_nodes", False)))
        retriever = cls(engine, nodes, similarity_top_k=similarity_top_k or int(settings["similarity_top_k"]), **kwargs)
        retriever._index = index
        return retriever
