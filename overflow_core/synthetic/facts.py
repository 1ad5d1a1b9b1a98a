"""Procedural long-context QA data for the bundled model.

A context is a few short documents of filler prose with facts ("the <attribute> of <key> is <value>") scattered through them;
questions ask for one attribute of one key. A question whose answer is absent (the key is missing, the key is there with another
attribute, or a similar key has the attribute) must be answered with the not-found phrase: that abstention is what OPRM's IDK
filter relies on once there are hundreds of chunks.

Variety is composed, not enumerated: fact sentences are opening x core x ending, values come from many generators, and filler
comes from several small grammars. A part of every axis is held out (``split="heldout"``) so the evaluation can measure
generalization to phrasings, attributes and filler that training never saw. Training stage 2 adds open-vocabulary
generators (``FactWorld(open_share=...)``: made-up attribute names, fact sentences in any order of key, attribute and
value, composed questions and filler) and key-checking negatives (``Curriculum.key_checking``); with
``open_share=0`` and stage 1's curricula the draws are exactly those of stage 1.

Everything is driven by a ``random.Random``; the same seed gives the same data.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "HELD_OUT_AXES",
    "Curriculum",
    "Fact",
    "FactWorld",
    "HeldOutAxis",
    "Question",
    "Sample",
    "Split",
    "near_attribute",
    "open_attribute",
    "open_fact_sentence",
    "open_filler",
    "open_question",
    "open_value",
]

Split = Literal["train", "heldout"]

FIRST = [
    "Alice",
    "Aaron",
    "Bella",
    "Boris",
    "Carla",
    "Cyrus",
    "Daria",
    "Dmitri",
    "Elena",
    "Elias",
    "Fatima",
    "Felix",
    "Greta",
    "Gustav",
    "Hana",
    "Hugo",
    "Irene",
    "Ivan",
    "Julia",
    "Jonas",
    "Kira",
    "Kofi",
    "Laura",
    "Lucas",
    "Maya",
    "Milo",
    "Nadia",
    "Nikolai",
    "Olga",
    "Omar",
    "Paula",
    "Pedro",
    "Quinn",
    "Rosa",
    "Rafael",
    "Sara",
    "Samuel",
    "Tara",
    "Tomas",
    "Uma",
    "Victor",
    "Vera",
    "Walter",
    "Wendy",
    "Xavier",
    "Yara",
    "Yusuf",
    "Zoe",
    "Zane",
    "Amara",
    "Bruno",
    "Clara",
    "Dario",
    "Esther",
    "Farid",
    "Gloria",
    "Henrik",
    "Ines",
    "Jakob",
]
LAST = [
    "Adler",
    "Baker",
    "Castro",
    "Dalton",
    "Ellis",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ibrahim",
    "Jensen",
    "Keller",
    "Larsen",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quinlan",
    "Romero",
    "Schmidt",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zimmer",
    "Alvarez",
    "Brennan",
    "Costa",
    "Duval",
    "Eriksen",
    "Fontaine",
    "Gallo",
    "Horvat",
    "Ivanova",
    "Jovanovic",
    "Kowalski",
    "Lindqvist",
    "Mendez",
    "Nakamura",
    "Olsen",
    "Pereira",
    "Rossi",
    "Sato",
    "Torres",
    "Ulrich",
    "Vidal",
    "Wagner",
    "Young",
    "Zhou",
]
WORDS = [
    "falcon",
    "harbor",
    "cedar",
    "orbit",
    "maple",
    "summit",
    "ember",
    "delta",
    "aurora",
    "beacon",
    "canyon",
    "glacier",
    "lantern",
    "meadow",
    "nimbus",
    "onyx",
    "prism",
    "quartz",
    "raven",
    "sierra",
    "tundra",
    "velvet",
    "willow",
    "zephyr",
    "atlas",
    "comet",
    "dune",
    "fjord",
    "granite",
    "horizon",
    "iris",
    "jasper",
    "kestrel",
    "lotus",
    "mosaic",
    "nova",
    "opal",
    "pioneer",
    "quill",
    "river",
    "saffron",
    "thistle",
    "umber",
    "vortex",
]
CITIES = [
    "Lisbon",
    "Oslo",
    "Nairobi",
    "Lima",
    "Kyoto",
    "Dublin",
    "Porto",
    "Tunis",
    "Quito",
    "Hanoi",
    "Riga",
    "Sofia",
    "Zagreb",
    "Accra",
    "Bergen",
    "Cusco",
    "Dakar",
    "Izmir",
    "Malmo",
    "Perth",
    "Turin",
    "Vilnius",
    "Zurich",
    "Austin",
    "Boston",
    "Denver",
    "Leeds",
    "Lyon",
    "Munich",
    "Osaka",
    "Seville",
    "Tallinn",
]
COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "black",
    "white",
    "silver",
    "golden",
    "teal",
    "maroon",
    "crimson",
    "navy",
    "beige",
    "violet",
]
FRUITS = ["apple", "mango", "cherry", "banana", "plum", "peach", "lemon", "melon", "grape", "kiwi", "papaya", "apricot"]
JOBS = [
    "teacher",
    "pilot",
    "baker",
    "nurse",
    "farmer",
    "lawyer",
    "painter",
    "chemist",
    "plumber",
    "librarian",
    "architect",
    "sailor",
]
HOBBIES = ["chess", "rowing", "pottery", "fencing", "sailing", "knitting", "archery", "cycling", "climbing", "juggling"]
INSTRUMENTS = ["violin", "cello", "piano", "flute", "trumpet", "harp", "drums", "guitar", "oboe", "banjo"]
ANIMALS = ["otter", "badger", "heron", "lynx", "panda", "walrus", "gecko", "falcon", "bison", "koala"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _digits(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    return str(rng.randint(1, 9)) + "".join(rng.choice(string.digits) for _ in range(n - 1))


def _code(rng: random.Random) -> str:
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(2, 3)))
    return f"{letters}-{_digits(rng, 3, 4)}"


def _plate(rng: random.Random) -> str:
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(3))
    return f"{letters} {_digits(rng, 3, 3)}"


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "br", "tr", "gl", "st")
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "ei")
_CODAS = ("", "", "", "", "n", "r", "l", "s", "m", "k")


def _pseudo(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A pronounceable made-up word ("talemo", "brusik"): tens of thousands of them, so a value drawn this way can only be
    answered by copying it from the document, never from a memorised list. The tokenizer splits them into common pieces."""
    n = rng.randint(*syllables)
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n))


