"""The state index: equal to the full-prefill engine for every backend, persistent, and strict about what it loads.

Tolerances: the index feeds ``question + suffix`` on top of a stored state while the engine prefills the whole prompt in
one left-padded batch, so the two run different kernels over different batch shapes. In float32 they agree to about 1e-6;
``ATOL = 1e-4`` leaves room for that and is still far below any real difference (a wrong state moves logits by 0.1 or more,
see ``shared/RECURRENT_CACHES.md``). The tiny random models rank chunks by entropies that can be tied to within 1e-6, so
rankings are compared rank by rank on the engine's own entropies (a swap of two tied chunks passes, anything else fails),
and decoding is checked token by token against the slow oracle, which does not depend on ties.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core import (
    OPRM,
    ConfigError,
    IndexBusyError,
    IndexConflictError,
    IndexCorruptError,
    IndexMismatchError,
    InputError,
)
from overflow_core.index import LOCK, MANIFEST, MARKER, StateIndex
from overflow_core.reference import reference_greedy, reference_last_logits
from overflow_core.testing import FAMILIES, RANKING_ATOL, assert_same_ranking, make_tokenizer_dir, sample_documents

ATOL = RANKING_ATOL
QUESTION = "What is the locker number of Alice Baker?"
OTHER_QUESTION = "Where does the ship Orbit dock?"
DOCS = sample_documents(3, seed=0)
BUDGET = 800  # max_batch_tokens: several micro-batches of 6-8 rows of different lengths, in prefill and in queries


@pytest.fixture(scope="module")
def tuned(engine: Any) -> Any:
    """``tuned(family)``: an engine whose prefill and query both run in several micro-batches."""
    return lambda family: engine(family, max_batch_tokens=BUDGET)


@pytest.mark.parametrize("family", FAMILIES)
def test_index_matches_full_prefill(tuned: Any, family: str, tmp_path: Path) -> None:
    e = tuned(family)
    index = StateIndex.build(e, DOCS)
    expected = e.rank(QUESTION, DOCS)
    assert_same_ranking(expected, index.rank(QUESTION))  # states in memory
    index.save(tmp_path / "idx", shard_bytes=4 * int(index.bytes_per_chunk))  # several shards
    loaded = StateIndex.load(tmp_path / "idx", e)
    assert len(list((tmp_path / "idx").glob("*.safetensors"))) > 1
    e.state_cache.clear()
    got = loaded.rank(QUESTION)  # states streamed from the shards
    assert_same_ranking(expected, got)
    assert_same_ranking(e.rank(OTHER_QUESTION, DOCS), loaded.rank(OTHER_QUESTION))

    # the state the index kept for the best chunk continues the full prompt exactly: logits, then greedy tokens
    assert got.best is not None
    prompt = e.prompt(got.best.chunk.ids, e.encode_question(QUESTION))
    cached = e.state_cache.longest_prefix(prompt)
    assert cached is not None and cached.ids == tuple(prompt), "index.rank must cache the best chunk's state"
    assert torch.allclose(cached.logits[0].float(), reference_last_logits(e.model, prompt), atol=ATOL), (
        "stored state + question must give the logits of one plain forward over the full prompt"
    )
    generation = e.complete(prompt, max_new_tokens=6)
    list(generation)
    assert generation.reused_tokens == len(prompt)  # type: ignore[attr-defined]
    assert generation.token_ids == reference_greedy(e.model, prompt, 6, e.stop_ids)

    # answer(): the engine's decoding, from the same chunk, gives the same tokens
    answer = loaded.answer(QUESTION, max_new_tokens=6)
    assert answer.chunk is None or answer.chunk.chunk.index == got.best.chunk.index
    alone = e.answer(QUESTION, [(got.best.chunk.text, dict(got.best.chunk.metadata))], max_new_tokens=6)
    assert (answer.text, answer.not_found, answer.usage.generated_tokens) == (
        alone.text, alone.not_found, alone.usage.generated_tokens
    )  # fmt: skip


def test_not_found_prob_criterion_ranks_alike_in_the_engine_and_the_index() -> None:
    """``criterion="not_found_prob"``: both paths rank answering chunks by the probability of starting "not found",
    lowest first, abstainers last, and the index keeps the state of the chunk it ranks first. The bundled model, whose
    probabilities spread (a random model's are all near 1 / vocabulary), over the whole demo corpus (36 chunks, of which
    v10 answers from 3 for this question and abstains on the rest)."""
    from overflow_core.demo import CORPUS_DIR

    docs = [(f.read_text(), {"source": f.name}) for f in sorted(CORPUS_DIR.glob("*.txt"))]
    question = json.loads((CORPUS_DIR / "questions.json").read_text())[0]["question"]
    e = OPRM.from_pretrained(criterion="not_found_prob", max_batch_tokens=2000)  # several micro-batches
    index = StateIndex.build(e, docs)
    expected, got = e.rank(question, docs), index.rank(question)
    by_chunk = {s.chunk.index: s for s in expected.scores}
    for s in got.scores:
        assert abs(s.not_found_prob - by_chunk[s.chunk.index].not_found_prob) <= ATOL
        assert s.idk == by_chunk[s.chunk.index].idk
    for ranking in (expected, got):
        keys = [(s.idk, s.not_found_prob) for s in ranking.scores]
        assert all(a[0] < b[0] or (a[0] == b[0] and a[1] <= b[1] + ATOL) for a, b in itertools.pairwise(keys))
        assert all(s.score == pytest.approx(-s.not_found_prob - 1000.0 * s.idk) for s in ranking.scores)
    answering = [s.not_found_prob for s in got.scores if not s.idk]
    assert len(answering) > 1 and answering[-1] - answering[0] > 0.01, "the fixture must set answering chunks apart"
    assert got.best is not None and got.best.chunk.index == expected.scores[0].chunk.index
    prompt = e.prompt(got.best.chunk.ids, e.encode_question(question))
    cached = e.state_cache.longest_prefix(prompt)
    assert cached is not None and cached.ids == tuple(prompt), "index.rank must cache its best chunk's state"


def test_stream_and_summarize_match_the_engine(tuned: Any) -> None:
    e = tuned("mamba2")
    index = StateIndex.build(e, DOCS)
    answer = index.answer(QUESTION, max_new_tokens=6)
    assert "".join(index.stream(QUESTION, max_new_tokens=6)).strip() == answer.text
    assert answer.mode == "oprm" and answer.usage.generated_tokens > 0
    parts = index.answer(QUESTION, mode="summarize", k=2, max_new_tokens=4)
    assert parts.mode == "summarize" and len(parts.parts) == 2
    # the top two in document order, as summarize joins them
    top = sorted((s.chunk for s in index.rank(QUESTION, k=2).scores), key=lambda c: c.index)
    alone = e.answer(QUESTION, [c.text for c in top], mode="summarize", k=2, max_new_tokens=4)
    assert parts.parts == alone.parts, "each part is decoded from its chunk's state as the engine decodes it"


@pytest.mark.parametrize("family", ["mamba2", "mamba", "bamba"])
def test_query_feeds_only_the_question(tuned: Any, family: str) -> None:
    """The forward passes of a query see ``question + suffix`` per chunk and nothing else (the point of the index)."""
    e = tuned(family)
    index = StateIndex.build(e, DOCS)
    seen: list[int] = []

    def count(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        assert ids is not None, "a forward without input_ids"
        seen.append(int(ids.numel()))

    tail = len(e.encode_question(QUESTION)) + len(e.prompt_ids.suffix)
    # the not-found check teacher-forces each tokenization of the phrase but its last token, on every row (a random
    # model gives every first token a probability far above selection.PURSUE)
    phrase = sum(len(s) - 1 for s in e.idk_ids.sequences)
    handle = e.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        ranking = index.rank(QUESTION)
    finally:
        handle.remove()
    assert sum(seen) == len(index) * (tail + phrase)
    assert ranking.usage.prompt_tokens == ranking.usage.padded_tokens == len(index) * tail
    context = sum(len(e.context_prompt(c.ids)) for c in index.chunks)
    assert ranking.usage.reused_tokens == context
    full = e.rank(QUESTION, DOCS)
    assert full.usage.prompt_tokens == context + len(index) * tail  # what the index saves per question
    answer = index.answer(QUESTION, max_new_tokens=4)
    assert answer.usage.reused_tokens == context and answer.usage.prompt_tokens == len(index) * tail


def test_save_load_round_trip(tuned: Any, tmp_path: Path) -> None:
    e = tuned("mamba2")
    docs = [*DOCS, ("A note with odd metadata. " * 4, {"source": "note.txt", "when": object(), "page": 3})]
    index = StateIndex.build(e, docs)
    index.save(tmp_path / "idx", shard_bytes=1)  # one chunk per shard
    loaded = StateIndex.load(tmp_path / "idx", e)
    assert len(loaded) == len(index) and loaded.documents == index.documents == 4
    assert loaded.nbytes == index.nbytes and loaded.bytes_per_chunk == index.bytes_per_chunk > 0
    for a, b in zip(index.chunks, loaded.chunks, strict=True):
        assert (a.index, a.doc_index, a.text, a.start, a.end, a.ids, a.source) == (
            b.index, b.doc_index, b.text, b.start, b.end, b.ids, b.source
        )  # fmt: skip
    assert loaded.chunks[-1].metadata == {"source": "note.txt", "page": 3}  # non-JSON metadata is dropped
    assert len(list((tmp_path / "idx").glob("*.safetensors"))) == len(index)
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["settings"]["chunk_tokens"] == e.config.chunk_tokens
    assert {"model", "tokenizer", "shards", "chunks", "format_version", "checksum"} <= set(manifest)
    assert_same_ranking(index.rank(QUESTION), loaded.rank(QUESTION))
    assert loaded.path == tmp_path / "idx" and "chunks=" in repr(loaded)
    allowed = (".safetensors", ".json", ".lease")  # a lease file is JSON too (the generation's shard list)
    no_pickle = [p for p in (tmp_path / "idx").iterdir() if p.suffix not in allowed and p.name not in (LOCK, MARKER)]
    assert not no_pickle, f"only safetensors shards and JSON files belong in an index, found {no_pickle}"


def test_add_and_remove_equal_a_fresh_build(tuned: Any, tmp_path: Path) -> None:
    e = tuned("mamba2")
    index = StateIndex.build(e, DOCS[:1])
    index.save(tmp_path / "idx")
    index = StateIndex.load(tmp_path / "idx", e)  # disk-backed chunks, then in-memory ones
    index.add(DOCS[1:])
    assert index.chunks == e.chunk(DOCS)
    assert_same_ranking(e.rank(QUESTION, DOCS), index.rank(QUESTION))
    removed = index.remove("doc1.txt")
    rest = [DOCS[0], DOCS[2]]
    assert removed == len(e.chunk(DOCS[1:2])) and index.documents == 2
    assert index.chunks == e.chunk(rest)
    assert_same_ranking(e.rank(QUESTION, rest), index.rank(QUESTION))
    assert index.remove("no-such-source.txt") == 0
    assert index.remove(lambda c: c.doc_index == 1 and c.start == 0) == 1
    index.save(tmp_path / "idx")
    again = StateIndex.load(tmp_path / "idx", e)
    assert again.chunks == index.chunks
    assert_same_ranking(index.rank(QUESTION), again.rank(QUESTION))


def test_adding_a_source_the_index_holds_is_refused_or_replaces_it(tuned: Any, tmp_path: Path) -> None:
    """Adding doc1.txt twice put its chunks in the index twice (a top-k of copies); now it is refused, or with
    ``replace_sources=True`` re-indexed: the result equals a fresh build, and a failure mid-way leaves the index whole."""
    from overflow_core import DuplicateSourceError

    e = tuned("mamba2")
    index = StateIndex.build(e, DOCS)
    before = [s.chunk for s in index._slots]
    with pytest.raises(DuplicateSourceError, match=r"'doc1.txt' is already in the index.*replace_sources=True") as err:
        index.add([DOCS[1]])
    assert err.value.sources == ("doc1.txt",) and [s.chunk for s in index._slots] == before
    edited = (DOCS[1][0] + " The badge number of Alice Baker is 7781.", DOCS[1][1])
    expected = [DOCS[0], DOCS[2], edited]  # the re-indexed document goes last, as a fresh add would put it
    original_compute = index._compute

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("out of memory")

    index._compute = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        index.add([edited], replace_sources=True)
    assert [s.chunk for s in index._slots] == before, "a failed re-index must not have removed the old chunks"
    index._compute = original_compute  # type: ignore[method-assign]
    index.add([edited], replace_sources=True)
    assert index.chunks == e.chunk(expected) and index.documents == 3
    assert len(index) < len(before) + len(e.chunk([edited])), "the old chunks of doc1.txt are gone"
    assert_same_ranking(e.rank(QUESTION, expected), index.rank(QUESTION))


def test_saving_again_rewrites_only_what_changed(tuned: Any, tmp_path: Path) -> None:
    e = tuned("mamba2")
    folder = tmp_path / "idx"
    StateIndex.build(e, DOCS[:2]).save(folder)
    before = {p.name for p in folder.glob("*.safetensors")}
    index = StateIndex.load(folder, e)
    index.add(DOCS[2:])
    index.save(folder)
    after = {p.name for p in folder.glob("*.safetensors")}
    assert before < after, "an untouched shard is kept; the added chunks go to a new one"
    index.remove("doc0.txt")
    index.save(folder)
    final = {p.name for p in folder.glob("*.safetensors")}
    assert not before & final, "a shard with removed chunks is rewritten, and the old file deleted"
    assert StateIndex.load(folder, e).chunks == e.chunk(DOCS[1:])


def test_other_model_tokenizer_or_settings_rejected(tuned: Any, model_dir: Any, tmp_path: Path) -> None:
    e = tuned("mamba2")
    StateIndex.build(e, DOCS[:1]).save(tmp_path / "idx")

    def refused(other: OPRM) -> str:
        with pytest.raises(IndexMismatchError) as info:
            StateIndex.load(tmp_path / "idx", other)
        return str(info.value)

    assert "model family: index 'mamba2', engine 'mamba'" in refused(tuned("mamba"))
    changed = copy.deepcopy(e.model)
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.01)
    assert "model weights" in refused(OPRM(changed, e.tokenizer, e.config))
    assert "model dtype: index float32, engine bfloat16" in refused(
        OPRM.from_pretrained(model_dir("mamba2"), dtype="bfloat16")
    )
    from transformers import AutoTokenizer

    other_tok = AutoTokenizer.from_pretrained(str(make_tokenizer_dir(tmp_path / "tok2", seed=11)))
    assert "tokenizer:" in refused(OPRM(e.model, other_tok, e.config))
    assert "chunk_tokens: index 48, engine 32" in refused(OPRM.from_pretrained(model_dir("mamba2"), chunk_tokens=32))
    message = refused(OPRM.from_pretrained(model_dir("mamba2"), not_found="unknown"))
    assert "not_found: index 'not found', engine 'unknown'" in message and "Rebuild" in message
    # the same model under another name, with other query-time settings, is the same index
    same = OPRM.from_pretrained(model_dir("mamba2"), max_batch_tokens=64, criterion="max_prob")
    assert len(StateIndex.load(tmp_path / "idx", same)) == len(e.chunk(DOCS[:1]))


def test_other_format_version_rejected(tuned: Any, tmp_path: Path) -> None:
    from overflow_core.index.storage import write_manifest as _write_manifest

    e = tuned("mamba2")
    StateIndex.build(e, DOCS[:1]).save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    _write_manifest(tmp_path / "idx", {**manifest, "format_version": 99}, "0" * 12)  # a valid checksum
    with pytest.raises(IndexMismatchError, match="version 99"):
        StateIndex.load(tmp_path / "idx", e)


def _shard(folder: Path) -> Path:
    return sorted(folder.glob("*.safetensors"))[0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest-truncate", "manifest-edit", "no-manifest"])
def test_damaged_index_rejected(tuned: Any, tmp_path: Path, damage: str) -> None:
    e = tuned("mamba2")
    folder = tmp_path / "idx"
    StateIndex.build(e, DOCS[:2]).save(folder, shard_bytes=1)
    shard, manifest = _shard(folder), folder / MANIFEST
    if damage == "flip":  # found when the row is read (or by verify), not at load: load reads no state bytes
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        loaded = StateIndex.load(folder, e)
        with pytest.raises(IndexCorruptError, match=f"shard {shard.name} sha256"):
            loaded.verify()
        expected = f"shard {shard.name} row 0: CRC-32"
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
        expected = "truncated"
    elif damage == "delete":
        shard.unlink()
        expected = "missing"
    elif damage == "manifest-truncate":
        manifest.write_text(manifest.read_text()[:-50])
        expected = "truncated or not JSON"
    elif damage == "manifest-edit":
        manifest.write_text(manifest.read_text().replace('"doc0.txt"', '"doc9.txt"'))
        expected = "checksum mismatch"
    else:
        manifest.unlink()
        expected = "found none"
    with pytest.raises(IndexCorruptError, match=expected):
        StateIndex.load(folder, e).rank(QUESTION)


def test_loading_a_folder_that_is_not_an_index_says_so_and_where_the_index_is(tuned: Any, tmp_path: Path) -> None:
    """A folder with a manifest.json of the user's own was called corrupt; a LlamaIndex persist folder (its index in
    ``state_index/``) was called 'not a state index' with no hint of the subfolder."""
    e = tuned("mamba2")
    own = tmp_path / "mine"
    own.mkdir()
    (own / MANIFEST).write_text('{"name": "my web app", "icons": []}')
    with pytest.raises(IndexCorruptError, match=f"no {MARKER} marker: not a state index"):
        StateIndex.load(own, e)
    persisted = tmp_path / "persist"
    StateIndex.build(e, DOCS[:1]).save(persisted / "state_index")
    with pytest.raises(IndexCorruptError, match=r"the state index is in the subfolder .*state_index"):
        StateIndex.load(persisted, e)
    folder = tmp_path / "idx"
    StateIndex.build(e, DOCS[:1]).save(folder)
    (folder / MANIFEST).write_text((folder / MANIFEST).read_text()[:-20])
    with pytest.raises(IndexCorruptError, match="truncated or not JSON") as err:
        StateIndex.load(folder, e)
    assert "marker" not in str(err.value), "a real index whose manifest is damaged is corrupt, not foreign"


def test_shard_damaged_after_loading_is_caught_at_query_time(tuned: Any, tmp_path: Path) -> None:
    e = tuned("mamba2")
    folder = tmp_path / "idx"
    StateIndex.build(e, DOCS[:2]).save(folder)
    index = StateIndex.load(folder, e)
    index.rank(QUESTION)
    shard = _shard(folder)
    data = bytearray(shard.read_bytes())
    data[-8] ^= 0x01  # last bytes: a state value, not the header
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="CRC-32"):
        index.rank(QUESTION)


@pytest.mark.parametrize("where", ["shard", "manifest"])
def test_interrupted_save_leaves_the_previous_index(
    tuned: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    import overflow_core.index.storage as index_module

    e = tuned("mamba2")
    folder = tmp_path / "idx"
    old = StateIndex.build(e, DOCS[:1])
    old.save(folder)
    new = StateIndex.build(e, DOCS)
    calls = 0
    real_file, real_commit = index_module.write_file, index_module.commit

    def crash_mid_shard(path: Path, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            path.write_bytes(data[: len(data) // 2])  # half a file on disk, then the "crash"
            raise OSError("simulated crash while writing a shard")
        real_file(path, data)

    def crash_in_manifest(target: Path, manifest: Any, tag: str) -> None:
        (target / f"{MANIFEST}.tmp-{tag}").write_text(json.dumps(manifest)[:100])
        raise OSError("simulated crash while writing the manifest")

    if where == "shard":
        monkeypatch.setattr(index_module, "write_file", crash_mid_shard)
    else:
        monkeypatch.setattr(index_module, "commit", crash_in_manifest)
    with pytest.raises(OSError, match="simulated crash"):
        new.save(folder, shard_bytes=1)
    survivor = StateIndex.load(folder, e)
    assert survivor.chunks == old.chunks
    assert_same_ranking(e.rank(QUESTION, DOCS[:1]), survivor.rank(QUESTION))
    monkeypatch.setattr(index_module, "write_file", real_file)
    monkeypatch.setattr(index_module, "commit", real_commit)
    survivor.close()  # the old generation is read by nobody now (both handles closed): the next save may delete it
    old.close()
    new.save(folder, shard_bytes=1)
    assert StateIndex.load(folder, e).chunks == new.chunks
    leftovers = sorted(p.name for p in folder.iterdir() if p.name not in (LOCK, MARKER, MANIFEST))
    assert len(leftovers) == len(new) + 1, f"leftovers of the failed save are gone after the next one: {leftovers}"


def test_errors_name_what_was_expected(tuned: Any, tmp_path: Path) -> None:
    e = tuned("mamba2")
    index = StateIndex.build(e, DOCS[:1])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds other files"):
        index.save(tmp_path / "notes")
    with pytest.raises(InputError, match="is not a folder"):
        StateIndex.load(tmp_path / "nowhere", e)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file"):
        index.save(tmp_path / "file")
    with pytest.raises(InputError, match="question"):
        index.rank("  ")
    with pytest.raises(ConfigError, match="k: expected a positive"):
        index.rank(QUESTION, k=0)
    with pytest.raises(ConfigError, match="mode"):
        index.answer(QUESTION, mode="vanilla")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown decoding option"):
        index.answer(QUESTION, beams=2)
    with pytest.raises(InputError, match="source: expected"):
        index.remove(3)  # type: ignore[arg-type]
    index.remove(lambda c: True)
    assert len(index) == 0 and index.bytes_per_chunk == 0
    with pytest.raises(InputError, match="empty index"):
        index.answer(QUESTION)


def test_build_shows_progress(tuned: Any, capsys: pytest.CaptureFixture[str]) -> None:
    e = tuned("mamba2")
    via_engine = e.index(DOCS[:1], progress=True)
    assert isinstance(via_engine, StateIndex) and "indexing" in capsys.readouterr().err


def test_a_second_writer_cannot_silently_drop_the_first_writers_commit(tuned: Any, tmp_path: Path) -> None:
    """Two handles on one folder: the first commit wins; the stale second one is refused and the folder stays whole."""
    e = tuned("mamba2")
    folder = tmp_path / "idx"
    StateIndex.build(e, DOCS[:1]).save(folder)
    first, second = StateIndex.load(folder, e), StateIndex.load(folder, e)
    first.add(DOCS[1:2])
    first.save(folder)
    second.add(DOCS[2:3])
    with pytest.raises(IndexConflictError, match="changed by another writer"):
        second.save(folder)
    loaded = StateIndex.load(folder, e)  # every shard still there, checksums match
    assert loaded.chunks == e.chunk(DOCS[:2])
    assert_same_ranking(e.rank(QUESTION, DOCS[:2]), loaded.rank(QUESTION))
    first.remove("doc0.txt")  # the writer that committed last can go on
    first.save(folder)
    assert StateIndex.load(folder, e).chunks == e.chunk(DOCS[1:2])


def test_save_waits_for_the_writer_lock_and_gives_up_cleanly(tuned: Any, tmp_path: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    import os

    e = tuned("mamba2")
    folder = tmp_path / "idx"
    index = StateIndex.build(e, DOCS[:1])
    index.save(folder)
    manifest = (folder / MANIFEST).read_bytes()
    index.add(DOCS[1:2])
    fd = os.open(folder / LOCK, os.O_RDWR)  # another writer (a separate open file: flock excludes it like a process)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(IndexBusyError, match="another writer"):
            index.save(folder, lock_timeout_s=0.2)
        assert (folder / MANIFEST).read_bytes() == manifest, "a refused save writes nothing"
    finally:
        os.close(fd)
    index.save(folder, lock_timeout_s=0.2)
    assert StateIndex.load(folder, e).chunks == e.chunk(DOCS[:2])



def test_index_built_by_other_chunking_rules_is_refused(tuned: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Indexes record the chunker's version: chunks cut by other rules (e.g. the lossy chunker before #19) differ from
    what this engine would make of the same documents, so such an index is refused, naming the difference."""
    import overflow_core.index.fingerprint as fingerprint

    e = tuned("mamba2")
    StateIndex.build(e, DOCS[:1]).save(tmp_path / "idx")
    monkeypatch.setattr(fingerprint, "CHUNKER_VERSION", fingerprint.CHUNKER_VERSION + 1)
    with pytest.raises(IndexMismatchError, match="chunker"):
        StateIndex.load(tmp_path / "idx", e)


