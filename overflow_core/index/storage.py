"""The on-disk format of a state index: a marked folder of immutable safetensors shards, committed by one JSON manifest.

A folder is an Overflow index only when it holds the marker file :data:`MARKER` and a valid ``manifest.json``; nothing
writes into any other folder (:func:`check_target`). Inside it:

- ``states-<tag>-<n>.safetensors``: rows of state, written once under a new name, never modified. Each row has a CRC-32
  in the manifest, checked every time the row is read (:class:`ShardReader`); each shard has a sha256 (:func:`verify_shard`).
- ``generation-<tag>.lease``: the shard list of generation ``<tag>``. A reader of that generation holds a shared
  ``flock`` on it (:class:`Lease`); a writer deletes a generation's shards only when it can take the lock exclusively,
  i.e. when no process reads that generation any more (:func:`collect_garbage`).
- ``manifest.json``: the current generation (chunks, fingerprints, shards). Replacing it with ``os.replace`` is the
  single atomic commit of a save (:func:`commit`).
- ``.writer.lock``: writers hold an advisory lock on it (:func:`writer_lock`); readers take none.

The steps of a save are public and separate, so shards can be written by several workers and committed once:
:func:`prepare_target`, :func:`write_shard` (any number, any process), :func:`commit`, :func:`collect_garbage`.
No pickles: tensors in safetensors, the rest in JSON. Knows nothing about the engine or how states are made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from overflow_core.backends.base import State
from overflow_core.errors import IndexBusyError, IndexChangedError, IndexCorruptError, IndexMismatchError, InputError
from overflow_core.index.fingerprint import canonical, sha256

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "LOCK",
    "MANIFEST",
    "MARKER",
    "MAX_DEPTH",
    "Lease",
    "ShardInfo",
    "ShardReader",
    "acquire_lease",
    "changed_error",
    "check_target",
    "collect_garbage",
    "commit",
    "current_checksum",
    "current_generation",
    "is_index",
    "prepare_target",
    "read_manifest",
    "row_checksum",
    "shard_infos",
    "shard_name",
    "state_to_tensors",
    "verify_shard",
    "write_shard",
    "writer_lock",
]

logger = logging.getLogger(__name__)

FORMAT = "overflow-state-index"


FORMAT_VERSION = 2  # 2: marker file, generations with reader leases, per-row CRC-32, strict manifest schema


MANIFEST = "manifest.json"


MARKER = "OVERFLOW-STATE-INDEX"  # present in every folder this module created; its content is the format and version


LOCK = ".writer.lock"  # the advisory lock file writers hold while saving (see writer_lock)


DEFAULT_SHARD_BYTES = 256 * 2**20


MAX_DEPTH = 64  # deepest JSON nesting a manifest may hold (chunk metadata and model configs are shallow)


SHARD_NAME = re.compile(r"^states-(?P<tag>[0-9a-f]{12})-\d{5}\.safetensors$")


LEASE_NAME = re.compile(r"^generation-(?P<tag>[0-9a-f]{12})\.lease$")


TMP_NAME = re.compile(rf"^(?:{re.escape(MANIFEST)}|generation-[0-9a-f]{{12}}\.lease)\.tmp-[0-9a-f]{{12}}$")


_TOP = frozenset(
    {"format", "format_version", "generation", "model", "tokenizer", "settings", "documents", "chunks", "shards"}
)
_MODEL = frozenset({"name", "backend", "dtype", "config_sha256", "weights_sha256", "config"})
_TOKENIZER = frozenset({"class", "vocab_size", "sha256"})
_CHUNK = frozenset(
    {"doc_index", "source", "start", "end", "text", "ids", "metadata", "tokens", "bytes", "shard", "row"}
)
_SHARD = frozenset({"file", "sha256", "bytes", "rows", "row_crc32"})
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX8 = re.compile(r"^[0-9a-f]{8}$")
_TAG = re.compile(r"^[0-9a-f]{12}$")


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest records it: file name, sha256 and size of the file, rows and each row's CRC-32."""

    file: str
    sha256: str
    bytes: int
    rows: int
    row_crc32: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "bytes": self.bytes, "rows": self.rows,
                "row_crc32": list(self.row_crc32)}  # fmt: skip


