"""The state index: each chunk's recurrent state after ``prefix + chunk + infix``, computed once and reused for any question.

A prompt is ``prefix + chunk + infix + question + suffix`` and everything before the question is question-independent
(see :mod:`overflow_core.prompting`). A recurrent model's state after that part has a fixed size whatever the chunk's length,
so a corpus can be indexed once, like embeddings in a vector store. A question then costs only its own tokens
(``question + suffix``) for every chunk instead of the whole prompt: for 512-token chunks and a 20-token question, about
25 times fewer tokens through the model.

The steps, each done by the module that owns it:

1. **build / add**: chunk the documents (:mod:`~overflow_core.chunking`), prefill every ``prefix + chunk + infix`` in
   bounded micro-batches (:mod:`~overflow_core.prefill`) and keep each row's state.
2. **save / load**: states go to safetensors shards, everything else (chunks, fingerprints of the model and tokenizer,
   the chunking and prompt settings, each shard's sha256 and each row's CRC-32) to ``manifest.json``, in a folder
   marked as an index (:data:`MARKER`). A save writes a new generation (new shard names) and replacing
   ``manifest.json`` with ``os.replace`` is its single atomic commit; readers hold a lease on the generation they
   read, so a save never deletes files a reader still needs. Loading refuses an index made with another model,
   tokenizer or settings (:class:`~overflow_core.errors.IndexMismatchError`) or a malformed one
   (:class:`~overflow_core.errors.IndexCorruptError`); each row's bytes are checked when a query reads them. No
   pickles: tensors in safetensors, the rest in JSON. See :mod:`overflow_core.index.storage`.
3. **query**: stored states are read shard by shard (safetensors memory-maps them, so an index bigger than RAM works),
   stacked into batches of at most ``max_batch_tokens`` (question tokens per row, plus the state's tokens when it keeps
   attention keys/values), read ahead in a background thread, and every row is fed the same question tokens, so no
   padding is needed. Scoring, selection and decoding are the engine's own.

Results equal the full-prefill engine's (:meth:`OPRM.rank <overflow_core.engine.OPRM.rank>`,
:meth:`OPRM.answer <overflow_core.engine.OPRM.answer>`) within float tolerance: the same chunks, the same ranking, the same
greedy tokens. This module knows nothing about model families: rows of state are the backend's business.
"""

from overflow_core.index.state_index import StateIndex
from overflow_core.index.storage import DEFAULT_SHARD_BYTES, FORMAT, FORMAT_VERSION, LOCK, MANIFEST, MARKER

__all__ = ["DEFAULT_SHARD_BYTES", "FORMAT", "FORMAT_VERSION", "LOCK", "MANIFEST", "MARKER", "StateIndex"]
