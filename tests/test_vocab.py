from pathlib import Path

from transformers import AutoTokenizer

from tests.conftest import TOKENIZER_DIR
from worker.vocab import kept_tokens, trimmed_tokenizer


def test_kept_tokens_keeps_specials_and_used_in_order() -> None:
    vocab = ["[PAD]", "a", "[UNK]", "b", "c", "d"]
    assert kept_tokens(vocab, used_ids=[4, 1, 4], special_ids=[0, 2]) == [
        "[PAD]",
        "a",
        "[UNK]",
        "c",
    ]


def test_trimmed_tokenizer_encodes_seen_text_alike_and_unseen_as_unk(tmp_path: Path) -> None:
    full = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    titles = ["北京房价上涨", "球队赢得比赛"]
    trimmed = trimmed_tokenizer(full, titles, tmp_path / "tok")
    used = {i for ids in full(titles)["input_ids"] for i in ids}
    assert len(trimmed) == len(used | set(full.all_special_ids)) < len(full) // 100
    for title in titles:
        ids = trimmed(title)["input_ids"]
        assert trimmed.convert_ids_to_tokens(ids) == full.convert_ids_to_tokens(
            full(title)["input_ids"]
        )
    unseen = trimmed("猫")["input_ids"]
    assert trimmed.convert_ids_to_tokens(unseen) == ["[CLS]", "[UNK]", "[SEP]"]
    assert trimmed.pad_token_id == 0
    # and it survives save_pretrained / from_pretrained, as a model folder carries it
    trimmed.save_pretrained(str(tmp_path / "model"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    assert again("北京")["input_ids"] == trimmed("北京")["input_ids"]
