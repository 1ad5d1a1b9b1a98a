"""LongBench's metrics against examples worked by hand (the arithmetic is in the comments), and LongBench's averages."""

from __future__ import annotations

import pytest

from overflow_core.errors import InputError
from overflow_core.longbench import metrics as m
from overflow_core.longbench.report import summarize


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-6)


# -- QA F1 ---------------------------------------------------------------------------------------------------------------
def test_normalize_en_drops_case_punctuation_articles() -> None:
    assert m.normalize_en("The  Eiffel Tower, in Paris!") == "eiffel tower in paris"
    assert m.normalize_en("An apple a day") == "apple day"


def test_qa_f1_by_hand() -> None:
    # pred -> "eiffel tower in paris" (4 tokens), gold -> "eiffel tower" (2); common 2: P = 2/4, R = 2/2,
    # F = 2 * 0.5 * 1 / 1.5 = 2/3
    assert m.qa_f1("The Eiffel Tower, in Paris!", "Eiffel Tower") == approx(2 / 3)
    # multisets: pred {cat: 2, dog: 1}, gold {cat: 1, dog: 2}; common = min per token = 1 + 1 = 2; P = R = 2/3 -> F = 2/3
    assert m.qa_f1("cat cat dog", "cat dog dog") == approx(2 / 3)
    assert m.qa_f1("Leeds", "leeds.") == approx(1.0)
    assert m.qa_f1("London", "Leeds") == 0.0
    assert m.qa_f1("", "Leeds") == 0.0


def test_qa_f1_zh_is_character_f1_after_chinese_normalisation() -> None:
    # tokens: 答 案 是 1887 年 。 -> "。" normalises to "" and is dropped -> 5 tokens; gold: 1887 年 (2 tokens)
    # common 2: P = 2/5, R = 1, F = 2 * 0.4 / 1.4 = 4/7
    assert m.zh_tokens("答案是1887年。") == ["答", "案", "是", "1887", "年", "。"]
    assert m.qa_f1_zh("答案是1887年。", "1887年") == approx(4 / 7)
    # ASCII runs stay one token and are lower-cased: gpt4 模 型 vs gpt4 -> P = 1/3, R = 1, F = 2/3 / (4/3) = 1/2
    assert m.qa_f1_zh("GPT4模型", "gpt4") == approx(0.5)
    assert m.normalize_zh("北 岬！") == "北岬"


# -- ROUGE-L (the rouge package's summary-level, distinct-word form LongBench calls) -------------------------------------
def test_rouge_l_identical() -> None:
    # 5 distinct words each side, every word in the LCS: R = P = 1, F = 2 / (2 + 1e-8)
    assert m.rouge_l("the cat sat on the mat", "the cat sat on the mat") == approx(1.0)


def test_rouge_l_by_hand_two_reference_sentences() -> None:
    # ref sentences "a b c" and "d e" (m = 5 distinct words); hyp "a c e" (n = 3)
    # LCS("a b c", "a c e") = a c; LCS("d e", "a c e") = e; union {a, c, e} -> hits 3
    # R = 3/5, P = 3/3, F = 2 * 0.6 * 1 / 1.6 = 0.75
    assert m.rouge_l("a c e", "a b c. d e") == approx(0.75)


def test_rouge_l_counts_distinct_words() -> None:
    # ref "x x y": m = |{x, y}| = 2 (not 3); LCS with "x y" = x y -> hits 2; R = P = 1. A token-count ROUGE-L would give
    # R = 2/3 and F = 0.8: this pins the rouge package's behaviour that LongBench's numbers come from.
    assert m.rouge_l("x y", "x x y") == approx(1.0)


def test_rouge_l_tie_breaking_follows_the_rouge_package() -> None:
    # ref sentences "a b" and "b"; hyp "b a". LCS("a b", "b a") has length 1 and two answers; the package's backtrack drops
    # from the hypothesis on a tie, giving "b"; LCS("b", "b a") = "b". Union {b}: hits 1; m = n = 2 -> R = P = 1/2,
    # F = 0.5 (the other tie-break would give {a, b} and F = 1)
    assert m.rouge_l("b a", "a b. b") == approx(0.5)


