"""Real English text for the compositional generators, read from files already on the machine (nothing is downloaded).

Two families of sources, never mixed:

- **Training** (:func:`training_text`): the Debian packages ``fortunes`` (about 15,000 quotations, jokes and short texts
  in 40 files: literature, science, law, computers, food...) for filler and ``wamerican-large`` (170,000 English words
  and names) for attribute names, keys and word values. They are installed for training only
  (``apt-get install -y fortunes wamerican-large``, see ``training/README.md``); the library never needs them.
- **Held out** (:func:`heldout_text`): the docstrings of a fixed list of Python standard-library modules, parsed (not
  imported) from the running interpreter's source files. Always available, English of another kind (technical
  documentation), and used by no training generator.

A word is *reserved* (:func:`is_reserved`) when a CRC-32 of its lower-case form falls in one sixteenth of the hash space:
reserved words may name an attribute of the held-out family and never name a training attribute, so the two families'
attribute names are disjoint by construction. Reserved words still occur in training filler as ordinary words.
"""

from __future__ import annotations

import ast
import re
import sysconfig
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "FORTUNES_DIR",
    "HELDOUT_MODULES",
    "WORDS_FILE",
    "SourceMissingError",
    "TextSource",
    "heldout_text",
    "is_reserved",
    "sentences_of",
    "training_text",
]

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDS_FILE = Path("/usr/share/dict/american-english-large")
# fortune files that are pictures or other languages, not English prose
_SKIPPED_FORTUNES = frozenset({"ascii-art", "translate-me"})
# the held-out filler: docstrings of these standard-library modules (sorted, fixed: the same text on every machine
# with the same Python)
HELDOUT_MODULES = (
    "argparse.py", "calendar.py", "csv.py", "decimal.py", "difflib.py", "fractions.py", "ftplib.py", "heapq.py",
    "imaplib.py", "inspect.py", "ipaddress.py", "mailbox.py", "pathlib.py", "pickle.py", "poplib.py", "shutil.py",
    "smtplib.py", "statistics.py", "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "turtle.py",
    "zipfile/__init__.py", "_pydecimal.py", "datetime.py", "logging/__init__.py", "email/message.py", "sched.py",
    "socketserver.py", "configparser.py", "tempfile.py",
)  # fmt: skip
RESERVED_BUCKETS = 16  # one word in 16 is reserved for held-out attribute names


class SourceMissingError(FileNotFoundError):
    """A text source's files are not on this machine (install the package its message names)."""


def is_reserved(word: str) -> bool:
    """Whether ``word`` may name a held-out attribute (and so never names a training attribute)."""
    return zlib.crc32(word.lower().encode()) % RESERVED_BUCKETS == 0


@dataclass(frozen=True)
class TextSource:
    """Sentences of filler and a list of words, with the name of where they came from."""

    name: str
    sentences: tuple[str, ...]
    words: tuple[str, ...]  # lower-case English words, letters only
    names: tuple[str, ...]  # capitalised words (given names, surnames, places)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_SPACES = re.compile(r"\s+")


def sentences_of(text: str, *, min_chars: int = 20, max_chars: int = 240) -> list[str]:
    """Split prose into sentences: whitespace collapsed, ASCII only, ``min_chars`` to ``max_chars`` long, no special
    token text (``<|``) and no line breaks."""
    out = []
    for part in _SENTENCE_END.split(_SPACES.sub(" ", text).strip()):
        part = part.strip()
        if min_chars <= len(part) <= max_chars and part.isascii() and "<|" not in part and part.isprintable():
            out.append(part)
    return out


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise SourceMissingError(
            f"{path}: expected the Debian package {package!r} to be installed for training"
            f" (apt-get install -y {package}), got no such path"
        )


def fortune_sentences(folder: Path = FORTUNES_DIR) -> tuple[str, ...]:
    """Every sentence of every English fortune file, attributions ("-- Mark Twain") dropped, in a fixed order."""
    _require(folder, "fortunes")
    out: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix or path.name in _SKIPPED_FORTUNES or not path.is_file():
            continue
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            body = "\n".join(line for line in cookie.splitlines() if not line.strip().startswith("--"))
            out.extend(sentences_of(body))
    return tuple(dict.fromkeys(out))


def dictionary_words(path: Path = WORDS_FILE) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Lower-case words and capitalised names of a Debian word list (letters only, 3-14 characters)."""
    _require(path, "wamerican-large")
    words: list[str] = []
    names: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        w = line.strip()
        if not (3 <= len(w) <= 14 and w.isascii() and w.isalpha()):
            continue
        if w.islower():
            words.append(w)
        elif w[0].isupper() and w[1:].islower():
            names.append(w)
    return tuple(words), tuple(names)


@lru_cache(maxsize=2)
def training_text(fortunes: Path = FORTUNES_DIR, words_file: Path = WORDS_FILE) -> TextSource:
    """The training generators' text: fortunes for filler, the word list for vocabulary and names."""
    words, names = dictionary_words(words_file)
    return TextSource(
        name="debian:fortunes+wamerican-large", sentences=fortune_sentences(fortunes), words=words, names=names
    )


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                out.append(doc)
    return out


_DOC_WORD = re.compile(r"^[A-Za-z]{3,14}$")
_CODEISH = re.compile(r"[_=<>{}\[\]\\|`#@$]|\.\w|\w\(|>>>")


@lru_cache(maxsize=1)
def heldout_text(modules: Sequence[str] = HELDOUT_MODULES) -> TextSource:
    """The held-out family's text: sentences and words of standard-library docstrings (no code-like sentences)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sentences: list[str] = []
    for module in modules:
        path = stdlib / module
        if not path.is_file():
            continue
        for doc in _docstrings(path):
            sentences.extend(s for s in sentences_of(doc, min_chars=30) if not _CODEISH.search(s))
    if len(sentences) < 500:
        raise SourceMissingError(
            f"{stdlib}: expected the Python standard library's sources (docstrings of {len(modules)} modules),"
            f" got {len(sentences)} sentences"
        )
    sentences = list(dict.fromkeys(sentences))
    tokens = {w.strip(".,;:!?()\"'") for s in sentences for w in s.split()}
    words = tuple(sorted(w for w in tokens if _DOC_WORD.match(w) and w.islower()))
    names = tuple(sorted(w for w in tokens if _DOC_WORD.match(w) and w[0].isupper() and w[1:].islower()))
    return TextSource(name="python-stdlib-docstrings", sentences=tuple(sentences), words=words, names=names)