# -- writing ------------------------------------------------------------------------------------------------------------
def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    """Write bytes to a new file and make them durable (a test replaces this to simulate a crash mid-write)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes, tag: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{tag}")
    write_file(tmp, data)
    os.replace(tmp, path)


def row_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """CRC-32 of one row: every tensor's name, dtype, shape and bytes, in name order (``[...]`` any shape)."""
    crc = 0
    for name in sorted(tensors):
        t = tensors[name]
        crc = zlib.crc32(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode(), crc)
        flat = t.detach().reshape(-1).contiguous()
        if flat.numel():
            crc = zlib.crc32(flat.view(torch.uint8).numpy().data, crc)
    return f"{crc:08x}"


def state_to_tensors(state: State) -> dict[str, torch.Tensor]:
    """One row of state as named CPU tensors: ``state:<name>``, ``lengths`` and ``mask`` when there is one."""
    out = {f"state:{k}": t.detach().cpu().contiguous().clone() for k, t in state.tensors.items()}
    out["lengths"] = state.lengths.detach().cpu().clone()
    if state.mask is not None:
        out["mask"] = state.mask.detach().cpu().contiguous().clone()
    return out


def shard_name(tag: str, n: int) -> str:
    """The file name of shard ``n`` of the save (generation) ``tag``."""
    if not _TAG.match(tag) or not 0 <= n < 100_000:
        raise InputError(f"shard: expected a 12-hex-digit tag and a number below 100000, got {tag!r} and {n}")
    return f"states-{tag}-{n:05d}.safetensors"


def write_shard(folder: Path, name: str, rows: Sequence[Mapping[str, torch.Tensor]]) -> ShardInfo:
    """Write ``rows`` (each as :func:`state_to_tensors` makes it) to a new durable shard ``name``; returns its record.

    Never overwrites: a file of that name already there is an error. Safe to call from several processes for
    distinct names; nothing refers to the shard until :func:`commit` names it.
    """
    from safetensors.torch import save as to_bytes

    if not SHARD_NAME.match(name):
        raise InputError(f"shard: expected a name like states-<12 hex>-<5 digits>.safetensors, got {name!r}")
    tensors = {f"{r}:{k}": t for r, row in enumerate(rows) for k, t in row.items()}
    data = to_bytes(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    info = ShardInfo(
        file=name, sha256=sha256(data), bytes=len(data), rows=len(rows), row_crc32=tuple(row_checksum(r) for r in rows)
    )
    write_file(folder / name, data)
    return info


def marker_text() -> str:
    return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION}) + "\n"


def _has_marker(folder: Path) -> bool:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def is_index(folder: Path) -> bool:
    """True when ``folder`` is provably an Overflow state index: the marker file and a manifest that validates."""
    if not (folder.is_dir() and _has_marker(folder)):
        return False
    try:
        read_manifest(folder)
    except (IndexCorruptError, IndexMismatchError):
        return False
    return True


def _ours(name: str) -> bool:
    return bool(SHARD_NAME.match(name) or LEASE_NAME.match(name) or TMP_NAME.match(name)) or name in (LOCK, MARKER)


def check_target(folder: Path) -> None:
    """Refuse to write an index anywhere but a new folder, an empty folder or an existing Overflow index.

    Raises:
        InputError: ``folder`` is a file, lies under a file, or holds anything but an Overflow index (files of the
            user's, a ``manifest.json`` without the marker, a damaged index). Nothing is written or deleted.
    """
    shown = str(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"path: expected a folder for the index, {shown!r} is a file; nothing was written")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"path: cannot create the index folder {shown!r}: {str(parent)!r} is a file")
            break
    if not folder.is_dir():
        return
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return
    if not _has_marker(folder):
        raise InputError(
            f"path: expected a new or empty folder or an existing Overflow state index, {shown!r} holds other files "
            f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) and no {MARKER} marker; nothing was written"
        )
    if (folder / MANIFEST).exists():
        try:
            read_manifest(folder)
        except (IndexCorruptError, IndexMismatchError) as exc:
            raise InputError(
                f"path: {shown!r} holds a state index that cannot be updated ({exc}); delete the folder or choose "
                "another; nothing was written"
            ) from exc
        return
    others = [n for n in names if not _ours(n)]  # a first save that was interrupted before its commit
    if others:
        raise InputError(
            f"path: {shown!r} holds an unfinished state index and other files ({', '.join(others[:3])}); nothing was "
            "written"
        )


