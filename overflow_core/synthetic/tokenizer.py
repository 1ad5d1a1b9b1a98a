"""Train the bundled model's tokenizer: byte-level BPE with single-digit tokens, a small vocabulary and a chat template.

Digits are split one by one so that copying a number from the document is copying digits, whatever the number. The space
before a number stays on its first digit (" 4412" is "Ġ4 4 1 2", not "Ġ 4 4 1 2"): the first token of an answer is what
OPRM ranks chunks by, and a bare space token would be equally confident in every chunk that holds any number.
Byte-level means any text, in any script, is encodable (unknown words just take more tokens).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from overflow_core.synthetic.facts import Curriculum, FactWorld

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "train_tokenizer"]

PAD, END, USER, ASSISTANT = "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, END, USER, ASSISTANT]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    world = FactWorld("train")
    for i in range(n):
        sample = world.sample(rng, Curriculum.at(i / n))
        yield sample.context
        for q in sample.questions:
            yield f'Question: {q.text}\nIf the document does not say, answer "not found".\n{q.answer}'
        yield "Read the document and answer the question.\n<doc>\n</doc>\nInstruction: Answer:"


def train_tokenizer(
    out_dir: str | Path,
    *,
    vocab_size: int = 2048,
    samples: int = 20000,
    seed: int = 1,
    texts: Iterable[str] | None = None,
) -> Path:
    """Train the tokenizer on generated training text (or on ``texts`` when given) and save it as a Hugging Face
    tokenizer folder.

    Example:
        >>> path = train_tokenizer("/tmp/tok", samples=200)  # doctest: +SKIP
        >>> AutoTokenizer.from_pretrained(path)  # doctest: +SKIP
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(samples, seed) if texts is None else texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=END, additional_special_tokens=[USER, ASSISTANT]
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out
