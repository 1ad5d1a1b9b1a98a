"""LongBench's metrics, written here: token F1, ROUGE-L, classification, retrieval, count and code edit similarity.

Each function scores one prediction against one reference in [0, 1]; :func:`score` takes the best over an item's
references, as LongBench's scorer does. The definitions follow LongBench's ``metrics.py`` and the libraries it calls:

- **QA F1** (English): lower-case, drop ASCII punctuation, drop the articles a/an/the, split on whitespace; F1 of the
  token multisets.
- **ROUGE-L** (summaries): the summary-level ROUGE-L of the ``rouge`` package (1.0.1, its defaults) that LongBench
  calls. Both texts are cut into sentences at ``"."``, each sentence's words joined by single spaces and split on
  ``" "``; for every pair of a reference sentence and a predicted sentence the longest common subsequence of words is
  taken; ``hits`` is the number of *distinct* words in the union of all those subsequences; ``m`` and ``n`` are the
  numbers of distinct words of the reference and of the prediction; ``F = 2PR / (P + R + 1e-8)`` with ``R = hits/m``,
  ``P = hits/n``. Case is kept. An empty prediction scores 0 (the package raises, LongBench returns 0).
- **Classification** (trec, lsht): the classes named in the prediction (as substrings), less those that are a proper
  substring of the true class; ``1/len(matches)`` when the true class is among them, else 0.
- **Retrieval**: the share of the numbers in the prediction that equal the true paragraph's number
  (``Paragraph N`` / ``段落N`` in the reference). **Count**: the share of the numbers that equal the true count.
- **Code similarity**: the first line of the prediction that holds no ``` ` ```, ``#`` or ``//``, compared with the
  reference line by ``fuzz.ratio``: ``round(100 * 2 * LCS / (len(a) + len(b))) / 100`` over characters (the indel
  similarity of python-Levenshtein / rapidfuzz); equal strings score 1 and an empty one 0.

Chinese (multifieldqa_zh, dureader, vcsum): LongBench segments words with jieba. We do not depend on a segmenter; Chinese
text is split into single characters, with every run of ASCII letters and digits kept as one token (``"GPT4模型"`` ->
``GPT4 模 型``). QA F1 in Chinese is then a character-level F1 (after LongBench's Chinese normalisation: lower-case, drop
Chinese and ASCII punctuation, drop whitespace), and Chinese ROUGE-L runs on the space-joined characters. Character F1
is the usual jieba-free choice for Chinese QA; it is not bit-identical to LongBench's word-level figures (it gives
partial credit inside words), so our Chinese scores are comparable with each other, not with LongBench's leaderboard.

Known departures, all rare: LongBench's classification removes matches from the list it is iterating over, so it can
keep a substring match when two of them are adjacent in ``all_classes``; we drop all of them. The ``rouge`` package
reconstructs subsequences recursively and scores 0 when a sentence pair is deep enough to exceed Python's recursion limit
(about 1,000 words); we compute those.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from overflow_core.errors import InputError

__all__ = [
    "METRICS",
    "classification_score",
    "code_sim_score",
    "count_score",
    "extract_choice",
    "f1_tokens",
    "normalize_en",
    "normalize_zh",
    "qa_f1",
    "qa_f1_zh",
    "retrieval_score",
    "retrieval_zh_score",
    "rouge_l",
    "rouge_l_zh",
    "score",
    "zh_tokens",
]

_ASCII_PUNCT = frozenset(string.punctuation)
# the Chinese punctuation LongBench's normalisation removes (full-width forms, CJK brackets and quotes, dashes, ellipsis)
_ZH_PUNCT = frozenset(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ZH_TOKEN = re.compile(r"[A-Za-z0-9]+|\S")
_NUMBER = re.compile(r"\d+")


# -- normalisation and tokens -----------------------------------------------------------------------------------------
def normalize_en(text: str) -> str:
    """LongBench's English answer normalisation: lower-case, no ASCII punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh(text: str) -> str:
    """LongBench's Chinese answer normalisation: lower-case, no Chinese or ASCII punctuation, no whitespace at all."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT and ch not in _ZH_PUNCT)
    return "".join(text.split())


def zh_tokens(text: str) -> list[str]:
    """Chinese text as tokens without a segmenter: one token per character, a run of ASCII letters/digits as one."""
    return _ZH_TOKEN.findall(text)


def f1_tokens(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """F1 of two token multisets (0 when they share nothing)."""
    same = sum((Counter(prediction) & Counter(reference)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(reference)
    return 2 * precision * recall / (precision + recall)


# -- the metrics --------------------------------------------------------------------------------------------------------
def qa_f1(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """Token F1 after :func:`normalize_en`."""
    return f1_tokens(normalize_en(prediction).split(), normalize_en(reference).split())


def qa_f1_zh(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """F1 over :func:`zh_tokens` (characters), each token normalised by :func:`normalize_zh`, empty ones dropped."""

    def tokens(text: str) -> list[str]:
        return [t for t in (normalize_zh(tok) for tok in zh_tokens(text)) if t]

    return f1_tokens(tokens(prediction), tokens(reference))


def _sentences(text: str) -> list[list[str]]:
    """The ``rouge`` package's split: sentences at ``"."`` (empty pieces dropped), words at single spaces."""
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if piece]


