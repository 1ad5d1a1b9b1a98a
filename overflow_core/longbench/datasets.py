"""LongBench's datasets as facts: prompt, generation budget, metric, category, language; and how OPRM runs each one.

The prompts and budgets are LongBench's published per-dataset settings (``config/dataset2prompt.json`` and
``config/dataset2maxlen.json`` in THUDM/LongBench); the metric assignment is LongBench's ``dataset2metric``; the
category grouping is the one LongBench's leaderboard averages over. The OPRM-specific facts (which datasets decode every
chunk, which keep only the end of the context, the "not found" sentence and where it goes, the paper's own shorter
generation budgets) come from the paper's evaluation script (github.com/assafbk/OPRM, ``eval_longbench_oprm.py``).

Nothing here runs a model or reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CATEGORIES",
    "DATASETS",
    "E_BUCKETS",
    "LONGBENCH_E",
    "PAPER_DATASETS",
    "V2",
    "DatasetSpec",
    "V2Spec",
    "dataset",
    "length_bucket",
]

Language = Literal["en", "zh", "code"]
Metric = Literal[
    "qa_f1", "qa_f1_zh", "rouge_l", "rouge_l_zh", "classification", "retrieval", "retrieval_zh", "count", "code_sim"
]
Handling = Literal["select", "summarize", "last_chunk"]

# the sentence OPRM adds to a prompt so that a chunk without the answer says so; "{nf}" is the engine's not-found phrase
_IDK_EN = ' If the answer does not exist in the passages, return "{nf}".'
_IDK_ZH = '如果文章中没有答案，请回答"{nf}"。'


@dataclass(frozen=True)
class DatasetSpec:
    """One LongBench v1 dataset.

    Attributes:
        name: LongBench's name (its file is ``{name}.jsonl``, the LongBench-E file ``{name}_e.jsonl``).
        prompt: LongBench's prompt with ``{context}`` and, for most datasets, ``{input}``.
        max_new_tokens: LongBench's generation budget.
        paper_max_new_tokens: the budget of the paper's script (shorter: 20 for QA, 250-500 for summaries); for the
            Chinese datasets, which the script does not run, that of their English counterparts.
        metric: LongBench's metric (see :mod:`overflow_core.longbench.metrics`).
        category / language: what LongBench's averages group by; code counts in both languages' averages.
        handling: ``"select"`` (OPRM: decode from the lowest-entropy chunk), ``"summarize"`` (decode from every chunk and
            join, as the paper does for summaries) or ``"last_chunk"`` (code completion: keep only the last chunk).
        idk_before: in OPRM mode the not-found sentence goes right before the last occurrence of this text in the
            prompt; ``None``: the dataset gets no sentence (and no not-found filter).
        idk_sentence: that sentence (``{nf}`` is replaced by the not-found phrase).
        idk_replaces: a word of LongBench's own prompt that plays the not-found role (qasper's ``"unanswerable"``): OPRM
            mode tells the model to write the not-found phrase instead, as the paper does.
        unanswerable: the dataset's own answer for "not in the document"; a not-found answer becomes this
            (``""`` where the dataset has no such convention, which scores 0).
        first_line: LongBench scores only the first line of the prediction (few-shot datasets).
        chat: LongBench's own evaluation wraps this dataset in the chat template (it does not for few-shot and code).
    """

    name: str
    prompt: str
    max_new_tokens: int
    paper_max_new_tokens: int
    metric: Metric
    category: str
    language: Language
    handling: Handling = "select"
    idk_before: str | None = None
    idk_sentence: str = _IDK_EN
    idk_replaces: str | None = None
    unanswerable: str = ""
    first_line: bool = False
    chat: bool = True

    @property
    def has_input(self) -> bool:
        """Whether the prompt takes the item's ``input`` (gov_report, multi_news, vcsum, passage_count and lcc do not)."""
        return "{input}" in self.prompt


_QA_MULTI = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
    "\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
    "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)

