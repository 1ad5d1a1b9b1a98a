"""The state index under hostile folders, damaged files, concurrent writers and crashes (issue #19, items 4-7 and 9).

Each test names the class of failure it guards against. Every one of them failed on main before the index format 2
(commit c66c051): user files overwritten or deleted, readers failing during a save, damage after load used silently, a
manifest reading outside its folder or crashing with RecursionError, one changed weight accepted, and index options of
``oprm ask`` silently ignored.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core import OPRM, IndexChangedError, IndexCorruptError, IndexMismatchError, InputError, StateIndexError
from overflow_core.cli import main
from overflow_core.index import MANIFEST, MARKER, StateIndex, storage
from overflow_core.testing import sample_documents

QUESTION = "What is the locker number of Alice Baker?"
DOCS = sample_documents(4, seed=7)
A, B = DOCS[:2], DOCS[2:]


@pytest.fixture(scope="module")
def e(engine: Any) -> Any:
    return engine("mamba2", max_batch_tokens=4096)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _sig(index: StateIndex) -> list[tuple[int, float]]:
    return [(s.chunk.index, round(s.entropy, 6)) for s in index.rank(QUESTION).scores]


def _loaded_sig(e: Any, docs: Any, folder: Path) -> list[tuple[int, float]]:
    """The ranking a reader of ``docs`` saved with one chunk per shard sees (the same batches, so the same floats)."""
    StateIndex.build(e, docs).save(folder, shard_bytes=1)
    return _sig(StateIndex.load(folder, e))


# -- item 4: only a new folder, an empty one or an Overflow index is written into ---------------------------------------
def _user_folders(tmp: Path) -> dict[str, Path]:
    cases = {}
    tmp.mkdir(parents=True)
    own_manifest = tmp / "own-manifest"
    own_manifest.mkdir()
    (own_manifest / "manifest.json").write_text('{"my": "project manifest"}')
    cases["a user's manifest.json"] = own_manifest
    shard_like = tmp / "shard-like"
    shard_like.mkdir()
    (shard_like / "states-0123456789ab-00000.safetensors").write_bytes(b"my data, named like a shard")
    cases["a user file named like a shard"] = shard_like
    both = tmp / "both"
    both.mkdir()
    (both / "manifest.json").write_text('{"checksum": "x"}')
    (both / "states-0123456789ab-00001.safetensors").write_bytes(b"keep")
    (both / "notes.txt").write_text("keep me")
    cases["a manifest, a shard-like file and notes"] = both
    lock_only = tmp / "lock-only"
    lock_only.mkdir()
    (lock_only / ".writer.lock").write_text("mine")
    (lock_only / "manifest.json.tmp-0123456789ab").write_text("mine too")
    cases["files named like the index's lock and temporary files"] = lock_only
    a_file = tmp / "a-file"
    a_file.write_text("a user's file")
    cases["--out is a file"] = a_file
    cases["--out under a file"] = a_file / "sub" / "idx"
    marker_only = tmp / "marker-and-notes"
    marker_only.mkdir()
    (marker_only / MARKER).write_text("not ours")
    (marker_only / "notes.txt").write_text("keep me")
    cases["an invalid marker and notes"] = marker_only
    return cases


def test_save_refuses_any_folder_that_is_not_an_index_and_leaves_it_byte_identical(e: Any, tmp_path: Path) -> None:
    index = StateIndex.build(e, A)
    cases = _user_folders(tmp_path / "user")
    before = _snapshot(tmp_path / "user")
    for what, target in cases.items():
        with pytest.raises(InputError, match=r"^path: ") as info:
            index.save(target)
        assert "\n" not in str(info.value), f"{what}: a one-line error"
    assert _snapshot(tmp_path / "user") == before, "every user file is untouched, none added"
    # a new folder, an empty one and an existing index are fine
    index.save(tmp_path / "new" / "idx")
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")
    index.save(tmp_path / "new" / "idx")
    assert storage.is_index(tmp_path / "empty") and storage.is_index(tmp_path / "new" / "idx")


def test_save_refuses_an_unwritable_folder_with_one_line(
    e: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = StateIndex.build(e, A)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the write itself fail as it does for a user

        def denied(path: Path, data: bytes) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(storage, "write_file", denied)
    try:
        with pytest.raises(InputError, match=r"cannot write the index into .*Permission denied"):
            index.save(folder)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_cli_refuses_bad_out_folders_before_loading_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(A[0][0])
    cases = _user_folders(tmp_path / "user")
    before = _snapshot(tmp_path / "user")
    for what, target in cases.items():
        for extra in ([], ["--append"]):
            code = main(["index", str(doc), "--out", str(target), "--model", str(tmp_path / "no-model"), *extra])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (what, extra, err)
    assert _snapshot(tmp_path / "user") == before


def test_cli_append_to_an_index_and_ask_in_summarize_mode(
    model_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = []
    for text, meta in DOCS:
        files.append(tmp_path / meta["source"])
        files[-1].write_text(text)
    model = ["--model", str(model_dir("mamba2"))]
    out = str(tmp_path / "idx")
    assert main(["index", *map(str, files[:2]), "--out", out, *model]) == 0
    first = int(capsys.readouterr().out.split()[1])
    assert main(["index", *map(str, files[2:]), "--out", out, "--append", *model]) == 0
    said = capsys.readouterr().out.split()
    added, total = int(said[1]), int(said[-4].strip("("))
    assert 0 < added < total == first + added, "--append says what it added and what the index holds"
    manifest = (Path(out) / "manifest.json").read_bytes()
    assert main(["index", str(files[2]), "--out", out, "--append", *model]) == 2, "a file indexed twice is refused"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already in the index" in err and "--replace" in err, err
    assert (Path(out) / "manifest.json").read_bytes() == manifest, "the refused append wrote nothing"
    assert main(["index", str(files[2]), "--out", out, "--append", "--replace", *model]) == 0
    said = capsys.readouterr().out.split()
    assert int(said[-4].strip("(")) == total, "--replace re-indexes the file in place of its old chunks"
    assert int(said[1]) > 0, "the re-indexed chunks are counted as indexed"
    assert main(["index", str(files[2]), "--out", out + "-typo", "--append", *model]) == 2, "no index there to add to"
    assert "found nothing" in capsys.readouterr().err and not Path(out + "-typo").exists()
    ask = ["ask", "-q", QUESTION, "--index", out, "--json", "--max-new-tokens", "3", *model]
    assert main([*ask, "--mode", "summarize"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["mode"] == "summarize", "--mode summarize with --index answers in summarize mode"
    assert len({s["chunk"]["source"] for s in answer["ranking"]["scores"]}) == 4, "--append kept the first files"
    assert main([*ask, "--mode", "vanilla"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vanilla" in err and "Traceback" not in err


# -- item 5: readers see the old or the new index, never an error, never a mix -----------------------------------------
def test_an_index_held_open_keeps_answering_from_its_generation_after_saves(e: Any, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    StateIndex.build(e, A).save(folder, shard_bytes=1)
    held = StateIndex.load(folder, e)
    expected = _sig(held)
    for docs in (B, A, B):  # each a full rebuild: every shard of the held generation is unreferenced afterwards
        with StateIndex.build(e, docs) as fresh:
            fresh.save(folder, shard_bytes=1)
    assert _sig(held) == expected, "the held index answers from the generation it loaded"
    assert [c.text for c in StateIndex.load(folder, e).chunks] == [c.text for c in e.chunk(B)]
    held.close()
    StateIndex.build(e, A).save(folder, shard_bytes=1)  # nobody holds the old generations now: they are deleted
    current = storage.current_generation(folder)
    assert [p.name for p in folder.glob("*.lease")] == [f"generation-{current}.lease"]


def test_without_leases_a_reader_hears_changed_underneath_not_corrupt(
    e: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where there are no file locks (Windows, some network filesystems), a save deletes what a reader still needs:
    that reader is told the index changed underneath it, not that it is corrupt."""
    monkeypatch.setattr(storage, "_flock", lambda: None)
    folder = tmp_path / "idx"
    StateIndex.build(e, A).save(folder, shard_bytes=1)
    held = StateIndex.load(folder, e)
    StateIndex.build(e, B).save(folder, shard_bytes=1)
    with pytest.raises(IndexChangedError, match=r"changed underneath you.*load it again"):
        held.rank(QUESTION)
    assert _sig(StateIndex.load(folder, e)) == _loaded_sig(e, B, tmp_path / "b")


