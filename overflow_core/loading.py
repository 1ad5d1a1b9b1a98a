"""Resolving and loading a checkpoint: a model folder or a Hugging Face hub id, to a model and tokenizer on a device.

1. Resolve (:func:`resolve`): a local folder is used as it is; a hub id is looked up in the local Hugging Face cache
   first (no network call when it is there) and downloaded only when it is not and the hub may be reached. Offline
   (``HF_HUB_OFFLINE=1``, or no network) a missing model fails with one line that says how to get it.
2. Consent: a checkpoint that ships its own Python code (``auto_map`` in ``config.json`` or ``tokenizer_config.json``)
   is refused unless ``trust_remote_code=True``.
3. Settings (:func:`load`): the preset layer (:mod:`overflow_core.presets`), then the checkpoint's ``overflow.json``,
   then the caller's keyword arguments, each overriding the one before.
4. Place: ``device="auto"`` is CUDA when torch sees one, else the CPU; ``dtype="auto"`` is bfloat16 on CUDA (float16 on
   GPUs without bfloat16) and float32 on the CPU. The optional CUDA kernels (``mamba-ssm``, ``causal-conv1d``) are used by
   transformers when installed; their absence is logged once per process, in place of transformers' warnings.

This module knows nothing about chunks, prompts or scoring; the engine (:meth:`overflow_core.OPRM.from_pretrained`) calls
:func:`load` and builds itself from what it returns.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from overflow_core.config import SETTINGS_FILE, OPRMConfig, load_settings
from overflow_core.errors import ConfigError, ModelLoadError, UnsupportedModelError, install_extra
from overflow_core.presets import Preset, apply_framing, preset_settings

__all__ = [
    "BUNDLED_MODEL_DIR",
    "Checkpoint",
    "Loaded",
    "hub_cache_dir",
    "load",
    "resolve",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)
BUNDLED_MODEL_DIR = Path(__file__).parent / "models" / "default"
_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# What a download fetches: configs, weights, tokenizer files, chat templates and (consented) modeling code.
_ALLOW = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja", "*.tiktoken", "tokenizer*"]
_IGNORE = ["original/*", "consolidated*", "onnx/*", "*.gguf"]
_WEIGHTS = ("*.safetensors", "*.bin")


# -- 1. resolve -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """Where a model's files are, and where they came from.

    Attributes:
        folder: a folder holding ``config.json``, the weights and the tokenizer files.
        repo_id: the hub id it was resolved from (``None`` for a local folder).
        revision: the revision asked for (``None``: the default branch).
        commit: the commit of the cached snapshot (the snapshot folder's name), for a hub id.
        downloaded: whether resolving it downloaded anything.
    """

    folder: Path
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    downloaded: bool = False
    bundled: bool = False

    @property
    def name(self) -> str:
        """A short name for logs and ``OPRM.name``: the hub id (``@revision`` when one was asked), else the folder's."""
        if self.bundled:
            return "overflow-default"
        if self.repo_id:
            return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id
        return self.folder.name


def _truthy(value: str) -> bool:
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the hub may not be called: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as the environment says *now*.

    ``huggingface_hub`` reads these variables once, at import; this reads them on every call, so setting one in a
    running process (a notebook, a test) takes effect here.
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var)
        if value:
            return _truthy(value)
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The hub cache folder: ``cache_dir``, else ``HF_HUB_CACHE`` / ``HUGGINGFACE_HUB_CACHE`` / ``HF_HOME/hub`` as the
    environment says now, else huggingface_hub's default (``~/.cache/huggingface/hub``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _looks_like_repo_id(text: str) -> bool:
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or text.endswith(".json"):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _has_weights(folder: Path) -> bool:
    return any(p.exists() for pattern in _WEIGHTS for p in folder.glob(pattern))  # exists(): a blob link may dangle


def _cached_revisions(storage: Path) -> str:
    """``main -> 1a2b3c4; snapshots 1a2b3c4, 9f8e7d6`` for a repo folder of the hub cache, or ``nothing``."""
    refs = storage / "refs"
    names = []
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            names.append(f"{ref.relative_to(refs).as_posix()} -> {ref.read_text().strip()[:12]}")
    snapshots = storage / "snapshots"
    commits = sorted(p.name[:12] for p in snapshots.iterdir()) if snapshots.is_dir() else []
    parts = [", ".join(names)] if names else []
    if commits:
        parts.append("snapshots " + ", ".join(commits))
    return "; ".join(parts) or "nothing"


