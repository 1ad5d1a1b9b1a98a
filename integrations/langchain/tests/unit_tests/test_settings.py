"""Decoding fields are checked when the model is built, by the engine's own rules (overflow_core.config), and the error
names the field as LangChain names it, what was expected and what came; a call's overrides get the same check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from langchain_overflow import ChatOverflow, OverflowLLM
from overflow_core import OPRM
from overflow_core.errors import ConfigError

BAD = [
    ("max_tokens", -1, "max_tokens: expected a number of tokens >= 0, got -1"),
    ("max_tokens", True, "max_tokens: expected a number of tokens >= 0, got True (bool)"),
    ("max_tokens", "8", "max_tokens: expected a number of tokens >= 0, got '8' (str)"),
    ("temperature", -1, "temperature: expected 0 (greedy) or a number >= 1e-06, got -1"),
    ("temperature", float("nan"), "temperature: expected a finite number, got nan"),
    ("temperature", "0.5", "temperature: expected a number, got '0.5' (str)"),
    ("top_p", 2, "top_p: expected 0 < top_p <= 1, got 2"),
    ("top_p", 0, "top_p: expected 0 < top_p <= 1, got 0"),
    ("top_k", -1, "top_k: expected an integer >= 0 (0 disables), got -1"),
    ("seed", -1, "seed: expected an integer in [0, 2**64), got -1 (int)"),
    ("stop", [""], "stop[0]: expected a non-empty string, got '' (str)"),
    ("stop", [3], "stop[0]: expected a non-empty string, got 3 (int)"),
]


@pytest.mark.parametrize("cls", [ChatOverflow, OverflowLLM])
@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_decoding_fields_are_refused_at_construction(
    engine: OPRM, cls: type, name: str, value: Any, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        cls(engine=engine, **{name: value})
    [error] = caught.value.errors()
    assert error["loc"] == (name,)
    assert message in str(error["msg"]), error["msg"]


@pytest.mark.parametrize("cls", [ChatOverflow, OverflowLLM])
def test_good_decoding_fields_are_kept_and_normalised(engine: OPRM, cls: type) -> None:
    model = cls(engine=engine, temperature=1, max_tokens=0, top_k=0, top_p=1, seed=2**64 - 1, stop="###")
    assert model.temperature == 1.0 and isinstance(model.temperature, float)
    assert model.max_tokens == 0 and model.top_k == 0 and model.top_p == 1.0 and model.seed == 2**64 - 1
    assert model.stop == ["###"], "one stop string is one stop string, as the engine takes it"
    defaults = cls(engine=engine)
    assert (defaults.temperature, defaults.max_tokens, defaults.top_p, defaults.stop) == (0.0, None, None, None)


def test_a_call_override_or_a_later_assignment_is_checked_with_the_langchain_name(engine: OPRM) -> None:
    chat = ChatOverflow(engine=engine, max_tokens=4)
    with pytest.raises(ConfigError, match=r"^max_tokens: expected a number of tokens >= 0, got -1$"):
        chat.invoke("Hello", max_tokens=-1)
    llm = OverflowLLM(engine=engine, max_tokens=4)
    with pytest.raises(ConfigError, match=r"^top_p: expected 0 < top_p <= 1, got 1.5$"):
        llm.invoke("Hello", top_p=1.5)
    chat.temperature = -0.5  # pydantic does not validate assignment; the call does
    with pytest.raises(ConfigError, match=r"^temperature: expected 0 \(greedy\) or a number >= 1e-06, got -0.5$"):
        chat.invoke("Hello")


def test_from_pretrained_checks_the_fields_before_loading(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"  # loading it would fail with a different error
    with pytest.raises(ConfigError, match="max_tokens: expected a number of tokens >= 0, got -1"):
        ChatOverflow.from_pretrained(missing, max_tokens=-1)
    with pytest.raises(ConfigError, match="temperature: expected 0 \\(greedy\\) or a number >= 1e-06, got -1"):
        OverflowLLM.from_pretrained(missing, temperature=-1)
