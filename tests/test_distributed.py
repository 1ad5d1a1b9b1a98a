"""Scale-out on a local Ray (``ray.init(num_cpus=2)``): a build with 2 workers, a query over 2 shard actors, a worker
killed mid-build; each compared with the same index built and queried on one machine.

Tolerances: a distributed build prefills the chunks in other micro-batches (other padding) than one machine does, so a
stored row may differ in float32 rounding (about 1e-7); ``ATOL = 1e-5`` on the states is far below what a wrong row
or a shifted chunk gives (the test shows two chunks' states differ by more than 1000 times that). Rankings are compared
with :func:`overflow_core.testing.assert_same_ranking` (ties within ``RANKING_ATOL`` may swap), answers token for token.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core import OPRM
from overflow_core.cli import main
from overflow_core.distributed import DistributedIndex, build_index
from overflow_core.index import MANIFEST, StateIndex, storage
from overflow_core.testing import assert_same_ranking, sample_documents

try:
    import ray.data  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray[data] is not installed: pip install -e '.[ray]' runs it")

ATOL = 1e-5
DOCS = sample_documents(4, seed=1)
QUESTIONS = ("What is the locker number of Alice Baker?", "Where does the ship Orbit dock?")


def test_missing_ray_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError, as without the package
    (tmp_path / "a.txt").write_text("Alice Baker's locker number is 4412.")
    assert main(["index", str(tmp_path / "a.txt"), "--out", str(tmp_path / "idx"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install -e '.[ray]'" in err, err
    assert not (tmp_path / "idx").exists(), "nothing is written before ray is found"


def test_object_store_url_is_refused_in_one_line(tmp_path: Path) -> None:
    from overflow_core.errors import InputError

    with pytest.raises(InputError, match="mount it") as err:
        build_index(["text"], "s3://bucket/corpus.idx")
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def ray_local() -> Any:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # sockets need a short path
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(model_dir: Any, ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = model_dir("mamba2", max_batch_tokens=400)
    engine = OPRM.from_pretrained(folder)
    root = tmp_path_factory.mktemp("dist")
    files = []
    for n, (text, _) in enumerate(DOCS):
        files.append(root / f"doc{n}.txt")
        files[-1].write_text(text)
    argv = ["index", *map(str, files), "--out", str(root / "dist"), "--ray", "--workers", "2", "--model", str(folder)]
    assert main(argv) == 0  # the CLI joins the running local Ray
    docs = [(text, {"source": str(f)}) for (text, _), f in zip(DOCS, files, strict=True)]
    local = StateIndex.build(engine, docs)  # the same sources as the CLI's documents
    local.save(root / "local")
    return {"model": folder, "engine": engine, "root": root, "local": local, "docs": docs}


def _rows(folder: Path, engine: OPRM) -> list[dict[str, torch.Tensor]]:
    """Every chunk's stored state tensors, in chunk order, read through the storage module (CRC-32 checked)."""
    manifest = storage.read_manifest(folder)
    infos = {s.file: s for s in storage.shard_infos(manifest)}
    out = []
    for c in manifest["chunks"]:
        with storage.ShardReader(folder / c["shard"], engine.backend.name, infos[c["shard"]]) as reader:
            out.append(reader.tensors(c["row"]))
    return out