_SPECS = (
    # -- single-document QA
    DatasetSpec(
        "narrativeqa",
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}"
        "\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. "
        "Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
        128, 20, "qa_f1", "Single-Doc QA", "en", idk_before="\n\nQuestion: {input}",
    ),
    DatasetSpec(
        "qasper",
        "You are given a scientific article and a question. Answer the question as concisely as you can, using a "
        "single phrase or sentence if possible. If the question cannot be answered based on the information in the "
        'article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". '
        "Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as "
        "concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based "
        'on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", '
        '"no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',
        128, 20, "qa_f1", "Single-Doc QA", "en", idk_replaces="unanswerable", unanswerable="unanswerable",
    ),
    DatasetSpec(
        "multifieldqa_en",
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the "
        "above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64, 20, "qa_f1", "Single-Doc QA", "en", idk_before="\n\nQuestion: {input}",
    ),
    DatasetSpec(
        "multifieldqa_zh",
        "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。"
        "\n\n问题：{input}\n回答：",
        64, 20, "qa_f1_zh", "Single-Doc QA", "zh", idk_before="\n\n问题：{input}", idk_sentence=_IDK_ZH,
    ),
    # -- multi-document QA
    DatasetSpec("hotpotqa", _QA_MULTI, 32, 20, "qa_f1", "Multi-Doc QA", "en", idk_before="\n\nQuestion: {input}"),
    DatasetSpec("2wikimqa", _QA_MULTI, 32, 20, "qa_f1", "Multi-Doc QA", "en", idk_before="\n\nQuestion: {input}"),
    DatasetSpec("musique", _QA_MULTI, 32, 20, "qa_f1", "Multi-Doc QA", "en", idk_before="\n\nQuestion: {input}"),
    DatasetSpec(
        "dureader",
        "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
        128, 20, "rouge_l_zh", "Multi-Doc QA", "zh", idk_before="\n\n问题：{input}", idk_sentence=_IDK_ZH,
    ),
    # -- summarization
    DatasetSpec(
        "gov_report",
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}"
        "\n\nNow, write a one-page summary of the report.\n\nSummary:",
        512, 500, "rouge_l", "Summarization", "en", handling="summarize",
    ),
    DatasetSpec(
        "qmsum",
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one "
        "or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in "
        "one or more sentences.\n\nQuery: {input}\nAnswer:",
        512, 250, "rouge_l", "Summarization", "en", handling="summarize",
    ),
    DatasetSpec(
        "multi_news",
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write "
        "a one-page summary of all the news.\n\nSummary:",
        512, 250, "rouge_l", "Summarization", "en", handling="summarize",
    ),
    DatasetSpec(
        "vcsum",
        "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
        512, 500, "rouge_l_zh", "Summarization", "zh", handling="summarize",
    ),
    # -- few-shot learning (the context holds the examples; LongBench scores the first line, without chat template)
    DatasetSpec(
        "trec",
        "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
        64, 20, "classification", "Few-shot Learning", "en", first_line=True, chat=False,
    ),
    DatasetSpec(
        "triviaqa",
        "Answer the question based on the given passage. Only give me the answer and do not output any other words. "
        "The following are some examples.\n\n{context}\n\n{input}",
        32, 20, "qa_f1", "Few-shot Learning", "en", first_line=True, chat=False,
    ),
    DatasetSpec(
        "samsum",
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
        128, 250, "rouge_l", "Few-shot Learning", "en", first_line=True, chat=False,
    ),
    DatasetSpec(
        "lsht",
        "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
        64, 20, "classification", "Few-shot Learning", "zh", first_line=True, chat=False,
    ),
    # -- synthetic
    DatasetSpec(
        "passage_count",
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read "
        "these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, "
        "how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique "
        "paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and "
        "so on.\n\nThe final answer is: ",
        32, 20, "count", "Synthetic", "en",
    ),
    DatasetSpec(
        "passage_retrieval_en",
        "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract "
        "is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph "
        'that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer '
        "is: ",
        32, 20, "retrieval", "Synthetic", "en", idk_before="\n\nThe answer is: ",
        idk_sentence=' If the abstract is not from any of the paragraphs, write "{nf}".',
    ),
    DatasetSpec(
        "passage_retrieval_zh",
        "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n"
        '请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：',
        32, 20, "retrieval_zh", "Synthetic", "zh", idk_before="\n\n答案是：",
        idk_sentence='。如果摘要不出自任何段落，请回答"{nf}"',
    ),
    # -- code completion (counted in both languages' averages)
    DatasetSpec(
        "lcc", "Please complete the code given below. \n{context}Next line of code:\n",
        64, 40, "code_sim", "Code Completion", "code", handling="last_chunk", chat=False,
    ),
    DatasetSpec(
        "repobench-p", "Please complete the code given below. \n{context}{input}Next line of code:\n",
        64, 40, "code_sim", "Code Completion", "code", handling="last_chunk", chat=False,
    ),
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
"""Every LongBench v1 dataset, in LongBench's order."""

LONGBENCH_E: tuple[str, ...] = (
    "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec", "triviaqa", "samsum",
    "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
"""The datasets LongBench-E resamples uniformly over length (files ``{name}_e.jsonl``)."""

PAPER_DATASETS: tuple[str, ...] = (
    "narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum",
    "multi_news", "trec", "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p",
)
"""The 16 English datasets of the paper's LongBench figure (the Chinese ones are not in its script)."""

CATEGORIES: tuple[str, ...] = (
    "Single-Doc QA", "Multi-Doc QA", "Summarization", "Few-shot Learning", "Synthetic", "Code Completion",
)

E_BUCKETS: tuple[str, ...] = ("0-4k", "4-8k", "8k+")


def length_bucket(length: int) -> str:
    """LongBench-E's length interval of an item (``length`` counts words in English, characters in Chinese)."""
    return "0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"


@dataclass(frozen=True)
class V2Spec:
    """LongBench v2 (multiple choice over 8k-2M-word contexts): LongBench's 0-shot prompt and answer format.

    The prompt is LongBench v2's ``prompts/0shot.txt`` cut where the context and the question go: ``before`` +
    context + ``between`` + question and choices + ``after``. The budget is LongBench v2's for answers without
    chain of thought.
    """

    before: str = "Please read the following text and answer the question below.\n\n<text>\n"
    between: str = "\n</text>\n\nWhat is the correct answer to this question: "
    after: str = '\n\nFormat your response as follows: "The correct answer is (insert answer here)".'
    max_new_tokens: int = 128
    idk_sentence: str = ' If the text does not hold the answer, return "{nf}".'

    @staticmethod
    def question(question: str, choices: tuple[str, str, str, str]) -> str:
        """The question with its four choices, as LongBench v2 lays them out."""
        a, b, c, d = choices
        return f"{question.strip()}\nChoices:\n(A) {a.strip()}\n(B) {b.strip()}\n(C) {c.strip()}\n(D) {d.strip()}"


V2 = V2Spec()


def dataset(name: str) -> DatasetSpec:
    """The spec of a LongBench v1 dataset by name (``hotpotqa``; a LongBench-E name ``hotpotqa_e`` gives the same)."""
    from overflow_core.errors import ConfigError

    base = name[:-2] if name.endswith("_e") else name
    if base not in DATASETS:
        raise ConfigError(f"dataset: expected one of {', '.join(DATASETS)} (or NAME_e, or v2), got {name!r}")
    return DATASETS[base]