def prepare_target(folder: Path) -> None:
    """:func:`check_target`, then create the folder and its marker (durably) when they are missing."""
    check_target(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).exists():
        _atomic_write(folder / MARKER, marker_text().encode(), os.urandom(6).hex())
        fsync_dir(folder)


def commit(folder: Path, manifest: Mapping[str, Any], generation: str) -> str:
    """Commit generation ``generation``: write its lease file (its shard list), then ``manifest.json`` atomically
    (a durable temporary file, then ``os.replace``: the commit point). Every shard it names must already be durable.
    Call under :func:`writer_lock`. Returns the manifest's checksum, which identifies this version of the index."""
    if not _TAG.match(generation):
        raise InputError(f"generation: expected 12 hex digits, got {generation!r}")
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    body["generation"] = generation
    shards = [s["file"] for s in body.get("shards", [])]
    lease = json.dumps({"generation": generation, "shards": shards}).encode()
    _atomic_write(folder / f"generation-{generation}.lease", lease, generation)
    checksum = sha256(canonical(body))
    text = json.dumps({**body, "checksum": checksum}, ensure_ascii=False, allow_nan=False)
    _atomic_write(folder / MANIFEST, text.encode("utf-8"), generation)
    fsync_dir(folder)
    return checksum


# kept for callers of the first version (tests write a manifest with a valid checksum through it)
def write_manifest(folder: Path, manifest: Mapping[str, Any], tag: str) -> str:
    """Write ``manifest.json`` atomically as generation ``manifest['generation']`` (or ``tag``); see :func:`commit`."""
    return commit(folder, manifest, str(manifest.get("generation", tag)))


@contextmanager
def writer_lock(folder: Path, timeout_s: float) -> Iterator[None]:
    """Hold the folder's advisory writer lock (``flock`` on :data:`LOCK`) while the block runs.

    Writers in other processes (or on other handles in this one) wait for it, up to ``timeout_s``. Readers never take it:
    a commit is one ``os.replace`` of the manifest. Where ``fcntl`` is missing (Windows) there is no lock, and two
    concurrent writers to one folder are not supported.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusyError(
                        f"index {folder}: another writer has held {LOCK} for more than {timeout_s:g} s; nothing was "
                        "written. Retry later, or pass a longer lock_timeout_s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- generations and leases ---------------------------------------------------------------------------------------------
class Lease:
    """A reader's shared lock on one generation's lease file: while any process holds one, no writer deletes a shard of
    that generation. Released by :meth:`close`, when the object is garbage-collected, or when the process ends (even
    by ``kill -9``: the kernel drops ``flock`` locks with the process). ``protected`` is False where there are no
    locks (no ``fcntl``, or a filesystem without ``flock``): then a later save may delete this generation's shards."""

    def __init__(self, generation: str, fd: int | None) -> None:
        self.generation = generation
        self.protected = fd is not None
        self._close = weakref.finalize(self, os.close, fd) if fd is not None else None

    def close(self) -> None:
        if self._close is not None:
            self._close()


def _flock() -> Any:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    return fcntl


def acquire_lease(folder: Path, generation: str, timeout_s: float = 10.0) -> Lease | None:
    """Take a shared lock on ``generation``'s lease file; None when that generation is gone (collected by a writer
    since its manifest was read: read the manifest again). A lease with ``protected=False`` where locks are missing."""
    fcntl = _flock()
    path = folder / f"generation-{generation}.lease"
    if fcntl is None:
        return Lease(generation, None) if path.exists() else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # a writer is collecting this generation right now
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(0.005)
            except OSError as exc:  # no flock on this filesystem: unprotected
                logger.warning(
                    "index %s: no file locks on this filesystem (%s); readers are not protected", folder, exc
                )
                os.close(fd)
                return Lease(generation, None)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # collected between our open and our lock
            os.close(fd)
            return None
    except BaseException:
        with suppress(OSError):
            os.close(fd)
        raise
    return Lease(generation, fd)