def test_index_queries_check_k_and_seed_like_the_engine(tuned: Any) -> None:
    e = tuned("mamba2")
    index = StateIndex.build(e, DOCS[:1])
    for bad in ("3", 0, 2.5, True):
        with pytest.raises(ConfigError, match=r"^k: expected"):
            index.rank(QUESTION, k=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^seed: expected"):
        index.answer(QUESTION, seed=2**70)


def _feed_rows(model: Any) -> tuple[list[tuple[int, int]], Any]:
    """(rows, tokens) of every forward pass of ``model`` (a forward pre-hook; remove it with the returned handle)."""
    rows: list[tuple[int, int]] = []

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows.append((int(ids.shape[0]), int(ids.shape[1])))

    return rows, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", ["mamba2", "bamba"])
def test_query_batches_count_stored_tokens_only_when_the_state_grows(engine: Any, family: str) -> None:
    """A fixed-size recurrent state (mamba2) costs a query's feed nothing for the tokens it stands for, so a batch holds
    ``budget // tail`` rows; a hybrid's state (bamba: attention keys/values) still counts its stored tokens. Under the
    old rule (stored tokens + tail for every family) mamba2 would need several times more feeds."""
    budget = 500
    e = engine(family, max_batch_tokens=budget)
    index = StateIndex.build(e, DOCS)
    tail = len(e.encode_question(QUESTION)) + len(e.prompt_ids.suffix)
    stored = max(s.tokens for s in index._slots)
    rows, handle = _feed_rows(e.model)
    try:
        index.rank(QUESTION)
    finally:
        handle.remove()
    widest = max(r for r, width in rows if width == tail)  # the question feeds (not the not-found check's)
    if family == "mamba2":
        assert widest == min(len(index), budget // tail) > 3 * (budget // (stored + tail))
    else:
        assert widest <= budget // tail and widest * (min(s.tokens for s in index._slots) + tail) <= budget


@pytest.mark.parametrize("family", FAMILIES)
def test_index_matches_full_prefill_over_many_query_batches(engine: Any, family: str) -> None:
    """Queries of fixed-size states in micro-batches of a few rows (budget 3 tails) give the engine's ranking."""
    e = engine(family, max_batch_tokens=90)
    tail = len(e.encode_question(QUESTION)) + len(e.prompt_ids.suffix)
    assert 90 // tail < len(e.chunk(DOCS)) // 3, "the budget must split the query into several batches"
    index = StateIndex.build(e, DOCS)
    assert_same_ranking(e.rank(QUESTION, DOCS), index.rank(QUESTION))


def test_read_ahead_overlaps_keeps_order_surfaces_errors_and_closes() -> None:
    import threading

    from overflow_core.index.state_index import _read_ahead

    second_started = threading.Event()
    closed: list[str] = []

    def source() -> Any:
        try:
            yield 1
            second_started.set()
            yield 2
            yield 3
            raise IndexCorruptError("row 4 is corrupt")
        finally:
            closed.append(threading.current_thread().name)

    got = []
    with pytest.raises(IndexCorruptError, match="row 4"):
        for item in _read_ahead(source()):
            if item == 1:  # without read-ahead the second item is not made until this body returns: the wait fails
                assert second_started.wait(timeout=10), "the next item is made while the caller works on this one"
            got.append(item)
    assert got == [1, 2, 3] and len(closed) == 1

    closed.clear()
    second_started.clear()
    stream = _read_ahead(source())
    assert next(stream) == 1
    stream.close()  # an abandoned iteration closes its source (and so an open shard)
    assert closed and closed[0].startswith("overflow-index-read")