def _name(rng: random.Random) -> str:
    return _pseudo(rng, (2, 2)).capitalize()


def _first(rng: random.Random) -> str:
    return rng.choice(FIRST) if rng.random() < 0.75 else _name(rng)


def _last(rng: random.Random) -> str:
    return rng.choice(LAST) if rng.random() < 0.6 else _name(rng)


def _person(rng: random.Random) -> str:
    return f"{_first(rng)} {_last(rng)}"


def _city(rng: random.Random) -> str:
    return rng.choice(CITIES) if rng.random() < 0.5 else _name(rng)


ValueGen = Callable[[random.Random], str]

# attribute -> value generator. The held-out attributes test generalization to attribute names never seen in training.
TRAIN_ATTRIBUTES: dict[str, ValueGen] = {
    "phone number": lambda r: f"{_digits(r, 3, 3)}-{_digits(r, 4, 4)}",
    "locker number": lambda r: _digits(r, 2, 4),
    "badge number": lambda r: _digits(r, 4, 6),
    "employee ID": lambda r: _digits(r, 5, 6),
    "room number": lambda r: _digits(r, 3, 3),
    "account number": lambda r: _digits(r, 6, 8),
    "PIN": lambda r: _digits(r, 4, 4),
    "birth year": lambda r: str(r.randint(1930, 2015)),
    "year of arrival": lambda r: str(r.randint(1950, 2024)),
    "birthday": lambda r: f"{r.randint(1, 28)} {r.choice(MONTHS)}",
    "start date": lambda r: f"{r.randint(1, 28)} {r.choice(MONTHS)} {r.randint(1990, 2025)}",
    "home city": _city,
    "hometown": _city,
    "favorite color": lambda r: r.choice(COLOURS),
    "car color": lambda r: r.choice(COLOURS),
    "access code": _code,
    "license plate": _plate,
    "serial code": _code,
    "password": lambda r: f"{r.choice(WORDS) if r.random() < 0.5 else _pseudo(r)}{_digits(r, 2, 3)}",
    "manager": _person,
    "best friend": _person,
    "doctor": lambda r: f"Dr. {r.choice(LAST)}",
    "pet's name": lambda r: r.choice(WORDS).capitalize() if r.random() < 0.4 else _name(r),
    "nickname": _name,
    "code word": _pseudo,
    "weight": lambda r: f"{r.randint(40, 120)} kg",
    "height": lambda r: f"{r.randint(140, 205)} cm",
    "salary": lambda r: f"{r.randint(18, 95)}00 dollars",
    "age": lambda r: str(r.randint(18, 90)),
    "favorite fruit": lambda r: r.choice(FRUITS),
    "job": lambda r: r.choice(JOBS),
    "hobby": lambda r: r.choice(HOBBIES),
    "instrument": lambda r: r.choice(INSTRUMENTS),
    "secret number": lambda r: _digits(r, 3, 6),
    "lucky number": lambda r: _digits(r, 1, 3),
    "office": lambda r: f"{r.choice(string.ascii_uppercase)}{_digits(r, 2, 3)}",
}
# Composed attribute names ("vault code", "team color", "night number"): hundreds of them, most of them meaningless, so
# that the model must match the attribute's words between question and document instead of memorising a short list.
# No word of a held-out attribute name below is used here except "code" and "favorite" (which the named list has too).
ATTRIBUTE_HEADS: dict[str, ValueGen] = {
    "number": lambda r: _digits(r, 2, 6),
    "ID": lambda r: _digits(r, 4, 7),
    "code": _code,
    "PIN": lambda r: _digits(r, 4, 4),
    "year": lambda r: str(r.randint(1930, 2025)),
    "date": lambda r: f"{r.randint(1, 28)} {r.choice(MONTHS)}",
    "city": _city,
    "color": lambda r: r.choice(COLOURS),
    "word": _pseudo,
    "name": _name,
    "contact": _person,
    "plate": _plate,
    "amount": lambda r: f"{r.randint(2, 990)} dollars",
    "weight": lambda r: f"{r.randint(2, 400)} kg",
    "room": lambda r: f"{r.choice(string.ascii_uppercase)}{_digits(r, 2, 3)}",
}
ATTRIBUTE_MODIFIERS = (
    "locker", "badge", "backup", "home", "office", "secret", "lucky", "desk", "gate", "team", "cabin", "vault", "radio",
    "garage", "billing", "shipping", "library", "gym", "emergency", "travel", "archive", "alarm", "storage", "night",
    "door", "member", "ticket", "harbor", "studio", "garden", "kitchen", "boat", "tower", "bank", "club", "school",
)  # fmt: skip
COMPOSED_ATTRIBUTES: dict[str, ValueGen] = {
    f"{mod} {head}": gen for mod in ATTRIBUTE_MODIFIERS for head, gen in ATTRIBUTE_HEADS.items()
}
NAMED_ATTRIBUTE_SHARE = 0.4  # how often a training fact uses the named list above rather than a composed name