def test_loads_during_saves_in_threads_see_old_or_new(e: Any, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    StateIndex.build(e, A).save(folder, shard_bytes=1)
    expected = [_loaded_sig(e, A, tmp_path / "a"), _loaded_sig(e, B, tmp_path / "b")]
    built = [StateIndex.build(e, A), StateIndex.build(e, B)]
    done = threading.Event()
    seen: list[Any] = []

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(expected.index(_sig(StateIndex.load(folder, e))))
            except Exception as exc:  # counted: any error fails the test
                seen.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for n in range(8):
            index = built[n % 2] if n < 2 else StateIndex.build(e, [A, B][n % 2])
            index.save(folder, shard_bytes=1)
            index.close()
    finally:
        done.set()
        for t in readers:
            t.join()
    errors = [s for s in seen if not isinstance(s, int)]
    assert not errors and len(seen) >= 2, f"{len(errors)} of {len(seen)} loads failed: {errors[:2]}"


def test_reader_and_writer_processes(model_dir: Any, tmp_path: Path) -> None:
    """Real processes: a writer process saves A and B alternately while this process loads and queries, and queries one
    index held open throughout. Every result is A's or B's, exactly."""
    from overflow_core.bench.index_crash import concurrent_readers

    total = concurrent_readers(str(model_dir("mamba2")), saves=4, readers=1, verbose=False)
    assert total["errors"] == 0 and total["mixed"] == 0, total["messages"][:3]
    assert total["loads"] >= 1 and total["held_queries"] >= 1


def test_kill_9_during_save_leaves_the_old_or_the_new_index(model_dir: Any) -> None:
    from overflow_core.bench.index_crash import crash_runs

    tally = crash_runs(str(model_dir("mamba2")), runs=3, seed=1, verbose=False, kill_within_s=0.15)
    assert tally["failed"] == 0, tally["messages"]
    assert tally["old"] + tally["new"] == 3


# -- item 6: damage after load is caught when the bytes are read --------------------------------------------------------
def test_bytes_flipped_after_load_with_mtime_kept_are_caught_at_read_time(e: Any, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    StateIndex.build(e, A).save(folder)  # one shard
    index = StateIndex.load(folder, e)
    expected = _sig(index)
    shard = next(folder.glob("*.safetensors"))
    st = shard.stat()
    original = shard.read_bytes()
    header = 8 + int.from_bytes(original[:8], "little")
    positions = [header + (len(original) - header - 1) * k // 14 for k in range(15)]  # 15 places in the states
    caught = 0
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x10
        shard.write_bytes(bytes(damaged))
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime a stat-based check would trust
        with pytest.raises(IndexCorruptError, match="CRC-32"):
            index.rank(QUESTION)
        caught += 1
    shard.write_bytes(original)
    assert caught == len(positions) and _sig(index) == expected


# -- item 7: the manifest cannot point outside, add fields, or nest without bound; every weight counts ------------------
def _rewrite(folder: Path, change: Any) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.pop("checksum")
    change(manifest)
    storage.commit(folder, manifest, manifest["generation"])  # a valid checksum: only the content is wrong


@pytest.mark.parametrize(
    "case",
    [
        "parent-path",
        "absolute-path",
        "symlink",
        "unknown-top",
        "unknown-chunk",
        "unknown-shard",
        "deep-valid",
        "deep-raw",
    ],
)
def test_hostile_manifests_are_refused(e: Any, tmp_path: Path, case: str) -> None:
    folder = tmp_path / "idx"
    StateIndex.build(e, A).save(folder)
    other = tmp_path / "other"
    other.mkdir()
    name = next(folder.glob("*.safetensors")).name
    (other / name).write_bytes((folder / name).read_bytes())  # a well-formed shard outside the folder
    expected = "leads outside|inside the index folder"
    if case == "parent-path":
        _rewrite(folder, lambda m: [s.update(file=f"../other/{name}") for s in m["shards"]])
    elif case == "absolute-path":
        _rewrite(folder, lambda m: [s.update(file=str(other / name)) for s in m["shards"]])
    elif case == "symlink":
        (folder / name).unlink()
        (folder / name).symlink_to(other / name)
    elif case == "unknown-top":
        _rewrite(folder, lambda m: m.update(extra_field=1))
        expected = "unknown field 'extra_field'"
    elif case == "unknown-chunk":
        _rewrite(folder, lambda m: m["chunks"][0].update(path="../x"))
        expected = r"unknown field 'path' in chunks\[0\]"
    elif case == "unknown-shard":
        _rewrite(folder, lambda m: m["shards"][0].update(offset=3))
        expected = r"unknown field 'offset' in shards\[0\]"
    elif case == "deep-valid":
        nested: Any = 1
        for _ in range(200):
            nested = [nested]
        _rewrite(folder, lambda m: m["chunks"][0]["metadata"].update(deep=nested))
        expected = "nests deeper than 64"
    else:
        (folder / MANIFEST).write_text('{"a":' + "[" * 200_000 + "]" * 200_000 + ', "checksum": "0"}')
        expected = "nests deeper"
    with pytest.raises(IndexCorruptError, match=expected):
        StateIndex.load(folder, e)


def test_one_changed_weight_changes_the_fingerprint(tmp_path: Path) -> None:
    """The bundled model's embedding has 524,288 values: the old fingerprint sampled 65,536 of them, so changing one
    value between two samples was accepted. Every value counts now, also after an in-place change in this process."""
    oprm = OPRM.from_pretrained()
    StateIndex.build(oprm, A[:1]).save(tmp_path / "idx")
    weight = oprm.model.get_input_embeddings().weight
    sampled = set(torch.linspace(0, weight.numel() - 1, 65536).long().tolist())
    position = next(i for i in range(1, weight.numel()) if i not in sampled)
    original = weight.view(-1)[position].item()
    with torch.no_grad():
        weight.view(-1)[position] += 1e-3  # one value of one embedding row
    with pytest.raises(IndexMismatchError, match="model weights"):
        StateIndex.load(tmp_path / "idx", oprm)
    with torch.no_grad():
        weight.view(-1)[position] = original
    assert len(StateIndex.load(tmp_path / "idx", oprm)) == len(StateIndex.build(oprm, A[:1]))


def test_errors_are_state_index_errors_not_tracebacks(e: Any, tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    StateIndex.build(e, A).save(folder)
    (folder / MANIFEST).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(StateIndexError):
        StateIndex.load(folder, e)
