"""Loading a model the way users do (overflow_core.loading, overflow_core.presets), offline, through the real
huggingface_hub code.

A Hugging Face cache is built in a temporary folder exactly as ``hf download`` lays it out
(``models--org--name/{blobs,snapshots/<commit>,refs/<ref>}``) from tiny random models, and ``HF_HUB_CACHE`` points at it.
Every test runs under a guard that makes any internet socket connection fail and records the attempt, so a hidden
download fails the test even where a network exists. GPU paths carry the ``gpu`` marker and skip without CUDA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from overflow_core import OPRM, ConfigError, ModelLoadError, OPRMConfig, loading
from overflow_core.presets import (
    PAPER_CHUNK_TOKENS,
    PAPER_INSTRUCTION,
    PAPER_MAX_NEW_TOKENS,
    PAPER_NOT_FOUND,
    PRESETS,
    chat_end_marker,
    find_preset,
    paper_settings,
)
from overflow_core.testing import make_tiny_model_dir

REV1 = "1" * 40
REV2 = "2" * 40
FALCON3 = "tiiuae/Falcon3-Mamba-7B-Instruct"
TINY = "tiny-org/tiny-mamba2"
QUESTION = "What is the locker number of Alice Baker?"
DOCS = ["Alice Baker's locker number is 4412. Bob Smith lives in Oslo."]


# -- the network guard ------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any internet connection (or DNS lookup) raises and is recorded; a test that expects one clears the record."""
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(f"connect {address}")
            raise ConnectionRefusedError(f"test_loading: network blocked ({address})")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(f"getaddrinfo {host}")
        raise socket.gaierror(f"test_loading: network blocked (DNS lookup of {host})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"a network call was attempted: {attempts}"


def test_the_guard_blocks_and_records_a_connection(no_network: list[str]) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    assert no_network, "the guard must see the attempt, or a hidden download would go unnoticed"
    no_network.clear()


# -- a hub cache in a temporary folder ---------------------------------------------------------------------------------
def _add_snapshot(cache: Path, repo_id: str, commit: str, source: Path, refs: tuple[str, ...], blobs: bool) -> Path:
    """Lay ``source``'s files out as huggingface_hub does: blobs named by hash with relative links from
    ``snapshots/<commit>/`` (or plain files when ``blobs`` is False), and ``refs/<ref>`` holding the commit."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in sorted(p for p in source.iterdir() if p.is_file()):
        if blobs:
            data = file.read_bytes()
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
        else:
            shutil.copy(file, snapshot / file.name)
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return snapshot


def _perturbed(source: Path, out: Path) -> Path:
    """A copy of a model folder whose weights differ (every tensor + 0.5), so which snapshot loaded is visible."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, out)
    weights = load_file(str(out / "model.safetensors"))
    save_file({k: v + 0.5 for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Any]:
    """A hub cache with ``tiny-org/tiny-mamba2`` (main -> REV1 as blobs and links, tag v2 -> REV2 as plain files, both
    without overflow.json) and ``tiiuae/Falcon3-Mamba-7B-Instruct`` (a tiny falcon_mamba model under that id)."""
    root = tmp_path_factory.mktemp("hub")
    one = make_tiny_model_dir(root / "src1", tokenizer_dir, "mamba2")
    (one / "overflow.json").unlink()
    two = _perturbed(one, root / "src2")
    falcon = make_tiny_model_dir(root / "src3", tokenizer_dir, "falcon_mamba")
    (falcon / "overflow.json").unlink()
    cache = root / "cache"
    _add_snapshot(cache, TINY, REV1, one, ("main",), blobs=True)
    _add_snapshot(cache, TINY, REV2, two, ("v2",), blobs=False)
    _add_snapshot(cache, FALCON3, REV1, falcon, ("main",), blobs=True)
    return {"cache": cache, "one": one, "two": two}


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, hub: dict[str, Any]) -> Path:
    """HF_HUB_CACHE at the test cache and HF_HUB_OFFLINE=1, in the environment and in huggingface_hub's constants
    (which it reads once, at import: patched too so the hub's own offline guard is on)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return Path(hub["cache"])


def _weight(model: Any) -> torch.Tensor:
    return model.get_input_embeddings().weight.detach().float().cpu()


def _file_weight(folder: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    return next(v for k, v in weights.items() if "embed" in k).float()


# -- by id, by revision, missing ------------------------------------------------------------------------------------------
def test_a_hub_id_loads_from_the_cache_with_the_paper_settings(offline: Path, hub: dict[str, Any]) -> None:
    oprm = OPRM.from_pretrained(TINY)
    assert oprm.name == TINY
    assert torch.equal(_weight(oprm.model), _file_weight(hub["one"])), "main must resolve to REV1's weights"
    c = oprm.config
    assert (c.chunk_tokens, c.max_new_tokens, c.not_found, c.instruction) == (
        PAPER_CHUNK_TOKENS,
        PAPER_MAX_NEW_TOKENS,
        PAPER_NOT_FOUND,
        PAPER_INSTRUCTION,
    )
    assert c.stop == ("<|end|>",), "stop must be the chat template's end marker, read from the template"
    assert f'"{PAPER_NOT_FOUND}"' in oprm.template.suffix and PAPER_INSTRUCTION in oprm.template.prefix
    assert (c.device, c.dtype) == ("cpu", "float32") and oprm.model.dtype == torch.float32
    assert isinstance(oprm.answer(QUESTION, DOCS, max_new_tokens=2).text, str)


def test_a_revision_picks_its_snapshot(offline: Path, hub: dict[str, Any]) -> None:
    one, two = _file_weight(hub["one"]), _file_weight(hub["two"])
    assert (one - two).abs().min() >= 0.49, "the two snapshots must differ everywhere for this test to mean anything"
    by_commit = OPRM.from_pretrained(TINY, revision=REV2)
    by_tag = OPRM.from_pretrained(TINY, revision="v2")
    by_main = OPRM.from_pretrained(TINY, revision="main")
    assert torch.equal(_weight(by_commit.model), two) and torch.equal(_weight(by_tag.model), two)
    assert torch.equal(_weight(by_main.model), one)
    assert by_tag.name == f"{TINY}@v2"


def test_a_missing_id_fails_offline_in_one_line(offline: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        OPRM.from_pretrained("tiny-org/absent")
    message = str(err.value)
    assert "\n" not in message
    assert "not in the Hugging Face cache" in message and str(offline) in message
    assert "`hf download tiny-org/absent`" in message and "HF_HUB_OFFLINE=1" in message


def test_a_missing_revision_fails_in_one_line_naming_what_is_cached(offline: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        OPRM.from_pretrained(TINY, revision="v9")
    message = str(err.value)
    assert "\n" not in message
    assert (
        "revision 'v9' is not in the Hugging Face cache" in message
        and f"main -> {REV1[:12]}" in message
        and f"v2 -> {REV2[:12]}" in message
    )
    assert f"`hf download {TINY} --revision v9`" in message
    with pytest.raises(ModelLoadError, match="revision '3333"):
        OPRM.from_pretrained(TINY, revision="3" * 40)


def test_a_snapshot_we_downloaded_is_complete_for_loading(
    offline: Path, hub: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download records the repository's whole file list (``trees/<commit>.json``) and fetches only what loading
    needs (safetensors, not the .bin or ONNX copies): the cache lookup must not call that incomplete, while a snapshot
    missing its weights must be."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

    cache = tmp_path / "cache"
    shutil.copytree(offline, cache, symlinks=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    storage = cache / ("models--" + TINY.replace("/", "--"))
    listed = [p.name for p in (storage / "snapshots" / REV1).iterdir()] + ["pytorch_model.bin", "onnx/model.onnx"]
    write_tree_cache(str(storage), REV1, {name: TreeCacheEntry(size=1, blob_id="0" * 40) for name in listed})
    assert loading.resolve(TINY).folder.name == REV1
    (storage / "snapshots" / REV1 / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"is only partly in the Hugging Face cache .*main -> 1111"):
        loading.resolve(TINY)


def test_the_environment_is_read_at_the_call(monkeypatch: pytest.MonkeyPatch, hub: dict[str, Any]) -> None:
    """HF_HUB_CACHE / HF_HUB_OFFLINE set after huggingface_hub was imported (its constants untouched) still apply."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert loading.hub_cache_dir() == hub["cache"] and loading.hub_offline()
    assert loading.resolve(TINY).folder.name == REV1
    monkeypatch.delenv("HF_HUB_CACHE")
    assert loading.resolve(TINY, cache_dir=hub["cache"], revision="v2").folder.name == REV2


def test_online_the_cache_comes_first_and_a_missing_model_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, hub: dict[str, Any], no_network: list[str]
) -> None:
    """With the hub allowed but no network: a cached model loads without a single connection attempt, and a missing
    one fails in one line after the (blocked) attempt to download it."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not loading.hub_offline()
    assert loading.resolve(TINY).folder.name == REV1
    assert not no_network, "a cached model must load without calling the hub"
    with pytest.raises(ModelLoadError) as err:
        loading.resolve("tiny-org/absent")
    assert no_network, "online, a missing model must be looked up on the hub (here: blocked by the guard)"
    no_network.clear()
    message = str(err.value)
    assert "\n" not in message and "downloading it failed" in message and "hf download tiny-org/absent" in message


def test_local_folders_and_mistakes(model_dir: Any, tmp_path: Path) -> None:
    folder = model_dir("mamba2")
    assert loading.resolve(str(folder)).folder == folder and loading.resolve(folder).repo_id is None
    with pytest.raises(ConfigError, match="revision: applies to hub ids"):
        loading.resolve(folder, revision="main")
    with pytest.raises(ModelLoadError, match="does not exist"):
        loading.resolve("./no/such/folder")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        loading.resolve(tmp_path / "file.txt")


# -- remote code ----------------------------------------------------------------------------------------------------------
WRAPPER = '''from transformers import Mamba2ForCausalLM


class WrappedMamba2ForCausalLM(Mamba2ForCausalLM):
    """A checkpoint's own modeling code: a supported class under another name."""
