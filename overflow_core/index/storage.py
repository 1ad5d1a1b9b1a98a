"""The on-disk format of a state index: a folder of safetensors shards and one JSON manifest that commits them.

- Shards (``states-<tag>-<n>.safetensors``) are immutable and uniquely named; each holds rows of state.
- ``manifest.json`` lists chunks, fingerprints and every shard's size and sha256, and carries a checksum of itself.
  Replacing it with ``os.replace`` is the single atomic commit of a save.
- Writers hold an advisory lock (:data:`LOCK`); readers take none.

No pickles: tensors in safetensors, the rest in JSON. Knows nothing about the engine or how states are made.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from overflow_core.backends.base import State
from overflow_core.errors import IndexBusyError, IndexCorruptError, InputError
from overflow_core.index.fingerprint import canonical, sha256

__all__ = ["DEFAULT_SHARD_BYTES", "FORMAT", "FORMAT_VERSION", "LOCK", "MANIFEST", "ShardInfo", "ShardReader"]

FORMAT = "overflow-state-index"


FORMAT_VERSION = 1


MANIFEST = "manifest.json"


LOCK = ".writer.lock"  # the advisory lock file writers hold while saving (see writer_lock)


DEFAULT_SHARD_BYTES = 256 * 2**20


SHARD_NAME = re.compile(r"^states-[0-9a-f]{12}-\d{5}\.safetensors$")


TMP_MANIFEST = re.compile(rf"^{re.escape(MANIFEST)}\.tmp-[0-9a-f]{{12}}$")


@dataclass(frozen=True)
class ShardInfo:
    file: str
    sha256: str
    bytes: int
    rows: int


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


def write_shard(path: Path, data: bytes) -> None:
    """Write one shard's bytes and make them durable (a test replaces this to simulate a crash mid-write)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(folder: Path, manifest: Mapping[str, Any], tag: str) -> str:
    """Write ``manifest.json`` atomically: a durable temporary file, then ``os.replace`` (the commit point).
    Returns the manifest's checksum, which identifies this version of the index."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    checksum = sha256(canonical(body))
    text = json.dumps({**body, "checksum": checksum}, ensure_ascii=False, allow_nan=False)
    tmp = folder / f"{MANIFEST}.tmp-{tag}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    fsync_dir(folder)
    return checksum


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonable_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of a chunk's metadata; ``source`` is kept as a string whatever its type."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            if key == "source":
                out[key] = str(value)
            continue
        out[key] = value
    return out


def state_to_tensors(state: State, row: int) -> dict[str, torch.Tensor]:
    prefix = f"{row}:"
    out = {f"{prefix}state:{k}": t.detach().cpu().contiguous().clone() for k, t in state.tensors.items()}
    out[f"{prefix}lengths"] = state.lengths.detach().cpu().clone()
    if state.mask is not None:
        out[f"{prefix}mask"] = state.mask.detach().cpu().contiguous().clone()
    return out


def check_target(folder: Path) -> None:
    """Refuse to write an index over a file or into a folder holding anything but an index."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"path: expected a folder for the index, {str(folder)!r} is a file")
    if folder.is_dir() and not (folder / MANIFEST).exists():
        others = [
            p.name
            for p in folder.iterdir()
            if not (SHARD_NAME.match(p.name) or TMP_MANIFEST.match(p.name) or p.name == LOCK)
        ]
        if others:
            raise InputError(
                f"path: expected a new folder or an existing state index, {str(folder)!r} holds other files "
                f"({', '.join(sorted(others)[:3])})"
            )


def current_checksum(folder: Path) -> str | None:
    """The checksum of the manifest now in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        return str(json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("checksum"))
    except (OSError, ValueError, AttributeError):
        return None


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.exists():
        raise IndexCorruptError(
            f"index {folder}: expected {MANIFEST}, found none (not a state index, or its first save was interrupted)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"index {folder}: {MANIFEST} is truncated or not JSON ({exc})") from exc
    if not isinstance(data, dict) or "checksum" not in data:
        raise IndexCorruptError(f"index {folder}: expected a JSON object with a checksum in {MANIFEST}, got something else")
    stored = data.pop("checksum")
    actual = sha256(canonical(data))
    if stored != actual:
        raise IndexCorruptError(
            f"index {folder}: {MANIFEST} checksum mismatch (expected {str(stored)[:16]}..., got {actual[:16]}...): "
            "the manifest was modified or damaged"
        )
    return {**data, "checksum": actual}


def verify_shard(path: Path, info: ShardInfo) -> None:
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


class ShardReader:
    """Reads rows of state from one shard through safetensors' memory map; only the rows asked for are loaded."""

    def __init__(self, path: Path, backend: str) -> None:
        from safetensors import safe_open

        self.path, self.backend = path, backend
        try:
            self._file: Any = safe_open(str(path), framework="pt", device="cpu")
            keys: Iterable[str] = self._file.keys()
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise IndexCorruptError(f"index {path.parent}: shard {path.name} cannot be opened ({exc})") from exc
        self._names: dict[int, list[str]] = {}
        self._masks: set[int] = set()
        try:
            for key in keys:
                row, _, name = key.partition(":")
                if name.startswith("state:"):
                    self._names.setdefault(int(row), []).append(name[len("state:") :])
                elif name == "mask":
                    self._masks.add(int(row))
        except ValueError as exc:
            raise IndexCorruptError(f"index {path.parent}: shard {path.name} has an unexpected tensor ({exc})") from exc

    def state(self, row: int) -> State:
        try:
            names = self._names[row]
            tensors = {n: self._file.get_tensor(f"{row}:state:{n}") for n in names}
            lengths = self._file.get_tensor(f"{row}:lengths")
            mask = self._file.get_tensor(f"{row}:mask") if row in self._masks else None
        except Exception as exc:
            raise IndexCorruptError(f"index {self.path.parent}: shard {self.path.name} lacks row {row} ({exc})") from exc
        return State(tensors=tensors, lengths=lengths, mask=mask, backend=self.backend)

    def close(self) -> None:
        self._names.clear()
        self._file = None

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