HELDOUT_ATTRIBUTES: dict[str, ValueGen] = {
    "parking spot": lambda r: _digits(r, 2, 3),
    "favorite animal": lambda r: r.choice(ANIMALS),
    "flight code": _code,
    "anniversary": lambda r: f"{r.randint(1, 28)} {r.choice(MONTHS)}",
    "zip code": lambda r: _digits(r, 5, 5),
    "mentor": _person,
}

TRAIN_FACT_CORES = (
    "The {attr} of {key} is {value}.",
    "{key}'s {attr} is {value}.",
    "For {key}, the {attr} is {value}.",
    "The {attr} for {key} is listed as {value}.",
    "{value} is the {attr} of {key}.",
    "{key} lists {value} as the {attr}.",
    "{key} - {attr}: {value}.",
    "{attr} of {key}: {value}.",
    "We recorded {value} as the {attr} of {key}.",
    "The file says that the {attr} of {key} is {value}.",
    "{key} has {value} as {attr}.",
    "Remember: {key}, {attr} {value}.",
    "The {attr} assigned to {key} is {value}.",
    "{key} gave {value} as the {attr}.",
    "Our list shows the {attr} of {key}: {value}.",
    "{attr} for {key} = {value}.",
    "When asked, {key} said the {attr} was {value}.",
    "{key}: {attr} {value}.",
    "The {attr} on file for {key} reads {value}.",
    "{key} keeps {value} as the {attr}.",
    "Set the {attr} of {key} to {value}.",
    "The {attr} belonging to {key} is {value}.",
)
HELDOUT_FACT_CORES = (
    "Everyone knows that {key} uses {value} as the {attr}.",
    "{key} ({attr}) = {value}.",
    "In the records, {key} appears with the {attr} {value}.",
)
FACT_OPENINGS = ("", "", "", "Note: ", "According to the file, ", "As of this year, ", "Officially, ", "In short, ")
FACT_ENDINGS = ("", "", "", " This was confirmed later.", " Nobody disputes this.", " It has not changed since.")

TRAIN_QUESTIONS = (
    "What is the {attr} of {key}?",
    "What is {key}'s {attr}?",
    "Tell me the {attr} of {key}.",
    "Which {attr} does {key} have?",
    "{key}: what is the {attr}?",
    "Give the {attr} for {key}.",
    "What {attr} is listed for {key}?",
    "Do you know the {attr} of {key}?",
    "what is the {attr} of {key}",
    "Find the {attr} of {key}.",
    "{key}'s {attr}?",
    "Please give me the {attr} for {key}.",
    "Which {attr} belongs to {key}?",
    "What does the document give as the {attr} of {key}?",
    "Name the {attr} of {key}.",
)
HELDOUT_QUESTIONS = (
    "Could you find {key}'s {attr}?",
    "I need the {attr} that belongs to {key}.",
    "Look up {key} and report the {attr}.",
)


def _filler_grammar(r: random.Random) -> str:
    adj = r.choice(["quiet", "busy", "old", "bright", "narrow", "distant", "small", "heavy", "modern", "rusty"])
    noun = r.choice(["train", "market", "bridge", "garden", "tower", "engine", "library", "river", "factory", "harbor"])
    verb = r.choice(["passed", "near", "stood", "beside", "faced", "overlooked", "blocked", "joined"])
    obj = r.choice(["the square", "the station", "the forest", "the hill", "the old road", "the canal"])
    return f"The {adj} {noun} {verb} {obj}."


def _filler_news(r: random.Random) -> str:
    org = r.choice(["city council", "museum", "school board", "weather office", "rail company", "library"])
    thing = r.choice(["schedule", "policy", "exhibit", "program", "budget", "route"])
    return f"On {r.choice(WEEKDAYS)}, the {org} announced a new {thing}."


def _filler_log(r: random.Random) -> str:
    system = r.choice(["backup", "scheduler", "gateway", "printer", "sensor", "uplink"])
    status = r.choice(["completed", "restarted", "failed over", "went idle", "reported normal load", "synced"])
    return f"[{r.randint(0, 23):02d}:{r.randint(0, 59):02d}] The {system} {status}."


def _filler_story(r: random.Random) -> str:
    place = r.choice(["bakery", "park", "station", "harbor", "museum", "office", "garden"])
    act = r.choice(
        ["bought a newspaper", "met a friend", "lost an umbrella", "read a book", "fed the birds", "took a photo"]
    )
    return f"{r.choice(FIRST)} went to the {place} and {act}."


def _filler_weather(r: random.Random) -> str:
    sky = r.choice(["cloudy", "sunny", "windy", "foggy", "rainy", "cold", "warm"])
    where = r.choice(["streets", "fields", "roads", "hills"])
    return f"The morning was {sky}, and the {where} stayed {r.choice(['empty', 'wet', 'calm', 'busy'])}."


def _filler_recipe(r: random.Random) -> str:  # held out
    food = r.choice(["flour", "rice", "sugar", "butter", "oats", "beans"])
    return f"Add {r.choice(['one', 'two', 'three'])} cups of {food} and stir for {r.randint(2, 15)} minutes."


def _filler_manual(r: random.Random) -> str:  # held out
    part = r.choice(["valve", "switch", "panel", "cable", "filter"])
    return f"Before use, check that the {part} is {r.choice(['clean', 'secure', 'dry', 'closed'])} and press the reset button."


def _filler_sport(r: random.Random) -> str:
    team = r.choice(["Rovers", "United", "the Lions", "the Comets", "City", "the Falcons"])
    return f"{team} won {r.randint(1, 5)} to {r.randint(0, 4)} in a {r.choice(['close', 'dull', 'wild', 'late'])} game."