'''


def test_remote_code_is_refused_without_consent_and_runs_with_it(
    model_dir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder = tmp_path / "remote"
    shutil.copytree(model_dir("mamba2"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_wrapped.WrappedMamba2ForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_wrapped.py").write_text(WRAPPER)
    with pytest.raises(ModelLoadError) as err:
        OPRM.from_pretrained(folder)
    message = str(err.value)
    assert "\n" not in message and "trust_remote_code=True" in message
    assert "AutoModelForCausalLM -> modeling_wrapped.WrappedMamba2ForCausalLM" in message
    oprm = OPRM.from_pretrained(folder, trust_remote_code=True)
    assert type(oprm.model).__name__ == "WrappedMamba2ForCausalLM", "the checkpoint's own class must be the one loaded"
    assert isinstance(oprm.answer(QUESTION, DOCS, max_new_tokens=2).text, str)


# -- settings -----------------------------------------------------------------------------------------------------------
def test_settings_precedence(offline: Path, hub: dict[str, Any], tmp_path: Path) -> None:
    """OPRMConfig defaults < preset (or the paper's defaults) < overflow.json < keyword arguments."""
    defaults = OPRMConfig()
    auto = OPRM.from_pretrained(TINY).config
    assert (auto.chunk_tokens, auto.idk_filter, auto.not_found) == (PAPER_CHUNK_TOKENS, True, PAPER_NOT_FOUND)
    none = OPRM.from_pretrained(TINY, preset="none").config
    assert (none.chunk_tokens, none.max_new_tokens, none.not_found, none.stop) == (
        defaults.chunk_tokens,
        defaults.max_new_tokens,
        defaults.not_found,
        defaults.stop,
    )
    falcon3 = OPRM.from_pretrained(TINY, preset="falcon3-mamba-7b-instruct").config
    assert (falcon3.chunk_tokens, falcon3.idk_filter) == (PAPER_CHUNK_TOKENS, False)

    folder = tmp_path / "with-settings"
    shutil.copytree(hub["one"], folder)
    (folder / "overflow.json").write_text(json.dumps({"chunk_tokens": 48, "max_new_tokens": 8}))
    own = OPRM.from_pretrained(folder).config  # auto: a checkpoint with overflow.json gets no preset underneath
    assert (own.chunk_tokens, own.max_new_tokens, own.not_found) == (48, 8, defaults.not_found)
    layered = OPRM.from_pretrained(folder, preset="falcon3-mamba-7b-instruct").config
    assert (layered.chunk_tokens, layered.max_new_tokens, layered.idk_filter, layered.not_found) == (
        48,
        8,
        False,
        PAPER_NOT_FOUND,
    )
    top = OPRM.from_pretrained(folder, preset="falcon3-mamba-7b-instruct", chunk_tokens=30, idk_filter=True).config
    assert (top.chunk_tokens, top.max_new_tokens, top.idk_filter) == (30, 8, True)
    with pytest.raises(ConfigError, match="falcon-mamba-7b-instruct"):
        OPRM.from_pretrained(TINY, preset="falcon")


def test_a_preset_is_found_by_repo_id_folder_name_or_config(offline: Path, hub: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoConfig

    assert OPRM.from_pretrained(FALCON3).config.idk_filter is False, "Falcon3-Mamba's preset: no IDK filter"
    assert OPRM.from_pretrained(FALCON3, idk_filter=True).config.idk_filter is True
    folder = tmp_path / "Falcon3-Mamba-7B-Instruct"
    shutil.copytree(hub["one"], folder)
    assert find_preset(None, folder) is PRESETS["falcon3-mamba-7b-instruct"]
    assert find_preset(None, None, AutoConfig.for_model("falcon_mamba")) is PRESETS["falcon-mamba-7b-instruct"]
    assert find_preset(None, None, AutoConfig.for_model("recurrent_gemma")) is PRESETS["recurrentgemma-9b-it"]
    assert find_preset("google/RecurrentGemma-9b-it", None) is PRESETS["recurrentgemma-9b-it"]
    assert find_preset(TINY, None, AutoConfig.for_model("mamba2")) is None


def test_the_rwkv_framing_follows_the_final_not_found(offline: Path) -> None:
    oprm = OPRM.from_pretrained(TINY, preset="rwkv6-finch-7b", not_found="unknown")
    t = oprm.template
    assert t.prefix == f"Instruction: {PAPER_INSTRUCTION}\n\nInput: " and t.suffix == "\n\nResponse:"
    assert '"unknown"' in t.infix and '"Error"' not in t.infix


def test_the_end_marker_and_framing_come_from_the_tokenizer(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert chat_end_marker(tok) == "<|end|>"
    tok.chat_template = (  # ChatML, as Falcon-Mamba-Instruct's tokenizer has it
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    assert chat_end_marker(tok) == "<|im_end|>" and paper_settings(tok)["stop"] == ("<|im_end|>",)
    tok.chat_template = (  # Gemma's turns
        "{{ bos_token }}{% for m in messages %}{{'<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role'])"
        " + '\\n' + m['content'] + '<end_of_turn>\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
    )
    assert chat_end_marker(tok) == "<end_of_turn>"
    tok.chat_template = "{{ raise_exception('system message required') }}"
    assert chat_end_marker(tok) is None
    tok.chat_template = None
    assert chat_end_marker(tok) is None and "stop" not in paper_settings(tok)


# -- device and dtype ---------------------------------------------------------------------------------------------------
def test_device_and_dtype_auto(monkeypatch: pytest.MonkeyPatch, model_dir: Any) -> None:
    if not torch.cuda.is_available():
        assert loading.resolve_device("auto") == torch.device("cpu")
        oprm = OPRM.from_pretrained(model_dir("mamba2"))
        assert next(oprm.model.parameters()).device.type == "cpu" and oprm.model.dtype == torch.float32
        with pytest.raises(ConfigError, match="no CUDA device"):
            OPRM.from_pretrained(model_dir("mamba2"), device="cuda")
    assert loading.resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert loading.resolve_dtype(torch.bfloat16, torch.device("cpu")) == "bfloat16"
    assert loading.resolve_dtype("fp16", torch.device("cpu")) == "float16"
    with pytest.raises(ConfigError, match="dtype"):
        loading.resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="device"):
        loading.resolve_device("gpu please")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loading.resolve_device("auto") == torch.device("cuda")
    assert loading.resolve_dtype("auto", torch.device("cuda")) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # pre-Ampere GPUs
    assert loading.resolve_dtype("auto", torch.device("cuda")) == "float16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_placement_on_a_gpu(model_dir: Any) -> None:  # pragma: no cover - runs on GPU machines only
    oprm = OPRM.from_pretrained(model_dir("mamba2"))
    assert next(oprm.model.parameters()).device.type == "cuda"
    assert oprm.model.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert isinstance(oprm.answer(QUESTION, DOCS, max_new_tokens=2).text, str)


# -- the kernel warnings ------------------------------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_kernel_fallback_warnings_become_one_log_line(
    model_dir: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """transformers warns once per kernel function ("`causal_conv1d_fn` is falling back to ..."), four lines for a
    Mamba-2 model; they are dropped and one overflow_core line says the same, once per process."""
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(loading, "_noted", set())
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # an earlier in-process CLI run (oprm bench) may have quietened transformers
    seen = _Records()
    hf_root = logging.getLogger("transformers")
    hf_root.addHandler(seen)
    try:
        logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]  # transformers' once-per-message cache
        with caplog.at_level(logging.INFO, logger="overflow_core"):
            for _ in range(2):
                OPRM.from_pretrained(model_dir("mamba2")).answer(QUESTION, DOCS, max_new_tokens=2)
        ours = [r.getMessage() for r in caplog.records if "mamba-ssm" in r.getMessage()]
        assert len(ours) == 1, f"expected one line about the kernels, got {ours}"
        assert not [m for m in seen.messages if "falling back" in m]
        assert "falling back" not in capfd.readouterr().err

        # the control: without the filter the same run prints transformers' warnings, so the check above can fail
        engine = OPRM.from_pretrained(model_dir("mamba2"))
        target = logging.getLogger("transformers.integrations.hub_kernels")
        for f in [f for f in target.filters if isinstance(f, loading._KernelFallbackFilter)]:
            target.removeFilter(f)
        logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]
        try:
            engine.answer(QUESTION, DOCS, max_new_tokens=2)
        finally:
            loading._route_kernel_fallbacks()
        # at least the one-token convolution's (the library routes the scan, the convolution and the step to its own)
        assert len([m for m in seen.messages if "falling back" in m]) >= 1
    finally:
        hf_root.removeHandler(seen)
        hf_logging.set_verbosity(verbosity)


# -- the command line ---------------------------------------------------------------------------------------------------
def test_the_cli_loads_by_id_and_revision(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overflow_core.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text(DOCS[0])
    argv = ["ask", "-q", QUESTION, str(doc), "--model", TINY, "--revision", "v2", "--device", "cpu", "--json"]
    assert main([*argv, "--dtype", "float32", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "oprm"
    assert main(["ask", "-q", QUESTION, str(doc), "--model", "tiny-org/absent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not in the Hugging Face cache" in err and "hf download tiny-org/absent" in err