def _same_index(folder: Path, s: dict[str, Any]) -> None:
    engine, local = s["engine"], s["local"]
    got = StateIndex.load(folder, engine)
    got.verify()  # every shard's sha256
    key = lambda c: (c.index, c.doc_index, c.source, c.start, c.end, c.ids, c.text)  # noqa: E731
    assert [key(c) for c in got.chunks] == [key(c) for c in local.chunks], "the same chunks, numbered the same"
    assert got.documents == local.documents
    ours, theirs = _rows(folder, engine), _rows(s["root"] / "local", engine)
    for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.allclose(a[name].float(), b[name].float(), atol=ATOL), f"chunk {n}: {name} differs"
    gap = max((ours[0][k].float() - ours[1][k].float()).abs().max().item() for k in ours[0] if k.startswith("state:"))
    assert gap > 1000 * ATOL, "two chunks' states must differ far above the tolerance, or the check above proves nothing"
    manifest = storage.read_manifest(folder)
    named = {s["file"] for s in manifest["shards"]}
    on_disk = {p.name for p in folder.glob("*.safetensors")}
    assert on_disk == named, f"shards no chunk uses were left behind: {sorted(on_disk - named)}"
    for q in QUESTIONS:
        engine.state_cache.clear()
        assert_same_ranking(local.rank(q), got.rank(q))
        a, b = local.answer(q, max_new_tokens=6), got.answer(q, max_new_tokens=6)
        assert (a.text, a.not_found, a.chunk and a.chunk.chunk.index) == (b.text, b.not_found, b.chunk and b.chunk.chunk.index)
    got.close()