def _lcs(x: Sequence[str], y: Sequence[str]) -> list[str]:
    """One longest common subsequence of ``x`` and ``y``, reconstructed from the end: on a tie prefer dropping from
    ``y`` (the choice the ``rouge`` package makes, which decides *which* words a tied subsequence holds)."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, prev, xi = table[i], table[i - 1], x[i - 1]
        for j in range(1, m + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    out: list[str] = []
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def rouge_l(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """Summary-level ROUGE-L F as LongBench computes it (see the module docstring)."""
    hyp, ref = _sentences(prediction), _sentences(reference)
    if not hyp or not ref:
        return 0.0
    m = len({w for s in ref for w in s})
    n = len({w for s in hyp for w in s})
    union: set[str] = set()
    for r in ref:
        for h in hyp:
            union.update(_lcs(r, h))
    hits = len(union)
    recall, precision = hits / m, hits / n
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def rouge_l_zh(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """:func:`rouge_l` over :func:`zh_tokens` joined by spaces."""
    return rouge_l(" ".join(zh_tokens(prediction)), " ".join(zh_tokens(reference)))


def classification_score(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """1/k when the true class is among the k classes the prediction names (substrings of the true class aside)."""
    named = [c for c in all_classes if c in prediction]
    named = [c for c in named if not (c in reference and c != reference)]
    return 1.0 / len(named) if reference in named else 0.0


def _share(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def _paragraph(reference: str, pattern: str) -> str:
    found = re.findall(pattern, reference)
    if not found:
        raise InputError(f"retrieval answer: expected a reference like {pattern!r}, got {reference!r}")
    return str(found[0])


def retrieval_score(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """Share of the numbers in the prediction that are the number of ``Paragraph N`` in the reference."""
    return _share(prediction, _paragraph(reference, r"Paragraph (\d+)"))


def retrieval_zh_score(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """Share of the numbers in the prediction that are the number of ``段落N`` in the reference."""
    return _share(prediction, _paragraph(reference, r"段落(\d+)"))


def count_score(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """Share of the numbers in the prediction equal to the reference count."""
    return _share(prediction, str(reference).strip())


def _indel_ratio(a: str, b: str) -> float:
    """``fuzz.ratio(a, b) / 100``: 1 for equal strings, 0 when one is empty, else ``round(200 * LCS / (|a|+|b|))``."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ca == cb else max(prev[j], cur[j - 1]))
        prev = cur
    return round(100 * 2 * prev[-1] / (len(a) + len(b))) / 100


def code_sim_score(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """Edit similarity of the first code line of the prediction (no ``` ` ```, ``#``, ``//``) with the reference."""
    line = next(
        (ln for ln in prediction.lstrip("\n").split("\n") if "`" not in ln and "#" not in ln and "//" not in ln), ""
    )
    return _indel_ratio(line, reference)


MetricFn = Callable[[str, str, Sequence[str]], float]
METRICS: dict[str, MetricFn] = {
    "qa_f1": qa_f1,
    "qa_f1_zh": qa_f1_zh,
    "rouge_l": rouge_l,
    "rouge_l_zh": rouge_l_zh,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "retrieval_zh": retrieval_zh_score,
    "count": count_score,
    "code_sim": code_sim_score,
}


def score(
    metric: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] = (), *, first_line: bool = False
) -> float:
    """An item's score: the best of ``metric`` over its reference ``answers`` (0 with none), as LongBench's scorer.

    ``first_line`` keeps only the prediction's first line (after leading newlines), as LongBench does for few-shot sets.
    """
    if first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    fn = METRICS[metric]
    return max((fn(prediction, ref, all_classes) for ref in answers), default=0.0)


_CHOICE = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))


def extract_choice(response: str) -> str | None:
    """LongBench v2's answer extraction: the letter of "The correct answer is (X)" (or "... is X"), asterisks ignored."""
    text = response.replace("*", "")
    for pattern in _CHOICE:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None