def _lease_shards(fd: int) -> set[str]:
    try:
        data = json.loads(os.pread(fd, 64 * 2**20, 0))
        return {str(s) for s in data["shards"] if SHARD_NAME.match(str(s))}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def collect_garbage(folder: Path, generation: str, shards: Iterable[str]) -> list[str]:
    """Delete what no reader can still need: lease files of generations other than ``generation`` (the current one,
    whose shard files are ``shards``) that no reader holds, shards named by no live generation, temporary files.
    Only files named as this module names them are ever deleted. Call under :func:`writer_lock` after :func:`commit`.
    Returns the deleted names."""
    fcntl = _flock()
    live = set(shards)
    deleted: list[str] = []
    for entry in sorted(folder.iterdir()):
        m = LEASE_NAME.match(entry.name)
        if m is None or m["tag"] == generation:
            continue
        if fcntl is None:
            entry.unlink(missing_ok=True)
            deleted.append(entry.name)
            continue
        try:
            fd = os.open(entry, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a reader holds this generation: keep its shards
                live |= _lease_shards(fd)
                continue
            except OSError:  # no flock here: nothing protects readers, as without fcntl
                pass
            entry.unlink(missing_ok=True)
            deleted.append(entry.name)
        finally:
            os.close(fd)
    for entry in sorted(folder.iterdir()):
        if (SHARD_NAME.match(entry.name) and entry.name not in live) or TMP_NAME.match(entry.name):
            try:
                entry.unlink()
                deleted.append(entry.name)
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. Windows, where a file open elsewhere cannot be deleted: next save retries
                logger.info("index %s: could not delete %s yet (%s)", folder, entry.name, exc)
    return deleted


# -- reading ------------------------------------------------------------------------------------------------------------
def current_checksum(folder: Path) -> str | None:
    """The checksum of the manifest now in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        return str(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("checksum"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def current_generation(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("generation"))
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _depth(value: Any) -> int:
    """Deepest nesting of lists and objects in ``value`` (iterative: never recurses)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            todo.extend((v, depth + 1) for v in item)
        if deepest > MAX_DEPTH:
            break
    return deepest


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(folder: Path, data: dict[str, Any]) -> None:
    """Check the manifest's structure: known fields only, of the right types, shard files inside the folder, and every
    row of every shard used by exactly one chunk. Raises IndexCorruptError naming the first problem."""

    def bad(what: str) -> IndexCorruptError:
        return IndexCorruptError(f"index {folder}: {MANIFEST}: {what}")

    def fields(where: str, got: Any, expected: frozenset[str]) -> None:
        if not isinstance(got, dict):
            raise bad(f"expected {where} to be an object, got {type(got).__name__}")
        unknown, missing = sorted(set(got) - expected), sorted(expected - set(got))
        if unknown:
            raise bad(f"unknown field {unknown[0]!r} in {where} (expected only {', '.join(sorted(expected))})")
        if missing:
            raise bad(f"{where} lacks the field {missing[0]!r}")

    fields("the manifest", data, _TOP)
    if not (isinstance(data["generation"], str) and _TAG.match(data["generation"])):
        raise bad(f"expected generation to be 12 hex digits, got {str(data['generation'])[:40]!r}")
    fields("model", data["model"], _MODEL)
    fields("tokenizer", data["tokenizer"], _TOKENIZER)
    if not isinstance(data["settings"], dict) or not isinstance(data["model"]["config"], dict):
        raise bad("expected settings and model.config to be objects")
    if not isinstance(data["shards"], list) or not isinstance(data["chunks"], list):
        raise bad("expected shards and chunks to be lists")
    root = folder.resolve()
    shards: dict[str, int] = {}
    for n, s in enumerate(data["shards"]):
        fields(f"shards[{n}]", s, _SHARD)
        name = s["file"]
        if not isinstance(name, str) or not SHARD_NAME.match(name):
            raise bad(
                f"shards[{n}].file: expected a file name like states-<tag>-00000.safetensors inside the index folder, "
                f"got {str(name)[:80]!r}"
            )
        path = folder / name
        if path.is_symlink() or path.resolve().parent != root:
            raise bad(f"shards[{n}].file {name!r} leads outside the index folder (a link)")
        if name in shards:
            raise bad(f"shard {name!r} is listed twice")
        rows, crcs = s["rows"], s["row_crc32"]
        if not (_int(rows) and rows >= 1 and _int(s["bytes"]) and s["bytes"] > 0):
            raise bad(f"shards[{n}]: expected positive rows and bytes, got {rows!r} and {s['bytes']!r}")
        if not (isinstance(s["sha256"], str) and _HEX64.match(s["sha256"])):
            raise bad(f"shards[{n}].sha256: expected 64 hex digits")
        if not (
            isinstance(crcs, list) and len(crcs) == rows and all(isinstance(c, str) and _HEX8.match(c) for c in crcs)
        ):
            raise bad(f"shards[{n}].row_crc32: expected {rows} checksums of 8 hex digits")
        shards[name] = rows
    used: set[tuple[str, int]] = set()
    docs: set[int] = set()
    for n, c in enumerate(data["chunks"]):
        fields(f"chunks[{n}]", c, _CHUNK)
        ints = ("doc_index", "start", "end", "tokens", "bytes", "row")
        if not all(_int(c[k]) and c[k] >= 0 for k in ints):
            raise bad(f"chunks[{n}]: expected non-negative integers for {', '.join(ints)}")
        if not (isinstance(c["text"], str) and (c["source"] is None or isinstance(c["source"], str))):
            raise bad(f"chunks[{n}]: expected text and source to be strings")
        if not (isinstance(c["ids"], list) and all(_int(t) and t >= 0 for t in c["ids"])):
            raise bad(f"chunks[{n}].ids: expected a list of token ids")
        if not isinstance(c["metadata"], dict):
            raise bad(f"chunks[{n}].metadata: expected an object")
        key = (c["shard"], c["row"])
        if c["shard"] not in shards or not c["row"] < shards[c["shard"]]:
            raise bad(f"chunk {n} points at row {c['row']} of unknown shard {str(c['shard'])[:80]!r}")
        if key in used:
            raise bad(f"chunk {n} points at row {c['row']} of {c['shard']}, which another chunk uses")
        used.add(key)
        docs.add(c["doc_index"])
    if len(used) != sum(shards.values()):
        raise bad("a shard holds rows that no chunk uses")
    if not (_int(data["documents"]) and data["documents"] == len(docs) and docs == set(range(len(docs)))):
        raise bad(f"documents: expected {len(docs)} (chunks' doc_index 0..{len(docs) - 1}), got {data['documents']!r}")


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``: JSON, checksum, format and version, nesting at most :data:`MAX_DEPTH`,
    known fields of the right types, shard files inside the folder. Returns it with its ``checksum``.

    Raises:
        IndexCorruptError: missing, truncated, modified, malformed, or pointing outside the folder.
        IndexMismatchError: another format or format version.
    """
    path = folder / MANIFEST
    if not path.exists():
        inner = sorted(p.parent for p in folder.glob(f"*/{MARKER}") if (p.parent / MANIFEST).exists())
        hint = f"; the state index is in the subfolder {str(inner[0])!r}" if inner else ""
        raise IndexCorruptError(
            f"index {folder}: expected {MANIFEST}, found none (not a state index, or its first save was interrupted)"
            + hint
        )
    # a manifest.json of someone else's (no marker): say so, not "corrupt"
    other = "" if _has_marker(folder) else f" (no {MARKER} marker: not a state index, a folder of your own?)"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"index {folder}: {MANIFEST} is truncated or not JSON ({exc}){other}") from exc
    except RecursionError:
        raise IndexCorruptError(f"index {folder}: {MANIFEST} nests deeper than JSON can be read{other}") from None
    if not isinstance(data, dict) or "checksum" not in data:
        raise IndexCorruptError(
            f"index {folder}: expected a JSON object with a checksum in {MANIFEST}, got something else{other}"
        )
    if _depth(data) > MAX_DEPTH:
        raise IndexCorruptError(f"index {folder}: {MANIFEST} nests deeper than {MAX_DEPTH} levels")
    stored = data.pop("checksum")
    actual = sha256(canonical(data))
    if stored != actual:
        raise IndexCorruptError(
            f"index {folder}: {MANIFEST} checksum mismatch (expected {str(stored)[:16]}..., got {actual[:16]}...): "
            "the manifest was modified or damaged"
        )
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"index {folder}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
            f"{str(data.get('format'))[:40]!r} version {str(data.get('format_version'))[:10]}; rebuild the index with "
            "this version of overflow (into a new folder)"
        )
    _validate(folder, data)
    return {**data, "checksum": actual}


def shard_infos(manifest: Mapping[str, Any]) -> list[ShardInfo]:
    """The shard records of a manifest :func:`read_manifest` returned."""
    return [
        ShardInfo(str(s["file"]), str(s["sha256"]), int(s["bytes"]), int(s["rows"]), tuple(s["row_crc32"]))
        for s in manifest["shards"]
    ]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shard(path: Path, info: ShardInfo) -> None:
    """Check a whole shard file against its record: size, then sha256 of every byte (reads the file once)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IndexCorruptError(f"index {path.parent}: shard {info.file} is missing or unreadable ({exc})") from exc
    if size != info.bytes:
        raise IndexCorruptError(
            f"index {path.parent}: shard {info.file} has {size} bytes, expected {info.bytes} (truncated or overwritten)"
        )
    digest = file_sha256(path)
    if digest != info.sha256:
        raise IndexCorruptError(
            f"index {path.parent}: shard {info.file} sha256 is {digest[:16]}..., expected {info.sha256[:16]}... (corrupted)"
        )


def jsonable_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of a chunk's metadata (nested at most a few levels); ``source`` is kept as a string
    whatever its type."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            continue
        try:
            json.dumps(value, allow_nan=False)
            ok = _depth(value) <= MAX_DEPTH - 4  # manifest > chunks > chunk > metadata > value
        except (TypeError, ValueError, RecursionError):
            ok = False
        if ok:
            out[key] = value
        elif key == "source":
            out[key] = str(value)
    return out


class ShardReader:
    """Reads rows of state from one shard through safetensors' memory map; only the rows asked for are loaded, and each
    row's bytes are checked against its CRC-32 as they are read (``verify=False`` skips that)."""

    def __init__(self, path: Path, backend: str, info: ShardInfo, *, verify: bool = True) -> None:
        from safetensors import safe_open

        self.path, self.backend, self.info, self.verify = path, backend, info, verify
        where = f"index {path.parent}: shard {path.name}"
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise IndexCorruptError(f"{where} is unreadable ({exc})") from exc
        if size != info.bytes:
            raise IndexCorruptError(f"{where} has {size} bytes, expected {info.bytes} (truncated or overwritten)")
        try:
            self._file: Any = safe_open(str(path), framework="pt", device="cpu")
            keys: Iterable[str] = self._file.keys()
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise IndexCorruptError(f"{where} cannot be opened ({exc})") from exc
        self._names: dict[int, list[str]] = {}
        try:
            for key in keys:
                row, _, name = key.partition(":")
                self._names.setdefault(int(row), []).append(name)
        except ValueError as exc:
            raise IndexCorruptError(f"{where} has an unexpected tensor ({exc})") from exc

    def tensors(self, row: int) -> dict[str, torch.Tensor]:
        """Row ``row`` as named tensors, checked against its CRC-32."""
        where = f"index {self.path.parent}: shard {self.path.name}"
        try:
            out = {n: self._file.get_tensor(f"{row}:{n}") for n in self._names[row]}
        except Exception as exc:
            raise IndexCorruptError(f"{where} lacks row {row} or cannot read it ({exc})") from exc
        if self.verify:
            crc = row_checksum(out)
            if not 0 <= row < len(self.info.row_crc32) or crc != self.info.row_crc32[row]:
                expected = self.info.row_crc32[row] if 0 <= row < len(self.info.row_crc32) else "none"
                raise IndexCorruptError(
                    f"{where} row {row}: CRC-32 {crc}, expected {expected}: the file was damaged or modified after it "
                    "was written; not used"
                )
        return out

    def state(self, row: int) -> State:
        out = self.tensors(row)
        tensors = {k[len("state:") :]: t for k, t in out.items() if k.startswith("state:")}
        if "lengths" not in out or not tensors:
            raise IndexCorruptError(f"index {self.path.parent}: shard {self.path.name} row {row} lacks its state")
        return State(tensors=tensors, lengths=out["lengths"], mask=out.get("mask"), backend=self.backend)

    def close(self) -> None:
        self._names.clear()
        self._file = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def changed_error(folder: Path, generation: str, detail: str) -> IndexChangedError:
    now = current_generation(folder)
    return IndexChangedError(
        f"index {folder} was changed underneath you: another save replaced generation {generation} "
        f"(now {now or 'none'}) and deleted files this index still refers to ({detail}); load it again"
    )
