"""Hostile cases for the state index, per class of failure: cases tried, handled, failed (and how each failed).

    python -m overflow_core.bench.index_cases

Classes: 4, writing into folders that are not an index (``save`` and ``oprm index --out``, ``--append``); 5, readers
while a writer saves (an index held open across a save; loads in two threads during 12 saves); 6, bytes flipped in a
shard after load with the mtime kept (15 places); 7, hostile manifests (paths leaving the folder, unknown fields,
absurd nesting) and one changed weight value per tensor that a sampled fingerprint skips; 9, the index paths of the
CLI. Handled means: a one-line error of Overflow's own, every user file byte-identical, or the right answer. The
script uses only the public API, so it runs unchanged against an older checkout (``PYTHONPATH=old/checkout``) to
count how that one fails. Uses the bundled model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from overflow_core import OPRM
from overflow_core.cli import main as cli
from overflow_core.errors import OverflowCoreError
from overflow_core.index import StateIndex, storage
from overflow_core.testing import sample_documents


def main() -> int:
    torch.set_num_threads(1)
    question = "What is the locker number of Alice Baker?"
    docs_all = sample_documents(4, seed=7)
    docs_a, docs_b = docs_all[:2], docs_all[2:]
    e = OPRM.from_pretrained(max_batch_tokens=4096, chunk_tokens=48, device="cpu")
    tmp = Path(tempfile.mkdtemp())
    results: dict[str, list[tuple[str, bool, str]]] = {}

    def record(cls: str, case: str, ok: bool, how: str = "") -> None:
        results.setdefault(cls, []).append((case, ok, how))

    def snap(p: Path) -> dict[str, bytes]:
        if p.is_file():
            return {"": p.read_bytes()}
        return (
            {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()} if p.exists() else {}
        )

    def sig(index: StateIndex) -> list[tuple[int, float]]:
        return [(s.chunk.index, round(s.entropy, 6)) for s in index.rank(question).scores]

    def n(prefix: str) -> Path:
        return Path(tempfile.mkdtemp(dir=tmp, prefix=prefix))

    # ---- class 4: user folders ---------------------------------------------------------------------------------------------
    def user_cases() -> dict[str, Path]:
        root = n("user")
        c = {}
        files = {
            "user manifest.json": {"manifest.json": b'{"my": 1}'},
            "shard-named user file": {"states-0123456789ab-00000.safetensors": b"x"},
            "manifest + shard-named file": {
                "manifest.json": b'{"checksum":"x"}',
                "states-0123456789ab-00001.safetensors": b"k",
            },
            "file named like a temp manifest": {"manifest.json.tmp-0123456789ab": b"mine"},
        }
        for k, (case, content) in enumerate(files.items()):
            d = root / f"case{k}"
            d.mkdir()
            for name, data in content.items():
                (d / name).write_bytes(data)
            c[case] = d
        f = root / "a-file"
        f.write_text("mine")
        c["--out is a file"] = f
        c["--out under a file"] = f / "sub"
        return c

    index = StateIndex.build(e, docs_a)
    for case, target in user_cases().items():
        before = snap(target.parent)
        try:
            index.save(target)
            ok, how = False, "written"
        except OverflowCoreError as exc:
            ok, how = "\n" not in str(exc), type(exc).__name__
        except Exception as exc:  # a traceback in the CLI
            ok, how = False, f"raw {type(exc).__name__}"
        if snap(target.parent) != before:
            ok, how = False, how + ", user files changed"
        record("4 save target", case, ok, how)
    for what, target in user_cases().items():
        doc = tmp / "doc.txt"
        doc.write_text(docs_a[0][0])
        before = snap(target.parent)
        for extra in ([], ["--append"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    status: object = cli(["index", str(doc), "--out", str(target), *extra])
                except BaseException as exc:
                    status = f"raised {type(exc).__name__}"
            ok = status == 2 and err.getvalue().count("\n") == 1 and snap(target.parent) == before
            record("4 oprm index --out", f"{what} {' '.join(extra)}", ok, f"exit {status}")

    # ---- class 5: readers while a writer saves -----------------------------------------------------------------------------
    folder = n("conc") / "idx"
    StateIndex.build(e, docs_a).save(folder, shard_bytes=1)
    held = StateIndex.load(folder, e)
    held_sig = sig(held)
    StateIndex.build(e, docs_b).save(folder, shard_bytes=1)
    try:
        ok = sig(held) == held_sig
        how = "same answers" if ok else "different answers"
    except Exception as exc:
        ok, how = False, f"{type(exc).__name__}: {str(exc)[:80]}"
    record("5 concurrent", "index held open across a save", ok, how)

    folder = n("conc2") / "idx"
    StateIndex.build(e, docs_a).save(folder, shard_bytes=1)
    exp = []
    for name, docs in (("ea", docs_a), ("eb", docs_b)):
        p = n(name) / "i"
        StateIndex.build(e, docs).save(p, shard_bytes=1)
        exp.append(sig(StateIndex.load(p, e)))
    built = [StateIndex.build(e, docs_a), StateIndex.build(e, docs_b)]
    stop = threading.Event()
    seen: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                s = sig(StateIndex.load(folder, e))
                seen.append("ok" if s in exp else "mixed")
            except Exception as exc:
                seen.append(f"{type(exc).__name__}")

    ts = [threading.Thread(target=reader) for _ in range(2)]
    for t in ts:
        t.start()
    for k in range(12):
        idx = built[k % 2] if k < 2 else StateIndex.build(e, [docs_a, docs_b][k % 2])
        idx.save(folder, shard_bytes=1)
        if hasattr(idx, "close"):
            idx.close()
    stop.set()
    for t in ts:
        t.join()
    for k, s in enumerate(seen):
        record("5 concurrent", f"load+rank during 12 saves #{k}", s == "ok", str(s))

    # ---- class 6: flips after load with mtime kept -------------------------------------------------------------------------
    folder = n("flip") / "idx"
    StateIndex.build(e, docs_a).save(folder)
    idx = StateIndex.load(folder, e)
    good = sig(idx)
    shard = next(folder.glob("*.safetensors"))
    st = shard.stat()
    orig = shard.read_bytes()
    hdr = 8 + int.from_bytes(orig[:8], "little")
    for k in range(15):
        pos = hdr + (len(orig) - hdr - 1) * k // 14
        d = bytearray(orig)
        d[pos] ^= 0x10
        shard.write_bytes(bytes(d))
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
        try:
            s = sig(idx)
            ok, how = False, "silently changed answers" if s != good else "unchanged answers, damage unseen"
        except OverflowCoreError as exc:
            ok, how = True, type(exc).__name__
        record("6 damage after load", f"flip at byte {pos}", ok, how)
    shard.write_bytes(orig)

    # ---- class 7: hostile manifests, fingerprint ---------------------------------------------------------------------------

    def rewrite(folder: Path, change: Any) -> None:
        m = json.loads((folder / "manifest.json").read_text())
        m.pop("checksum")
        change(m)
        storage.write_manifest(folder, m, m.get("generation", "0" * 12))

    def hostile(case: str) -> None:
        folder = n("h") / "idx"
        StateIndex.build(e, docs_a).save(folder)
        other = folder.parent / "other"
        other.mkdir()
        name = next(folder.glob("*.safetensors")).name
        shutil.copy(folder / name, other / name)

        def files(m: Any, value: str) -> None:
            for s in m["shards"]:
                s["file"] = value
            for c in m["chunks"]:
                c["shard"] = value

        if case == "../other path":
            rewrite(folder, lambda m: files(m, f"../other/{name}"))
        elif case == "absolute path":
            rewrite(folder, lambda m: files(m, str(other / name)))
        elif case == "symlinked shard":
            (folder / name).unlink()
            (folder / name).symlink_to(other / name)
        elif case == "unknown top field":
            rewrite(folder, lambda m: m.update(extra=1))
        elif case == "unknown chunk field":
            rewrite(folder, lambda m: m["chunks"][0].update(path="x"))
        elif case == "metadata nested 200 deep":
            v: object = 1
            for _ in range(200):
                v = [v]
            rewrite(folder, lambda m: m["chunks"][0]["metadata"].update(deep=v))
        elif case == "raw nesting 200,000 deep":
            (folder / "manifest.json").write_text('{"a":' + "[" * 200000 + "]" * 200000 + ',"checksum":"0"}')
        try:
            StateIndex.load(folder, e).rank(question)
            record("7 manifest", case, False, "accepted")
        except OverflowCoreError as exc:
            record("7 manifest", case, True, type(exc).__name__)
        except BaseException as exc:
            record("7 manifest", case, False, f"raw {type(exc).__name__}")

    for case in [
        "../other path",
        "absolute path",
        "symlinked shard",
        "unknown top field",
        "unknown chunk field",
        "metadata nested 200 deep",
        "raw nesting 200,000 deep",
    ]:
        hostile(case)

    oprm = OPRM.from_pretrained(device="cpu")
    folder = n("fp") / "idx"
    StateIndex.build(oprm, docs_a[:1]).save(folder)
    for name, tensor in [
        ("embedding", oprm.model.get_input_embeddings().weight),
        ("lm_head", oprm.model.lm_head.weight),
        ("in_proj 0", oprm.model.backbone.layers[0].mixer.in_proj.weight),
    ]:
        sampled = set(torch.linspace(0, tensor.numel() - 1, 65536).long().tolist())
        pos = next(i for i in range(1, tensor.numel()) if i not in sampled)
        o = tensor.view(-1)[pos].item()
        with torch.no_grad():
            tensor.view(-1)[pos] += 1e-3
        try:
            StateIndex.load(folder, oprm)
            record("7 fingerprint", f"one value changed in {name}", False, "accepted")
        except OverflowCoreError as exc:
            record("7 fingerprint", f"one value changed in {name}", True, type(exc).__name__)
        with torch.no_grad():
            tensor.view(-1)[pos] = o

    # ---- class 9 (index parts): CLI ----------------------------------------------------------------------------------------
    doc = tmp / "doc.txt"
    doc.write_text(" ".join(t for t, _ in docs_all))
    good_idx = n("cli") / "idx"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        cli(["index", str(doc), "--out", str(good_idx)])

    def run(argv: list[str]) -> tuple[object, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code: object = cli(argv)
            except BaseException as exc:
                code = f"raised {type(exc).__name__}"
        return code, out.getvalue(), err.getvalue()

    status, _, text = run(["index", str(doc), "--out", str(tmp / "doc.txt" / "sub")])
    record("9 cli", "--out under a file", status == 2 and text.count("\n") == 1, f"exit {status}")
    status, out, text = run(
        ["ask", "-q", question, "--index", str(good_idx), "--mode", "summarize", "--json", "--max-new-tokens", "3"]
    )
    mode = json.loads(out)["mode"] if status == 0 else None
    record("9 cli", "ask --index --mode summarize", mode == "summarize", f"exit {status}, mode {mode}")
    status, out, text = run(
        ["ask", "-q", question, "--index", str(good_idx), "--mode", "vanilla", "--json", "--max-new-tokens", "3"]
    )
    record("9 cli", "ask --index --mode vanilla refused", status == 2 and text.count("\n") == 1, f"exit {status}")

    print(f"python {sys.version.split()[0]}, overflow_core from {Path(storage.__file__).parent.parent}")
    for cls, rows in results.items():
        handled = sum(ok for _, ok, _ in rows)
        print(f"{cls:<22} tried {len(rows):3d}  handled {handled:3d}  failed {len(rows) - handled:3d}")
        hows: dict[str, int] = {}
        for _case, ok, how in rows:
            if not ok:
                hows[how] = hows.get(how, 0) + 1
        for how, count in hows.items():
            print(f"{'':<24}{count} x {how}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