def _how_to_get(repo_id: str, revision: str | None, cache: Path) -> str:
    rev = f" --revision {revision}" if revision else ""
    where = "" if cache == _default_cache() else f" --cache-dir {cache}"
    return (
        f"get it with `hf download {repo_id}{rev}{where}` on a machine with network "
        "(or point HF_HUB_CACHE at a cache that has it)"
    )


def _default_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _from_cache(repo_id: str, revision: str | None, cache: Path, token: Any) -> Path | None:
    """The complete cached snapshot of ``repo_id`` at ``revision``, or None; never calls the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # the patterns a download of ours uses: a snapshot we fetched is complete for them, not for the whole repo
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache),
                token=token,
                local_files_only=True,
                allow_patterns=_ALLOW,
                ignore_patterns=_IGNORE,
            )
        )
    except LocalEntryNotFoundError:  # IncompleteSnapshotError included
        return None
    return folder if (folder / "config.json").exists() and _has_weights(folder) else None


def _download(repo_id: str, revision: str | None, cache: Path, token: Any) -> Path:
    """Fetch what loading needs (configs, safetensors weights, else .bin weights, tokenizer files, code) into the cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    rev = f" revision {revision!r}" if revision else ""
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache),
                token=token,
                allow_patterns=_ALLOW,
                ignore_patterns=_IGNORE,
            )
        )
        if not _has_weights(folder):  # an older repo with PyTorch .bin weights only
            folder = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=str(cache),
                    token=token,
                    allow_patterns=[*_ALLOW, "*.bin"],
                    ignore_patterns=_IGNORE,
                )
            )
    except GatedRepoError as exc:
        raise ModelLoadError(
            f"model {repo_id!r} is gated on the Hugging Face hub: accept its terms at https://huggingface.co/{repo_id}, "
            "then pass token=... (or run `hf auth login`)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"model {repo_id!r}: not a local folder, and no such repository on the Hugging Face hub (a private one "
            "needs token=... or `hf auth login`)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelLoadError(f"model {repo_id!r}:{rev} does not exist on the Hugging Face hub") from exc
    except (LocalEntryNotFoundError, OSError) as exc:  # no network, hub down, disk full
        raise ModelLoadError(
            f"model {repo_id!r}{rev}: not in the Hugging Face cache at {cache}, and downloading it failed "
            f"({_one_line(exc.__cause__ or exc)}); {_how_to_get(repo_id, revision, cache)}"
        ) from exc
    if not (folder / "config.json").exists() or not _has_weights(folder):
        raise ModelLoadError(
            f"model {repo_id!r}{rev}: the repository has no config.json with safetensors or .bin weights; "
            "expected a transformers causal LM checkpoint"
        )
    return folder


def resolve(
    name_or_path: str | Path | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
) -> Checkpoint:
    """Find a checkpoint's files: a local folder, or a hub id from the cache (downloaded when missing and online).

    Args:
        name_or_path: a model folder, a hub id (``"tiiuae/falcon-mamba-7b-instruct"``), or None for the bundled model.
            A string that is an existing folder is that folder; a :class:`~pathlib.Path` is always a folder.
        revision: a branch, tag or commit of a hub id (``None``: the default branch).
        cache_dir: the hub cache (default: ``HF_HUB_CACHE``, as the environment says at the call).
        token: a hub token for gated or private repos (``None``: the one ``hf auth login`` stored, or ``HF_TOKEN``).
        trust_remote_code: allow a checkpoint that ships its own modeling code; refused otherwise.

    Raises:
        ModelLoadError: one line naming what is missing and how to get it; or remote code without consent.

    Example:
        >>> resolve("tiiuae/falcon-mamba-7b-instruct").folder  # doctest: +SKIP
        PosixPath('~/.cache/huggingface/hub/models--tiiuae--falcon-mamba-7b-instruct/snapshots/...')
    """
    if name_or_path is None:
        if revision is not None:
            raise ConfigError(f"revision: applies to hub ids, got {revision!r} for the bundled model")
        checkpoint = Checkpoint(BUNDLED_MODEL_DIR, bundled=True)
        if not BUNDLED_MODEL_DIR.is_dir():
            raise ModelLoadError(
                f"model path: expected a model folder, {str(BUNDLED_MODEL_DIR)!r} does not exist "
                "(the bundled model is missing from this installation)"
            )
    else:
        text = str(name_or_path)
        local = Path(text).expanduser()
        if isinstance(name_or_path, Path) or local.exists() or not _looks_like_repo_id(text):
            if not local.exists():
                raise ModelLoadError(f"model path: expected a model folder or a hub id, {text!r} does not exist")
            if not local.is_dir():
                raise ModelLoadError(f"model path: expected a model folder, {text!r} is a file")
            if revision is not None:
                raise ConfigError(f"revision: applies to hub ids, got {revision!r} for the local folder {text!r}")
            checkpoint = Checkpoint(local)
        else:
            checkpoint = _resolve_hub(text, revision, hub_cache_dir(cache_dir), token)
    if not (checkpoint.folder / "config.json").exists():
        raise ModelLoadError(
            f"model path {str(checkpoint.folder)!r}: expected a Hugging Face model folder with config.json"
        )
    _check_remote_code(checkpoint, trust_remote_code)
    return checkpoint


def _resolve_hub(repo_id: str, revision: str | None, cache: Path, token: Any) -> Checkpoint:
    from huggingface_hub.constants import REPO_ID_SEPARATOR

    folder = _from_cache(repo_id, revision, cache, token)
    if folder is not None:
        logger.info("model %s%s from the Hugging Face cache: %s", repo_id, f"@{revision}" if revision else "", folder)
        return Checkpoint(folder, repo_id=repo_id, revision=revision, commit=folder.name)
    storage = cache / ("models" + REPO_ID_SEPARATOR + repo_id.replace("/", REPO_ID_SEPARATOR))
    if hub_offline():
        rev = f" revision {revision!r}" if revision else ""
        if storage.is_dir():
            ref = storage / "refs" / (revision or "main")
            commit = ref.read_text().strip() if ref.is_file() else (revision or "")
            state = "is only partly" if (storage / "snapshots" / commit).is_dir() else "is not"
            what = (
                f"model {repo_id!r}{rev} {state} in the Hugging Face cache at {cache} "
                f"(cached: {_cached_revisions(storage)})"
            )
        else:
            what = f"model {repo_id!r} is not a local folder and not in the Hugging Face cache at {cache}"
        raise ModelLoadError(
            f"{what}; offline (HF_HUB_OFFLINE=1), nothing is downloaded: {_how_to_get(repo_id, revision, cache)}"
        )
    logger.info("downloading %s%s into %s", repo_id, f"@{revision}" if revision else "", cache)
    folder = _download(repo_id, revision, cache, token)
    return Checkpoint(folder, repo_id=repo_id, revision=revision, commit=folder.name, downloaded=True)


# -- 2. consent to remote code ----------------------------------------------------------------------------------------------
def _auto_map(folder: Path) -> dict[str, str]:
    """``{file: "AutoModelForCausalLM -> modeling_x.Cls, ..."}`` for the JSON files of ``folder`` that carry ``auto_map``."""
    found: dict[str, str] = {}
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.exists():
            continue
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{path}: expected a JSON object, could not read it ({_one_line(exc)})") from exc
        auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
        if auto_map:
            items = auto_map.items() if isinstance(auto_map, dict) else [("AutoTokenizer", auto_map)]
            found[name] = ", ".join(f"{k} -> {v}" for k, v in items)
    return found


def _check_remote_code(checkpoint: Checkpoint, trust_remote_code: bool) -> None:
    found = _auto_map(checkpoint.folder)
    if not found:
        return
    where = "; ".join(f"auto_map in {name}: {what}" for name, what in found.items())
    if not trust_remote_code:
        raise ModelLoadError(
            f"model {checkpoint.name!r} ships its own Python code, which runs when it loads ({where}); read it in "
            f"{checkpoint.folder}, then pass trust_remote_code=True (oprm: --trust-remote-code) to allow it"
        )
    logger.warning("model %s: running its own code (trust_remote_code=True; %s)", checkpoint.name, where)


# -- 3-4. settings, device, dtype, weights ------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> CUDA when torch sees a GPU, else the CPU; anything else must exist on this machine."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: {str(dev)!r} asked for, but torch {torch.__version__} sees no CUDA device; use device='auto' "
                "or 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {str(dev)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> str:
    """``"auto"`` (or None) -> ``"bfloat16"`` on CUDA (``"float16"`` where the GPU lacks bfloat16), ``"float32"``
    elsewhere; names (``"bf16"``, ``"float16"``...) and torch dtypes map to one of the three names the config takes."""
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if isinstance(dtype, torch.dtype):
        for name, value in _TORCH_DTYPES.items():
            if value == dtype:
                return name
    found = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if found is None:
        raise ConfigError(f"dtype: expected 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    return found


@dataclass
class Loaded:
    """What :func:`load` returns: the model on its device, its tokenizer and the merged engine settings.

    ``settings`` holds engine settings (``chunk_tokens``, ``template``...); ``device`` and ``dtype`` are separate.
    ``preset`` is the preset's name, ``"paper"``, or None.
    """

    model: Any
    tokenizer: Any
    checkpoint: Checkpoint
    settings: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: str = "float32"
    preset: str | None = None

    @property
    def name(self) -> str:
        return self.checkpoint.name


def _settings_layers(
    checkpoint: Checkpoint, tokenizer: Any, hf_config: Any, preset: str | None, overrides: dict[str, Any]
) -> tuple[str | None, dict[str, Any]]:
    """OPRMConfig defaults < preset (or the paper's defaults) < overflow.json < keyword arguments."""
    has_file = (checkpoint.folder / SETTINGS_FILE).exists()
    chosen, layer = preset_settings(
        preset,
        tokenizer=tokenizer,
        hf_config=hf_config,
        repo_id=checkpoint.repo_id,
        folder=None if checkpoint.repo_id else checkpoint.folder,
        has_settings_file=has_file,
    )
    merged = apply_framing(chosen, {**layer, **load_settings(checkpoint.folder), **overrides})
    name = chosen.name if isinstance(chosen, Preset) else chosen
    return name, merged


def load(
    name_or_path: str | Path | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    preset: str | None = None,
    settings: dict[str, Any] | None = None,
) -> Loaded:
    """Resolve, check, and load a checkpoint; see the module docstring for each step.

    Args:
        preset: ``None``/``"auto"``, ``"paper"``, ``"none"`` or a preset name (see :func:`overflow_core.presets.preset_settings`).
        settings: engine settings that override everything else (``chunk_tokens=...``).
        The rest: see :func:`resolve`, :func:`resolve_device` and :func:`resolve_dtype`.

    Raises:
        ConfigError: an unknown or out-of-range setting, device or dtype (before any weight is read).
        ModelLoadError: see :func:`resolve`; or weights/tokenizer that do not load.
        UnsupportedModelError: a ``model_type`` no backend handles.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    overrides = dict(settings or {})
    unknown = {
        k: v for k, v in overrides.items() if k not in OPRMConfig.__dataclass_fields__ or k in ("device", "dtype")
    }
    if unknown:  # refused before anything is read, with the config's own message (which names the known settings)
        try:
            OPRMConfig().with_overrides(**unknown)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        raise ConfigError(f"{', '.join(sorted(unknown))}: pass device= and dtype= as arguments of their own")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    checkpoint = resolve(
        name_or_path, revision=revision, cache_dir=cache_dir, token=token, trust_remote_code=trust_remote_code
    )
    where = str(checkpoint.folder) if checkpoint.repo_id is None else checkpoint.name
    folder = str(checkpoint.folder)
    try:
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises several types for a bad config
        raise ModelLoadError(f"model path {where!r}: could not read config.json ({_one_line(exc)})") from exc
    from overflow_core.backends import SUPPORTED

    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED:
        raise UnsupportedModelError(
            f"model at {where!r}: model_type {model_type!r} is not supported; expected one of {', '.join(sorted(SUPPORTED))}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"model path {where!r}: could not load the tokenizer ({_one_line(exc)})") from exc
    chosen, merged = _settings_layers(checkpoint, tokenizer, hf_config, preset, overrides)
    try:  # every setting checked before the weights are read
        OPRMConfig().with_overrides(**merged, device=str(dev), dtype=dt)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, trust_remote_code=trust_remote_code, dtype=_TORCH_DTYPES[dt]
        )
        model = model.to(dev)
    except Exception as exc:
        raise ModelLoadError(
            f"model path {where!r}: could not load the weights or tokenizer ({_one_line(exc)})"
        ) from exc
    note_kernels(model, dev)
    logger.info(
        "loaded %s (%s) on %s in %s; settings: preset %s%s",
        checkpoint.name,
        model_type,
        dev,
        dt,
        chosen,
        ", overflow.json" if (checkpoint.folder / SETTINGS_FILE).exists() else "",
    )
    return Loaded(model, tokenizer, checkpoint, merged, dev, dt, chosen)


# -- the optional CUDA kernels ------------------------------------------------------------------------------------------------
_KERNELS = (("mamba_ssm", "mamba-ssm"), ("causal_conv1d", "causal-conv1d"))
_FALLBACK = "is falling back to its reference PyTorch implementation"
_HUB_KERNELS_LOGGER = "transformers.integrations.hub_kernels"
_noted: set[tuple[str, tuple[str, ...]]] = set()
_uses: dict[type, bool] = {}
_lock = threading.Lock()


class _KernelFallbackFilter(logging.Filter):
    """Drops transformers' per-function "falling back to its reference PyTorch implementation" warnings (four lines for a
    Mamba-2 model, each once per process); :func:`note_kernels` says the same once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _FALLBACK not in record.getMessage()


def _route_kernel_fallbacks() -> None:
    target = logging.getLogger(_HUB_KERNELS_LOGGER)
    if not any(isinstance(f, _KernelFallbackFilter) for f in target.filters):
        target.addFilter(_KernelFallbackFilter())


def _uses_kernels(model: Any) -> bool:
    """Whether the model's modeling code (its class or a base class) can call mamba-ssm or causal-conv1d kernels."""
    cls = type(model)
    if cls not in _uses:
        found = False
        for base in cls.__mro__:
            file = getattr(sys.modules.get(base.__module__), "__file__", None)
            if file and not base.__module__.startswith(("torch", "builtins", "transformers.modeling_utils")):
                try:
                    text = Path(file).read_text(encoding="utf-8")
                except OSError:
                    continue
                if any(package in text for package, _ in _KERNELS):
                    found = True
                    break
        _uses[cls] = found
    return _uses[cls]


def _kernel_problems() -> list[str]:
    """``["mamba-ssm (not installed)", ...]``: the kernel packages that transformers cannot use here."""
    problems = []
    for package, dist in _KERNELS:
        if importlib.util.find_spec(package) is None:
            problems.append(f"{dist} (not installed)")
            continue
        try:
            importlib.import_module(package)
        except Exception as exc:  # a build for another CUDA or torch fails at import
            problems.append(f"{dist} ({_one_line(exc)})")
    return problems


def note_kernels(model: Any, device: torch.device) -> None:
    """Log once per process (per device type and outcome) whether the optional CUDA kernels serve this model, and route
    transformers' per-function fallback warnings into that one line."""
    _route_kernel_fallbacks()
    if not _uses_kernels(model):
        return
    if device.type != "cuda":
        key: tuple[str, tuple[str, ...]] = (device.type, ())
        message = "mamba-ssm / causal-conv1d kernels run on CUDA only: on %s transformers' PyTorch path runs (correct, slower)"
        args: tuple[Any, ...] = (device.type,)
        level = logging.INFO
    else:
        problems = _kernel_problems()
        key = ("cuda", tuple(problems))
        if problems:
            message = (
                "CUDA kernels unavailable: %s; transformers' PyTorch path runs instead (correct, much slower); "
                f"{install_extra('cuda')}"
            )
            args = (", ".join(problems),)
            level = logging.WARNING
        else:
            message, args, level = "using the CUDA kernels mamba-ssm and causal-conv1d", (), logging.INFO
    with _lock:
        if key in _noted:
            return
        _noted.add(key)
    logger.log(level, message, *args)
