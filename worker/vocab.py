"""A vocabulary cut down to the tokens the training titles use, for models trained from scratch.

bert-base-chinese has 21,128 entries; THUCNews titles use about 6,400 of them. A model built from
a config learns nothing for the others (their embeddings stay random noise), while the masked-LM
head still pays for all of them on every token: trimming halves the cost of an MLM step. A
character the training data never showed maps to [UNK] instead of an untrained vector.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def kept_tokens(vocab: list[str], used_ids: Iterable[int], special_ids: Iterable[int]) -> list[str]:
    """The entries of `vocab` that are special or used, in their original order."""
    keep = set(used_ids) | set(special_ids)
    return [token for index, token in enumerate(vocab) if index in keep]


def trimmed_tokenizer(tokenizer: Any, titles: list[str], out_dir: Path) -> Any:
    """A tokenizer like `tokenizer` whose vocabulary holds only what `titles` use."""
    vocab = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    used = (i for ids in tokenizer(titles)["input_ids"] for i in ids)
    tokens = kept_tokens(vocab, used, tokenizer.all_special_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    for path in out_dir.iterdir():
        if path.name not in TOKENIZER_FILES:  # tokenizer.json would carry the full vocabulary
            path.unlink()
    (out_dir / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return AutoTokenizer.from_pretrained(str(out_dir))