def _filler_office(r: random.Random) -> str:
    thing = r.choice(["the meeting", "the printer", "lunch", "the audit", "the move", "the call"])
    return f"{_first(r)} said that {thing} would {r.choice(['start late', 'be moved', 'take an hour', 'go ahead'])}."


def _filler_made_up(r: random.Random) -> str:
    return f"The {_pseudo(r)} of {_name(r)} was {r.choice(['closed', 'rebuilt', 'painted', 'sold', 'visited'])} last year."


TRAIN_FILLERS: tuple[Callable[[random.Random], str], ...] = (
    _filler_grammar,
    _filler_news,
    _filler_log,
    _filler_story,
    _filler_weather,
    _filler_sport,
    _filler_office,
    _filler_made_up,
)
HELDOUT_FILLERS: tuple[Callable[[random.Random], str], ...] = (_filler_recipe, _filler_manual)
TITLES = ("Report", "Notes", "Memo", "Record", "Log", "Summary", "Minutes", "Letter")


@dataclass(frozen=True)
class Fact:
    key: str
    attr: str
    value: str
    sentence: str


@dataclass(frozen=True)
class Question:
    text: str
    answer: str  # the value, or the not-found phrase
    key: str
    attr: str
    present: bool


@dataclass(frozen=True)
class Sample:
    context: str
    facts: tuple[Fact, ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Curriculum:
    """How hard a sample is. ``Curriculum.at(progress)`` ramps from easy to hard over training."""

    max_facts: int = 8
    min_chars: int = 100  # length of the context in characters (about 3.5 characters a token)
    max_chars: int = 880
    empty_rate: float = 0.1  # contexts without any fact
    absent_rate: float = 0.4
    hard_negative_rate: float = 0.6  # of absent questions: a similar key or the same key with another attribute
    distractor_rate: float = 0.5  # facts about keys similar to a queried one
    decoration_rate: float = 1.0  # facts that may get an opening ("Note: ") and an ending (" Nobody disputes this.")
    questions: int = 4
    # How distractor facts and hard negatives split between their kinds: three cumulative thresholds on one uniform
    # draw. Distractor facts about an earlier fact: a similar key with its attribute / its key with another attribute /
    # an unrelated key with its attribute / a near attribute (one word changed: "badge number" beside "locker number"),
    # for its key or another. Absent questions about a stated fact: its key with another attribute / a similar key with
    # its attribute / an unrelated key with its attribute / a near attribute, for its key or another. The defaults are
    # stage 1's (no unrelated-key distractors, no near attributes); stage 2 weights the last two kinds, which check that
    # the model reads the key and the whole attribute.
    distractor_mix: tuple[float, float, float] = (0.6, 1.0, 1.0)
    negative_mix: tuple[float, float, float] = (0.4, 0.8, 1.0)

    @classmethod
    def at(cls, progress: float) -> Curriculum:
        """Easy first, hard last. Recall must take off before abstention is asked for (``shared/TRAINING_NOTES.md``, run 3:
        many absent questions and hard negatives from step one collapse a small model onto "not found"), so absent
        questions start rare and easy and ramp up only in the second half. The first quarter is the shape that got recall
        off the ground in minutes in the calibration runs: one or two plainly phrased facts and at most one filler sentence."""
        p = min(max(progress, 0.0), 1.0)
        if p < 0.25:  # a fact or two and at most a filler sentence, plain phrasings: the copy mechanism forms here
            return cls(
                max_facts=2,
                min_chars=0,
                max_chars=160,
                empty_rate=0.0,
                absent_rate=0.1,
                hard_negative_rate=0.0,
                distractor_rate=0.0,
                decoration_rate=0.0,
                questions=4,
            )
        if p < 0.5:
            return cls(
                max_facts=4,
                min_chars=50,
                max_chars=550,
                empty_rate=0.03,
                absent_rate=0.2,
                hard_negative_rate=0.3,
                distractor_rate=0.25,
                decoration_rate=0.5,
                questions=6,
            )
        ramp = (p - 0.5) / 0.5
        return cls(
            max_facts=8,
            min_chars=100,
            max_chars=880,
            empty_rate=0.1,
            absent_rate=0.3 + 0.25 * ramp,
            hard_negative_rate=0.5 + 0.35 * ramp,
            distractor_rate=0.5,
            questions=8,
        )

    @classmethod
    def key_checking(cls, progress: float = 0.0) -> Curriculum:
        """Stage 2, continued from a stage-1 model that already copies values: full-length contexts where the asked
        attribute is often stated for other keys. Half of the questions are absent, and most hard negatives name an
        unrelated or similar key with an attribute the context does state, the confident-wrong-chunk failure that
        limits OPRM over hundreds of chunks (docs/model.md, v4). Constant over the stage: ``progress`` is accepted for a
        uniform interface."""
        del progress
        return cls(
            max_facts=8,
            min_chars=100,
            max_chars=880,
            empty_rate=0.08,
            absent_rate=0.5,
            hard_negative_rate=0.85,
            distractor_rate=0.6,
            questions=8,
            distractor_mix=(0.25, 0.45, 0.7),
            negative_mix=(0.15, 0.35, 0.65),
        )


# -- open vocabulary (stage 2) ------------------------------------------------------------------------------------------
# Generators rather than lists, for the continuation stage (``FactWorld(open_share=...)``): attribute names that are
# made-up words or new modifier combinations, fact sentences composed in any order of key, attribute and value, question
# wordings and filler composed from parts. They add no word or construction of the held-out split: the tests check that
# none of the held-out attribute words, fact-core skeletons, question openings or filler words comes out of them.
EXTRA_MODIFIERS = (
    "river", "bridge", "station", "market", "castle", "forest", "island", "village", "lake", "mountain", "camp", "farm",
    "museum", "hotel", "print", "server", "network", "wallet", "insurance", "tax", "voting", "pension", "sailing",
    "hangar", "mail", "courier", "warehouse", "lab", "project", "contract", "invoice", "order", "exam", "seat", "bus",
)  # fmt: skip
HELDOUT_ATTRIBUTE_WORDS = frozenset(w for name in HELDOUT_ATTRIBUTES for w in name.split()) - {"code", "favorite"}
_HEADS = tuple(ATTRIBUTE_HEADS)
_HEAD_GENERATORS = tuple(ATTRIBUTE_HEADS.values())
_ALL_MODIFIERS = ATTRIBUTE_MODIFIERS + EXTRA_MODIFIERS


def _open_word(r: random.Random) -> str:
    """A made-up attribute word that is not a held-out attribute word (``_pseudo`` can spell "mentor")."""
    while True:
        word = _pseudo(r)
        if word not in HELDOUT_ATTRIBUTE_WORDS:
            return word


def open_attribute(r: random.Random) -> str:
    """An attribute name nobody listed: "brusik number", "talemo", "castle code", "night hangar PIN"."""
    kind = r.random()
    if kind < 0.35:
        return f"{_open_word(r)} {r.choice(_HEADS)}"
    if kind < 0.6:
        return _open_word(r)
    if kind < 0.85:
        return f"{r.choice(EXTRA_MODIFIERS)} {r.choice(_HEADS)}"
    return f"{r.choice(_ALL_MODIFIERS)} {r.choice(EXTRA_MODIFIERS)} {r.choice(_HEADS)}"


def open_value(attr: str, r: random.Random) -> str:
    """A value for an open attribute: of its head's kind when its last word is a head ("... number"), else of a kind fixed
    by the name (crc32, stable across runs), so one name always takes one kind of value."""
    head = attr.rsplit(" ", 1)[-1]
    gen = ATTRIBUTE_HEADS.get(head) or _HEAD_GENERATORS[zlib.crc32(attr.encode()) % len(_HEAD_GENERATORS)]
    return gen(r)


_LEADS = ("", "", "", "Update: ", "FYI, ", "For the record, ", "Per the ledger, ", "It turns out that ", "Heads up: ")
_ENDS = (".", ".", ".", ";", "!", " - confirmed.", ", as agreed.", ", for now.")
_POSSESSIVE_LINKS = ("'s ", "'s current ", "'s registered ")
_IS = (" is ", ": ", " = ", " -> ", " was ", " reads ", " equals ", " is set to ", " stays ", " became ")
_OF = ("of", "for", "at", "held by", "given to", "linked to", "filed for", "issued to")
_VALUE_IS = ("is", "was", "serves as", "remains", "became", "stands as", "is listed as", "counts as")
_KEY_VERBS = ("has", "got", "picked", "chose", "holds", "received", "registered", "listed", "owns", "wrote down", "kept")
_AS_THE = ("as the", "as their", "as its", "for the", "as the new")


def open_fact_sentence(r: random.Random, key: str, attr: str, value: str) -> str:
    """A fact sentence composed in one of six orders of key (K), attribute (A) and value (V) from small pools of links:
    "The talemo held by Rosa Vidal became 4412!", "4412 is listed as the talemo of Rosa Vidal.", "Rosa Vidal chose 4412
    as the talemo.", "Rosa Vidal, talemo -> 4412." No pool holds a held-out construction or its punctuation
    (parentheses, "uses", "appears with", "Everyone knows", "In the records")."""
    order = r.randrange(6)
    the = r.choice(("the ", "the ", "")) if not attr[0].isupper() else ""
    if order == 0:  # K A V
        core = f"{key}{r.choice(_POSSESSIVE_LINKS)}{attr}{r.choice(_IS)}{value}"
    elif order == 1:  # A K V
        core = f"{the}{attr} {r.choice(_OF)} {key}{r.choice(_IS)}{value}"
    elif order == 2:  # V A K
        core = f"{value} {r.choice(_VALUE_IS)} {the}{attr} {r.choice(_OF)} {key}"
    elif order == 3:  # K V A
        core = f"{key} {r.choice(_KEY_VERBS)} {value} {r.choice(_AS_THE)} {attr}"
    elif order == 4:  # V K A
        core = f"{value} {r.choice(_VALUE_IS)} {key}{r.choice(_POSSESSIVE_LINKS)}{attr}"
    else:  # K, A V
        core = f"{key}{r.choice((', ', ' | ', ' / ', ' - '))}{attr}{r.choice(_IS)}{value}"
    lead = r.choice(_LEADS)
    if lead and not core.startswith((key, value)):
        core = core[0].lower() + core[1:]
    sentence = f"{lead}{core}{r.choice(_ENDS)}"
    return sentence[0].upper() + sentence[1:]


_ASK_LEADS = ("", "", "", "Quick question: ", "Hi! ", "Hello, ", "One more thing: ", "Help me out: ", "Okay. ")
_ASKS = (
    "what's the {attr} of {key}",
    "what {attr} does {key} have",
    "{key} {attr}",
    "the {attr} of {key}, please",
    "which is {key}'s {attr}",
    "what was recorded as the {attr} of {key}",
    "tell me {key}'s {attr}",
    "show the {attr} for {key}",
    "what {attr} goes with {key}",
    "search the text for the {attr} of {key}",
    "{attr} of {key}",
    "what did {key} give as the {attr}",
    "is there a {attr} for {key}",
    "{key} - {attr}",
)
_ASK_ENDS = ("?", "?", "", ".", "??")


def open_question(r: random.Random, key: str, attr: str) -> str:
    """A question composed of a lead, one of many asks and an ending: "Hi! What goes with ... ?", "Rosa Vidal talemo". No
    held-out opening ("Could you find", "I need the", "Look up") comes out of it."""
    ask = r.choice(_ASKS).format(key=key, attr=attr)
    end = r.choice(_ASK_ENDS) if not ask.endswith("please") else "."
    lead = r.choice(_ASK_LEADS)
    if lead.endswith(("! ", ". ")):
        ask = ask[0].upper() + ask[1:]
    text = f"{lead}{ask}{end}"
    return text[0].upper() + text[1:]


_SUBJECTS = ("the crew", "a neighbour", "the committee", "our team", "the driver", "the guide", "a visitor", "the clerk")
_VERBS = ("painted", "visited", "cleaned", "moved", "photographed", "repaired", "described", "measured", "ignored")
_OBJECTS = ("the fence", "the old mill", "a boat", "the hallway", "the north wing", "a statue", "the stairs", "the roof")
_WHEN = ("yesterday", "last spring", "after lunch", "on Friday", "at dawn", "twice", "before the storm", "in silence")


def open_filler(r: random.Random) -> str:
    """A filler sentence composed from parts, sometimes with made-up words: "The crew repaired the brusik at dawn." It uses
    no word of the held-out fillers (cups, stir, minutes, valve, switch, panel, cable, filter, press, reset, check)."""
    obj = r.choice(_OBJECTS) if r.random() < 0.7 else f"the {_pseudo(r)}"
    subject = r.choice(_SUBJECTS) if r.random() < 0.8 else _name(r)
    sentence = f"{subject} {r.choice(_VERBS)} {obj} {r.choice(_WHEN)}."
    return sentence[0].upper() + sentence[1:]


def noise_sentence(r: random.Random, pieces: Sequence[str]) -> str:
    """A "sentence" of 4-12 random vocabulary pieces: it puts tokens the generated prose never uses (parentheses, quotes,
    currency signs, "j", "q", partial merges) into the model's input, so that their embeddings are trained as inputs
    too. Without it about a fifth of the vocabulary only ever appears as a softmax negative."""
    return _piece_run(r, pieces, 4, 12) + "."


def _piece_run(r: random.Random, pieces: Sequence[str], lo: int, hi: int) -> str:
    """``lo`` to ``hi`` random vocabulary pieces, joined as they decode, outer spaces stripped. Runs that could form a
    special token's text ("<|end|>") are drawn again."""
    while True:
        run = "".join(r.choice(pieces) for _ in range(r.randint(lo, hi))).strip()
        if "<|" not in run:
            return run


_FREE_GENERATORS: tuple[ValueGen, ...] = (
    *TRAIN_ATTRIBUTES.values(),
    *ATTRIBUTE_HEADS.values(),
    lambda r: r.choice(WORDS),
    lambda r: r.choice(WORDS).capitalize(),
)


def free_value(r: random.Random) -> str:
    """A value of any training kind (a number, a code, a plate, a date, a person, a word...), whatever the attribute's
    name suggests. In the generated facts a name fixes the kind of its value ("... code" takes "UDM-8422"), so a model
    can learn to look for a value of the expected kind rather than for the value after the asked attribute: v5 answered
    "zip code" with a code-shaped "YYI-653" where the document said 35355. Free values take that shortcut away."""
    return r.choice(_FREE_GENERATORS)(r)


def symbol_attribute(r: random.Random, pieces: Sequence[str]) -> str:
    """An attribute name of one to three random vocabulary pieces ("ightary", "ot fl"), the associative-recall form of
    a fact: it can be matched between question and document only by the identity of its tokens. Pieces that decode with
    a leading space start a new word. Names that spell a held-out attribute word, hold a line break or could form a
    special token's text ("<|end|>") are drawn again."""
    while True:
        name = _piece_run(r, pieces, 1, 3)
        words = set(name.lower().split())
        if name and "\n" not in name and not words & HELDOUT_ATTRIBUTE_WORDS:
            return name


def near_attribute(r: random.Random, attr: str) -> str:
    """An attribute name one word away from ``attr``: another modifier or another head ("badge number" or "locker code"
    for "locker number"; "backup PIN" or "PIN number" for "PIN"). Built from training words only."""
    words = attr.split(" ")
    while True:
        if len(words) == 1:
            near = f"{attr} {r.choice(_HEADS)}" if r.random() < 0.5 else f"{r.choice(ATTRIBUTE_MODIFIERS)} {attr}"
        elif words[-1] in ATTRIBUTE_HEADS and r.random() < 0.5:
            near = " ".join([*words[:-1], r.choice(_HEADS)])
        else:
            near = f"{r.choice(_ALL_MODIFIERS)} {words[-1]}"
        if near.lower() != attr.lower():
            return near


COMPANY_SUFFIXES = ("Ltd", "Group", "Labs", "Works")
# attribute names in a fixed order, drawn from once per fact
_NAMED_NAMES = tuple(TRAIN_ATTRIBUTES)
_COMPOSED_NAMES = tuple(COMPOSED_ATTRIBUTES)
_HELDOUT_NAMES = tuple(HELDOUT_ATTRIBUTES)

HeldOutAxis = Literal["attributes", "facts", "questions", "filler"]
# How a distractor fact or an absent question relates to a stated fact (see ``Curriculum.distractor_mix``); the two
# orders are the ones the mixes' thresholds are written against.
Relation = Literal["similar key", "other attribute", "other key", "near attribute"]
_DISTRACTOR_RELATIONS: tuple[Relation, ...] = ("similar key", "other attribute", "other key", "near attribute")
_NEGATIVE_RELATIONS: tuple[Relation, ...] = ("other attribute", "similar key", "other key", "near attribute")
HELD_OUT_AXES: tuple[HeldOutAxis, ...] = ("attributes", "facts", "questions", "filler")


@dataclass
class FactWorld:
    """Draws samples of one split. ``split="heldout"`` uses only held-out attributes, fact phrasings, question phrasings
    and filler. ``held_out=("questions",)`` on the training split holds out that axis alone, to measure which one a
    model fails to generalise on."""

    split: Split = "train"
    not_found: str = "not found"
    held_out: tuple[HeldOutAxis, ...] = ()
    open_share: float = 0.0  # share of attributes, fact sentences, questions and filler from the open generators
    noise_share: float = 0.0  # share of filler sentences made of random vocabulary pieces (``noise_sentence``)
    noise_pieces: tuple[str, ...] = ()  # the pieces: each vocabulary token decoded on its own
    # share of values drawn from any kind (``free_value``), not the kind the attribute's name implies
    free_value_share: float = 0.0
    # share of attribute names made of random vocabulary pieces (``symbol_attribute``; needs ``noise_pieces``)
    symbol_share: float = 0.0
    attributes: dict[str, ValueGen] = field(init=False)
    cores: tuple[str, ...] = field(init=False)
    questions: tuple[str, ...] = field(init=False)
    fillers: tuple[Callable[[random.Random], str], ...] = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.held_out) - set(HELD_OUT_AXES)
        if unknown:
            raise ValueError(f"held_out: expected axes among {HELD_OUT_AXES}, got {sorted(unknown)}")
        if not 0.0 <= self.open_share <= 1.0:
            raise ValueError(f"open_share: expected a share in [0, 1], got {self.open_share}")
        for name in ("noise_share", "symbol_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0 or (share > 0.0 and not self.noise_pieces):
                raise ValueError(f"{name}: expected a share in [0, 1] with noise_pieces, got {share}")
        if not 0.0 <= self.free_value_share <= 1.0:
            raise ValueError(f"free_value_share: expected a share in [0, 1], got {self.free_value_share}")
        if self.split == "heldout":
            self.held_out = HELD_OUT_AXES
        held = set(self.held_out)
        self.attributes = HELDOUT_ATTRIBUTES if "attributes" in held else {**TRAIN_ATTRIBUTES, **COMPOSED_ATTRIBUTES}
        self.cores = HELDOUT_FACT_CORES if "facts" in held else TRAIN_FACT_CORES
        self.questions = HELDOUT_QUESTIONS if "questions" in held else TRAIN_QUESTIONS
        self.fillers = HELDOUT_FILLERS if "filler" in held else TRAIN_FILLERS

    # -- pieces ---------------------------------------------------------------------------------------------------------
    def attribute(self, r: random.Random) -> str:
        """An attribute name: on the training split a named one ("phone number") or a composed one ("vault code")."""
        if "attributes" in self.held_out:
            return r.choice(_HELDOUT_NAMES)
        if self._drawn(r, self.symbol_share):
            return symbol_attribute(r, self.noise_pieces)
        if self._open(r):
            return open_attribute(r)
        if r.random() < NAMED_ATTRIBUTE_SHARE:
            return r.choice(_NAMED_NAMES)
        return r.choice(_COMPOSED_NAMES)

    def key(self, r: random.Random) -> str:
        kind = r.random()
        word = r.choice(WORDS).capitalize() if r.random() < 0.5 else _name(r)
        if kind < 0.7:
            return _person(r)
        if kind < 0.8:
            return f"project {word}"
        if kind < 0.9:
            return f"the ship {word}"
        return f"{word} {r.choice(COMPANY_SUFFIXES)}"

    def similar_key(self, r: random.Random, key: str) -> str:
        """A key that shares all but one word with ``key`` ("Alice Weber" for "Alice Adler", "project Velo" for
        "project Falcon")."""
        parts = key.split(" ")
        if len(parts) == 2 and parts[1] not in COMPANY_SUFFIXES and parts[0] != "project":
            return f"{parts[0]} {_last(r)}" if r.random() < 0.5 else f"{_first(r)} {parts[1]}"
        if len(parts) > 1 and parts[-1] in COMPANY_SUFFIXES:
            return f"{_name(r)} {parts[-1]}"
        return f"{' '.join(parts[:-1])} {_name(r)}" if len(parts) > 1 else self.key(r)

    def near_attribute(self, r: random.Random, attr: str) -> str:
        """An attribute one word away from ``attr`` (:func:`near_attribute`); with held-out attributes, another one of
        them, so no training word enters the held-out names."""
        return self.attribute(r) if "attributes" in self.held_out else near_attribute(r, attr)

    def _open(self, r: random.Random) -> bool:
        """Whether this draw comes from the open generators (no draw at all when ``open_share`` is 0, so stage-1 data is
        unchanged by their existence)."""
        return self._drawn(r, self.open_share)

    def _drawn(self, r: random.Random, share: float) -> bool:
        """A training-split draw with probability ``share`` (no draw at all when it is 0: stage-1 data stays as it was)."""
        return self.split == "train" and share > 0.0 and r.random() < share

    def value(self, r: random.Random, attr: str) -> str:
        if self._drawn(r, self.free_value_share):
            return free_value(r)
        gen = self.attributes.get(attr)
        return gen(r) if gen is not None else open_value(attr, r)

    def fact(self, r: random.Random, key: str, attr: str, decorate: bool = True) -> Fact:
        value = self.value(r, attr)
        if "facts" not in self.held_out and self._open(r):
            return Fact(key=key, attr=attr, value=value, sentence=open_fact_sentence(r, key, attr, value))
        core = r.choice(self.cores).format(key=key, attr=attr, value=value)
        if not decorate:
            return Fact(key=key, attr=attr, value=value, sentence=core[0].upper() + core[1:])
        opening = r.choice(FACT_OPENINGS)
        if opening and not core.startswith((key, value)):
            core = core[0].lower() + core[1:]
        sentence = f"{opening}{core}{r.choice(FACT_ENDINGS)}"
        return Fact(key=key, attr=attr, value=value, sentence=sentence[0].upper() + sentence[1:])

    def filler(self, r: random.Random) -> str:
        if self._drawn(r, self.noise_share):
            return noise_sentence(r, self.noise_pieces)
        if "filler" not in self.held_out and self._open(r):
            return open_filler(r)
        return r.choice(self.fillers)(r)

    def question(self, r: random.Random, key: str, attr: str, answer: str, present: bool) -> Question:
        if "questions" not in self.held_out and self._open(r):
            text = open_question(r, key, attr)
        else:
            text = r.choice(self.questions).format(key=key, attr=attr)
        return Question(text=text[0].upper() + text[1:], answer=answer, key=key, attr=attr, present=present)

    # -- samples --------------------------------------------------------------------------------------------------------
    def related_pair(
        self, r: random.Random, facts: list[Fact], mix: tuple[float, float, float], relations: tuple[Relation, ...]
    ) -> tuple[str, str]:
        """A (key, attribute) pair related to one of ``facts``: one uniform draw against the cumulative thresholds ``mix``
        picks one of the four ``relations`` (in the order given)."""
        base, u = r.choice(facts), r.random()
        relation = relations[sum(u >= t for t in mix)]
        if relation == "similar key":
            return self.similar_key(r, base.key), base.attr
        if relation == "other attribute":
            return base.key, self.attribute(r)
        if relation == "other key":
            return self.key(r), base.attr
        return (base.key if r.random() < 0.5 else self.key(r)), self.near_attribute(r, base.attr)

    def facts(
        self,
        r: random.Random,
        n: int,
        distractor_rate: float,
        decoration_rate: float = 1.0,
        mix: tuple[float, float, float] = (0.6, 1.0, 1.0),
    ) -> list[Fact]:
        """``n`` facts; a share ``distractor_rate`` of them after the first are about an earlier fact's key or attribute,
        split by ``mix`` (see ``Curriculum.distractor_mix``)."""
        out: list[Fact] = []
        used: set[tuple[str, str]] = set()
        while len(out) < n:
            if out and r.random() < distractor_rate:
                key, attr = self.related_pair(r, out, mix, _DISTRACTOR_RELATIONS)
            else:
                key, attr = self.key(r), self.attribute(r)
            if (key, attr) in used:
                continue
            used.add((key, attr))
            out.append(self.fact(r, key, attr, decorate=r.random() < decoration_rate))
        return out

    def absent_question(
        self, r: random.Random, facts: list[Fact], hard_rate: float, mix: tuple[float, float, float] = (0.4, 0.8, 1.0)
    ) -> Question:
        present = {(f.key, f.attr) for f in facts}
        for _ in range(50):
            if facts and r.random() < hard_rate:
                # its key with another attribute, a similar key with its attribute, an unrelated key with it, or a near
                # attribute, split by ``mix`` (see ``Curriculum.negative_mix``)
                key, attr = self.related_pair(r, facts, mix, _NEGATIVE_RELATIONS)
            else:
                key, attr = self.key(r), self.attribute(r)
            if (key, attr) not in present:
                return self.question(r, key, attr, self.not_found, present=False)
        return self.question(r, "Quentin Nobody", self.attribute(r), self.not_found, present=False)

    def document(self, r: random.Random, facts: list[Fact], target_chars: int) -> str:
        """Filler sentences up to about ``target_chars``, with the facts at random places, cut into short documents."""
        sentences: list[str] = []
        size = sum(len(f.sentence) + 1 for f in facts)
        while size < target_chars:
            sentences.append(self.filler(r))
            size += len(sentences[-1]) + 1
        for fact in facts:
            sentences.insert(r.randint(0, len(sentences)), fact.sentence)
        paragraphs: list[str] = []
        i = 0
        while i < len(sentences):
            step = r.randint(2, 7)
            para = " ".join(sentences[i : i + step])
            if r.random() < 0.25:
                para = f"{r.choice(TITLES)} {r.randint(1, 99)}:\n{para}"
            paragraphs.append(para)
            i += step
        return "\n\n".join(paragraphs)

    def sample(
        self, r: random.Random, curriculum: Curriculum, n_facts: int | None = None, target_chars: int | None = None
    ) -> Sample:
        """One context with ``curriculum.questions`` questions. ``n_facts=0`` gives a fact-free context."""
        if n_facts is None:
            n_facts = 0 if r.random() < curriculum.empty_rate else r.randint(1, curriculum.max_facts)
        facts = self.facts(
            r, n_facts, curriculum.distractor_rate, curriculum.decoration_rate, curriculum.distractor_mix
        )
        if target_chars is None:
            target_chars = r.randint(curriculum.min_chars, curriculum.max_chars)
        context = self.document(r, facts, target_chars)
        questions = []
        for _ in range(curriculum.questions):
            if not facts or r.random() < curriculum.absent_rate:
                questions.append(
                    self.absent_question(r, facts, curriculum.hard_negative_rate, curriculum.negative_mix)
                )
            else:
                f = r.choice(facts)
                questions.append(self.question(r, f.key, f.attr, f.value, present=True))
        return Sample(context=context, facts=tuple(facts), questions=tuple(questions))
