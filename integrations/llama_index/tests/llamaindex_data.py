"""Shared test data: the question fixtures and the corpus the content tests ask about."""

from __future__ import annotations

import json
import random
from typing import Any

from llama_index.core import Document
from llama_index.core.agent.workflow import ReActAgent
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.tools import AsyncBaseTool

from overflow_core.synthetic.facts import Fact, FactWorld
from overflow_core.testing import sample_documents

QUESTION = "What is the locker number of Alice Baker?"
ANSWER = "4412"
FACT = "The locker number of Alice Baker is 4412."
ABSENT_QUESTION = "What is the locker number of Victor Lindqvist?"


def long_documents(seed: int = 7, n_docs: int = 3, chars: int = 2000) -> list[Document]:
    """Long reports of filler prose in the bundled model's training style, several 256-token chunks each; the second
    holds :data:`FACT` somewhere in the middle. File names are kept out of what the model reads."""
    rng = random.Random(seed)
    world = FactWorld("train")
    fact = Fact(key="Alice Baker", attr="locker number", value=ANSWER, sentence=FACT)
    return [
        Document(
            text=world.document(rng, [fact] if i == 1 else [], target_chars=chars),
            metadata={"file_name": f"report{i}.txt"},
            excluded_llm_metadata_keys=["file_name"],
        )
        for i in range(n_docs)
    ]


def tiny_documents() -> list[Document]:
    """Three short documents with a ``source`` each (several chunks each at the tiny model's 48 tokens)."""
    return [Document(text=text, metadata=meta) for text, meta in sample_documents()]


class ScriptedLLM(CustomLLM):
    """An agent's LLM that follows a script: first call the tool with the question, then answer with the observation.

    It records every prompt it is given, so a test can check what reached it.
    """

    tool_name: str
    question: str
    prompts: list[str] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=32768, num_output=256, is_chat_model=True, model_name="scripted")

    def _reply(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if len(self.prompts) == 1:
            call = json.dumps({"input": self.question})
            thought = "Thought: I need to use a tool to help me answer the question."
            return f"{thought}\nAction: {self.tool_name}\nAction Input: {call}"
        observation = prompt.rsplit("Observation:", 1)[1].strip().splitlines()[0]
        return f"Thought: I can answer without using any more tools.\nAnswer: {observation}"

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._reply(prompt))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self._reply(prompt)

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()


async def run_agent(tool: AsyncBaseTool, question: str) -> tuple[ScriptedLLM, str]:
    """Drive a ReActAgent with the scripted LLM and one tool; returns the LLM (with its prompts) and the final answer."""
    llm = ScriptedLLM(tool_name=tool.metadata.get_name(), question=question)
    agent = ReActAgent(tools=[tool], llm=llm)
    output = await agent.run(user_msg=question)
    return llm, str(output.response.content)  # type: ignore[attr-defined]  # the workflow's result is untyped