@needs_ray
def test_build_with_two_workers_equals_one_machine(setup: dict[str, Any]) -> None:
    assert len(storage.read_manifest(setup["root"] / "dist")["shards"]) >= 4, "several shards from both workers"
    _same_index(setup["root"] / "dist", setup)
    seen: list[tuple[int, int]] = []
    report = build_index(
        setup["docs"], setup["root"] / "api", setup["model"], workers=2, rows_per_shard=3,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    n = len(setup["local"])
    assert seen[-1] == (n, n) and len(seen) == report.shards, "progress counts chunks across workers, shard by shard"
    assert (report.workers, report.chunks, report.passes, report.discarded_shards) == (2, len(setup["local"]), 1, ())
    assert report.shards == -(-len(setup["local"]) // 3)


@needs_ray
def test_worker_killed_mid_build_still_gives_a_complete_index(setup: dict[str, Any]) -> None:
    flag = setup["root"] / "killed.flag"
    out = setup["root"] / "killed"
    report = build_index(setup["docs"], out, setup["model"], workers=2, rows_per_shard=2, fail_once=str(flag))
    assert flag.exists(), "a worker must have died mid-write (its process exited), or this test proves nothing"
    assert report.chunks == len(setup["local"])
    manifest = json.loads((out / MANIFEST).read_text())
    rows = [(c["shard"], c["row"]) for c in manifest["chunks"]]
    assert len(rows) == len(set(rows)) == len(setup["local"]), "each chunk exactly once"
    _same_index(out, setup)  # complete, correct, and the half-written shard of the dead worker is gone


@needs_ray
def test_query_over_two_shard_actors_equals_local(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    engine, local = setup["engine"], setup["local"]
    with DistributedIndex(setup["root"] / "dist", setup["model"], shard_actors=2) as index:
        assert len(index.actors) == 2 and len(index) == len(local)
        assert len(set(index._owner.values())) == 2, "both actors must hold chunks"
        for q in QUESTIONS:
            engine.state_cache.clear()
            expected = local.rank(q)
            got = index.rank(q)
            assert_same_ranking(expected, got)
            a, b = local.answer(q, max_new_tokens=6), index.answer(q, max_new_tokens=6)
            assert (b.text, b.not_found, b.usage.generated_tokens) == (a.text, a.not_found, a.usage.generated_tokens)
            assert (b.chunk and b.chunk.chunk.index) == (a.chunk and a.chunk.chunk.index)
        a, b = local.answer(QUESTIONS[0], mode="summarize", k=3, max_new_tokens=4), index.answer(
            QUESTIONS[0], mode="summarize", k=3, max_new_tokens=4
        )
        assert (b.text, b.parts) == (a.text, a.parts)
        many = index.answer_many(list(QUESTIONS), max_new_tokens=6)
        assert [m.text for m in many] == [local.answer(q, max_new_tokens=6).text for q in QUESTIONS]
    from overflow_core.errors import IndexMismatchError

    with pytest.raises(IndexMismatchError, match="chunk_tokens"):  # the actor's reason, not "the actor died"
        DistributedIndex(setup["root"] / "dist", setup["model"], settings={"chunk_tokens": 20}, shard_actors=2)
    capsys.readouterr()
    argv = ["ask", "-q", QUESTIONS[0], "--index", str(setup["root"] / "dist"), "--ray", "--model", str(setup["model"]),
            "--max-new-tokens", "6", "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["text"] == local.answer(QUESTIONS[0], max_new_tokens=6).text


@needs_ray
def test_serve_answers_concurrent_http_questions_in_batches(setup: dict[str, Any]) -> None:
    import concurrent.futures
    import urllib.request

    pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -e '.[ray]'")
    import socket

    from ray import serve

    from overflow_core.distributed.serve import app

    local = setup["local"]
    with socket.socket() as probe:  # a free port: other runs on this machine may hold 8000
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app(setup["root"] / "dist", setup["model"], max_batch_size=4, batch_wait_timeout_s=0.5), route_prefix="/")

        def ask(q: str) -> dict[str, Any]:
            body = json.dumps({"question": q, "max_new_tokens": 6}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=120) as response:
                return dict(json.loads(response.read()))

        questions = [*QUESTIONS, QUESTIONS[0]]
        with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
            got = list(pool.map(ask, questions))
        assert [g["text"] for g in got] == [local.answer(q, max_new_tokens=6).text for q in questions]
        assert ask("   ")["error"].startswith("question: expected a non-empty string")
    finally:
        serve.shutdown()


def test_more_actors_than_the_cluster_holds_is_refused_or_warned_in_one_line() -> None:
    """Ray leaves actors that do not fit pending forever: a local cluster (it never grows) is refused with the number
    that fits, a joined one (an autoscaler may add nodes) warns."""
    import warnings
    from types import SimpleNamespace

    from overflow_core.distributed.cluster import CapacityWarning, check_capacity
    from overflow_core.errors import ConfigError

    two_cpus = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0, "memory": 1e9})
    check_capacity(two_cpus, 2, 1.0, 0.0, what="shard_actors", grows=False)  # fits: nothing said
    check_capacity(two_cpus, 4, 0.5, 0.0, what="shard_actors", grows=False)
    with pytest.raises(ConfigError, match=r"shard_actors: 4 actors need .*4 CPU \(4 x 1\), the cluster has 2\); use at most 2"):
        check_capacity(two_cpus, 4, 1.0, 0.0, what="shard_actors", grows=False)
    with pytest.raises(ConfigError, match=r"1 GPU \(1 x 1\), the cluster has 0\); none fits") as err:
        check_capacity(two_cpus, 1, 1.0, 1.0, what="a build worker", grows=False)
    assert "\n" not in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_capacity(two_cpus, 3, 1.0, 0.0, what="shard_actors", grows=True)
    assert [w.category for w in caught] == [CapacityWarning] and "wait for the cluster" in str(caught[0].message)


@needs_ray
def test_cli_refuses_more_shard_actors_than_a_local_cluster_holds(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`oprm ask --ray --workers 4` on a 2-CPU local cluster hung with no message (4 actors of 1 CPU, 2 placed)."""
    import threading

    from overflow_core.distributed import cluster

    monkeypatch.setattr(cluster, "_started_here", True)  # as when `oprm ask --ray` starts the local cluster itself
    assert len(storage.read_manifest(setup["root"] / "dist")["shards"]) >= 4, "4 actors must be asked for"
    argv = ["ask", "-q", QUESTIONS[0], "--index", str(setup["root"] / "dist"), "--ray", "--workers", "4",
            "--model", str(setup["model"])]  # fmt: skip
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the CLI waited on actors that can never be placed"
    err = capsys.readouterr().err.strip()
    assert result == [2] and len(err.splitlines()) == 1 and "use at most 2" in err and "--workers" in err, err
