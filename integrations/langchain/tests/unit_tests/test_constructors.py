"""Constructors as partner packages have them, on tiny random models: from_pretrained, lazy model=, one shared engine,
unknown arguments refused, and a cache key / ls_model_name that identify the checkpoint and settings actually loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.documents import Document

from langchain_overflow import ChatOverflow, OverflowLLM, OverflowReranker, OverflowRetriever
from overflow_core import OPRM
from tests.engines import tiny_corpus


def _folder(engine: OPRM) -> Path:
    return Path(engine.model.config._name_or_path)


@pytest.fixture(scope="module")
def twin_folders(engine: OPRM, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two checkpoints in folders of the same name (``a/ckpt``, ``b/ckpt``): the second's weights are the first's plus
    noise, so greedy answers differ."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("twins")
    first, second = root / "a" / "ckpt", root / "b" / "ckpt"
    shutil.copytree(_folder(engine), first)
    shutil.copytree(_folder(engine), second)
    weights = load_file(str(second / "model.safetensors"))
    generator = torch.Generator().manual_seed(1)
    noisy = {k: (v + 0.5 * torch.randn(v.shape, generator=generator)).contiguous() for k, v in weights.items()}
    save_file(noisy, str(second / "model.safetensors"), metadata={"format": "pt"})
    return first, second


def test_the_llm_cache_never_mixes_checkpoints_in_folders_of_the_same_name(twin_folders: tuple[Path, Path]) -> None:
    first, second = (OPRM.from_pretrained(p) for p in twin_folders)
    assert first.name == second.name == "ckpt"
    uncached = [str(ChatOverflow(engine=e, max_tokens=8).invoke("Hello").content) for e in (first, second)]
    assert uncached[0] != uncached[1], "the two checkpoints must answer differently for this test to mean anything"

    cache = InMemoryCache()
    cached = [str(ChatOverflow(engine=e, max_tokens=8, cache=cache).invoke("Hello").content) for e in (first, second)]
    assert cached == uncached, "the second checkpoint got the first one's cached answer"
    llms = [OverflowLLM(engine=e, max_tokens=8, cache=cache) for e in (first, second)]
    assert [llm.invoke("Hello") for llm in llms] == [
        OverflowLLM(engine=e, max_tokens=8).invoke("Hello") for e in (first, second)
    ]

    names = [ChatOverflow(engine=e)._get_ls_params()["ls_model_name"] for e in (first, second)]
    assert names[0] != names[1] and all(n.startswith("ckpt@") for n in names), names
    # the same checkpoint loaded twice is one model for the cache (a persistent cache serves it across processes)
    again = OPRM.from_pretrained(twin_folders[0])
    assert ChatOverflow(engine=again)._get_ls_params()["ls_model_name"] == names[0]
    # settings are part of what was loaded
    other = OPRM.from_pretrained(twin_folders[0], chunk_tokens=32)
    assert ChatOverflow(engine=other)._get_ls_params()["ls_model_name"] != names[0]


def test_a_rewritten_checkpoint_is_a_new_model(engine: OPRM, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(_folder(engine), folder)
    before = ChatOverflow(engine=OPRM.from_pretrained(folder))._get_ls_params()["ls_model_name"]
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new modification time: retrained in place
    after = ChatOverflow(engine=OPRM.from_pretrained(folder))._get_ls_params()["ls_model_name"]
    assert before != after


def test_from_pretrained_splits_fields_from_engine_settings_and_shares_the_engine(engine: OPRM) -> None:
    folder = _folder(engine)
    chat = ChatOverflow.from_pretrained(folder, chunk_tokens=32, max_new_tokens=5, max_tokens=3, temperature=0.0)
    assert chat.engine.config.chunk_tokens == 32 and chat.engine.config.max_new_tokens == 5
    assert chat.max_tokens == 3 and chat.model == str(folder)
    llm = OverflowLLM.from_pretrained(folder, chunk_tokens=32, max_new_tokens=5)
    assert llm.engine is chat.engine, "the same checkpoint and settings: one engine, one state cache"
    assert ChatOverflow.from_pretrained(folder).engine is not chat.engine, "other settings: another engine"
    assert ChatOverflow.from_pretrained(model=str(folder), chunk_tokens=32, max_new_tokens=5).engine is chat.engine
    usage = chat.invoke("Hello").usage_metadata
    assert usage is not None and usage["output_tokens"] <= 3


def test_from_pretrained_passes_loader_keywords_through(engine: OPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []

    def fake_from_pretrained(name_or_path: Any = None, **kwargs: Any) -> OPRM:
        seen.append((name_or_path, kwargs))
        return OPRM(engine.model, engine.tokenizer, engine.config)

    monkeypatch.setattr(OPRM, "from_pretrained", staticmethod(fake_from_pretrained))
    chat = ChatOverflow.from_pretrained("org/some-model", revision="v2", device="cpu", dtype="float32", max_tokens=4)
    assert seen == [("org/some-model", {"revision": "v2", "device": "cpu", "dtype": "float32"})]
    assert chat.max_tokens == 4


def test_model_loads_lazily_and_classes_built_from_it_share_one_engine(engine: OPRM) -> None:
    folder = str(_folder(engine))
    settings = {"chunk_tokens": 40}
    chat = ChatOverflow(model=folder, engine_kwargs=settings, max_tokens=4)
    assert chat.engine_ is None, "model= must not load anything before the first call"
    docs = [Document(page_content=t, metadata=m) for t, m in tiny_corpus()]
    retriever = OverflowRetriever(model=folder, engine_kwargs=settings, documents=docs, k=2)
    reranker = OverflowReranker(model=folder, engine_kwargs=settings)
    message = chat.invoke("Hello")
    assert message.content is not None and chat.engine_ is not None
    assert retriever.engine is chat.engine is reranker.engine
    assert chat.engine.config.chunk_tokens == 40


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ChatOverflow, {"temprature": 0.5}, "did you mean temperature"),
        (ChatOverflow, {"max_new_tokens": 3}, "did you mean max_tokens"),
        (ChatOverflow, {"chunk_tokens": 64}, "engine setting"),
        (ChatOverflow, {"timeout": 30}, "runs the model in this process"),
        (OverflowLLM, {"top_kk": 3}, "did you mean top_k"),
        (OverflowReranker, {"topn": 3}, "did you mean top_n"),
    ],
)
def test_unknown_arguments_are_refused_with_the_closest_name(
    engine: OPRM, cls: type, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(engine=engine, **kwargs)


def test_unknown_retriever_argument_is_refused(engine: OPRM) -> None:
    with pytest.raises(ValueError, match="'kk' is not a setting of OverflowRetriever; expected some of"):
        OverflowRetriever(engine=engine, documents=["some text"], kk=2)
    with pytest.raises(TypeError, match="did you mean temperature"):
        ChatOverflow.from_pretrained(_folder(engine), temprature=0.2)


def test_model_and_engine_must_agree(engine: OPRM) -> None:
    assert ChatOverflow(engine=engine, model=engine.name).model == engine.name
    assert ChatOverflow(engine=engine, model=str(_folder(engine))).engine is engine
    with pytest.raises(ValueError, match="model: this engine serves"):
        ChatOverflow(engine=engine, model="another-model")
    with pytest.raises(ValueError, match="engine_kwargs: used only to load the engine from model="):
        ChatOverflow(engine=engine, engine_kwargs={"chunk_tokens": 32})
    with pytest.raises(ValueError, match="model: this instance serves"):
        ChatOverflow(engine=engine).invoke("Hello", model="another-model")