def test_rouge_l_sentence_split_quirks_and_empty() -> None:
    # "A. " splits into "A" and " " -> the second becomes the empty word "": n = |{A, ""}| = 2; ref "A": m = 1;
    # hits 1 -> R = 1, P = 1/2, F = 2 * 0.5 / 1.5 = 2/3
    assert m.rouge_l("A. ", "A") == approx(2 / 3)
    assert m.rouge_l("", "A summary.") == 0.0
    assert m.rouge_l("...", "A summary.") == 0.0
    assert m.rouge_l("Cat", "cat") == 0.0  # case is kept


# (prediction, reference, F) with F computed by the rouge package 1.0.1 (LongBench's rouge_score: Rouge().get_scores(
# [pred], [ref], avg=True)["rouge-l"]["f"]) on seeded random word strings; our implementation was also checked equal to
# it on 3,000 such pairs (max |diff| 0), and the code similarity equal to rapidfuzz's fuzz.ratio rounded as fuzzywuzzy.
_ROUGE_PACKAGE = [
    ("cat mat. the a rose a on", "the rose dog the a mat mat a dog a rose mat", 0.7272727223140496),
    ("Cat a dog", ". Cat the Cat Cat mat the dog the rose cat sat mat", 0.3999999958),
    ("rose a Cat sat rose", "cat a Cat Cat. dog on a rose a Cat the Cat", 0.5454545408264463),
    ("cost. rose mat on cost", "cost on sat dog cat dog a Cat sat rose cost on", 0.49999999555555563),
    ("cost sat Cat a a rose mat cat on cat cost mat the.", "rose Cat on on", 0.33333332958333334),
    ("on Cat cost Cat cost a a sat cost. a the sat.", ". cost sat mat. on the cost on cat Cat a", 0.7142857093877552),
]


@pytest.mark.parametrize(("prediction", "reference", "expected"), _ROUGE_PACKAGE)
def test_rouge_l_equals_the_rouge_package(prediction: str, reference: str, expected: float) -> None:
    assert m.rouge_l(prediction, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_zh_over_characters() -> None:
    # pred chars 会议决定设立窗口 (8 distinct), gold 会议决定设立统一窗口 (10 distinct); LCS = the 8 pred chars
    # R = 8/10, P = 8/8, F = 2 * 0.8 / 1.8 = 8/9
    assert m.rouge_l_zh("会议决定设立窗口", "会议决定设立统一窗口") == approx(8 / 9)


# -- classification, retrieval, count, code --------------------------------------------------------------------------------
def test_classification_by_hand() -> None:
    classes = ["Human being", "Location", "Entity"]
    assert m.classification_score("Location", "Location", classes) == 1.0
    assert m.classification_score("Human being or Location", "Location", classes) == 0.5  # 2 named, truth among them
    assert m.classification_score("Entity", "Location", classes) == 0.0
    # "Abbreviation" is named too (a substring of the prediction) but is a proper substring of the truth: dropped -> 1/1
    two = ["Abbreviation", "Abbreviation expansion"]
    assert m.classification_score("Abbreviation expansion", "Abbreviation expansion", two) == 1.0
    assert m.classification_score("体育新闻", "体育", ["体育", "财经"]) == 1.0


def test_retrieval_and_count_by_hand() -> None:
    assert m.retrieval_score("Paragraph 2", "Paragraph 2") == 1.0
    assert m.retrieval_score("Paragraph 2 or Paragraph 12", "Paragraph 2") == 0.5  # numbers 2, 12: one of two right
    assert m.retrieval_score("no idea", "Paragraph 2") == 0.0
    assert m.retrieval_zh_score("答案是段落3，不是段落30", "段落3") == 0.5
    assert m.count_score("There are 3 unique paragraphs out of 4", "3") == 0.5
    assert m.count_score("3", "3") == 1.0
    with pytest.raises(InputError, match="Paragraph"):
        m.retrieval_score("Paragraph 1", "the first one")


def test_code_sim_by_hand() -> None:
    # the first line without ` # // is the third one, equal to the reference -> 1
    assert m.code_sim_score("```python\n# comment\n        return count;\n", "        return count;") == 1.0
    # "return count" vs "return count;": LCS 12, lengths 12 + 13 -> 2 * 12 / 25 = 0.96
    assert m.code_sim_score("return count", "return count;") == approx(0.96)
    # "kitten" vs "sitting": LCS "ittn" = 4 -> 200 * 4 / 13 = 61.5 -> fuzz.ratio rounds to 62 -> 0.62
    assert m.code_sim_score("kitten", "sitting") == approx(0.62)
    assert m.code_sim_score("// only a comment", "x = 1") == 0.0  # no code line: empty prediction
    assert m.code_sim_score("abc", "xyz") == 0.0


def test_score_takes_best_answer_and_first_line() -> None:
    # "Tomas" vs "her brother tomas": P = 1, R = 1/3 -> F = 0.5; vs "Tomas" -> 1; the best counts
    assert m.score("qa_f1", "Tomas", ["her brother Tomas", "Tomas"]) == 1.0
    trec = ["Location", "Human being"]
    pred = "Location\nQuestion: Who is it ?\nType: Human being"
    assert m.score("classification", pred, ["Location"], trec, first_line=True) == 1.0
    assert m.score("classification", pred, ["Location"], trec, first_line=False) == 0.5  # both classes named
    assert m.score("qa_f1", "x", []) == 0.0


def test_extract_choice() -> None:
    assert m.extract_choice("The correct answer is (B)") == "B"
    assert m.extract_choice("**The correct answer is C**, because ...") == "C"
    assert m.extract_choice("I think it is B") is None


# -- LongBench's averages ---------------------------------------------------------------------------------------------------
def _rec(suite: str, name: str, run: str, score: float, length: object = 100, **extra: object) -> dict[str, object]:
    return {"suite": suite, "dataset": name, "run": run, "score": score, "length": length, "config": {}, **extra}


def test_averages_are_means_of_category_means_per_language() -> None:
    records = [
        _rec("v1", "narrativeqa", "vanilla", 0.5),  # 50
        _rec("v1", "qasper", "vanilla", 1.0),  # 100 -> English single-doc QA = 75
        _rec("v1", "hotpotqa", "vanilla", 0.0),  # English multi-doc QA = 0
        _rec("v1", "lcc", "vanilla", 0.3),  # code = 30, counted in both languages
        _rec("v1", "multifieldqa_zh", "vanilla", 0.2),  # Chinese single-doc QA = 20
    ]
    avg = summarize(records)["v1"]["average"]["vanilla"]
    assert avg["en"] == approx(35.0)  # mean(75, 0, 30)
    assert avg["zh"] == approx(25.0)  # mean(20, 30)
    assert avg["all"] == approx(round((170 / 3 + 0 + 30) / 3, 2))  # single-doc mean(50, 100, 20), multi-doc 0, code 30
    assert avg["dataset_mean"] == approx(40.0)  # (50 + 100 + 0 + 30 + 20) / 5


def test_longbench_e_length_buckets() -> None:
    records = [
        _rec("e", "hotpotqa", "oprm@2000", 1.0, 1000),
        _rec("e", "hotpotqa", "oprm@2000", 0.0, 3999),  # 0-4k: mean(1, 0) = 50
        _rec("e", "hotpotqa", "oprm@2000", 0.0, 4000),  # 4-8k starts at 4000
        _rec("e", "hotpotqa", "oprm@2000", 0.5, 8000),  # 8k+ starts at 8000
    ]
    per = summarize(records)["e"]["datasets"]["hotpotqa"]["oprm@2000"]
    assert (per["0-4k"], per["4-8k"], per["8k+"], per["all"]) == (50.0, 0.0, 50.0, 37.5)


def test_v2_breakdown() -> None:
    records = [
        _rec("v2", "v2", "vanilla", 1.0, "short", difficulty="easy", choice="A"),
        _rec("v2", "v2", "vanilla", 0.0, "long", difficulty="hard", choice=None),
        _rec("v2", "v2", "vanilla", 1.0, "medium", difficulty="hard", choice="C"),
    ]
    v2 = summarize(records)["v2"]["vanilla"]
    assert v2["overall"] == approx(66.7) and v2["easy"] == 100.0 and v2["hard"] == 50.0
    assert (v2["short"], v2["medium"], v2["long"], v2["unparsed"]) == (100.0, 100.0, 0.0, 1)
