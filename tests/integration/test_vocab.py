"""Vocabulary restrictions hold on every returned prompt of every method."""

import pytest

import dlmi
from dlmi.errors import UsageError
from dlmi.methods.registry import method_names
from dlmi.model.vocab import allowed_token_ids, special_ids

TARGET = [40, 41, 42, 43]


@pytest.mark.parametrize("method", method_names())
def test_every_method_keeps_to_the_allowed_tokens(tiny_lm, method):
    allowed = set(range(10, 30))
    r = dlmi.invert(tiny_lm, TARGET, method=method, prompt_length=4, steps=4, eval_every=2,
                    vocab_allow=",".join(map(str, sorted(allowed))))
    assert set(r.prompt_ids) <= allowed, r.prompt_ids
    assert r.config["vocab_allow"]


@pytest.mark.parametrize("method", ["dlmi", "dlmi-search", "gcg"])
def test_no_target_tokens_and_deny_list(tiny_lm, method):
    r = dlmi.invert(tiny_lm, TARGET, method=method, prompt_length=6, steps=4, eval_every=2,
                    no_target_tokens=True, vocab_deny="50,51,52")
    assert not set(r.prompt_ids) & (set(TARGET) | {50, 51, 52} | special_ids(tiny_lm.tokenizer))


def test_no_special_drops_control_tokens(tiny_lm):
    assert allowed_token_ids(tiny_lm, "all") is None
    no_special = allowed_token_ids(tiny_lm, "no-special").tolist()
    assert special_ids(tiny_lm.tokenizer) == {0, 1, 2}
    assert set(special_ids(tiny_lm.tokenizer)).isdisjoint(no_special)
    assert len(no_special) == tiny_lm.vocab_size - 3


@pytest.mark.slow
def test_ascii_and_printable_on_the_default_tokenizer(smollm2):
    lm = smollm2
    ascii_ids = allowed_token_ids(lm, "ascii")
    printable = allowed_token_ids(lm, "printable")
    assert 0 < len(printable) < len(ascii_ids) < lm.vocab_size
    for i in printable.tolist()[::97]:
        text = lm.decode([i])
        assert text.isascii() and text.isprintable()
    assert lm.encode("\n")[0] in ascii_ids.tolist()
    assert lm.encode("\n")[0] not in printable.tolist()
    assert 1 not in ascii_ids.tolist()  # <|im_start|>


def test_words_file_and_errors(tiny_lm, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("ab\nc\n")
    ids = allowed_token_ids(tiny_lm, "all", allow=f"@{words}").tolist()
    assert ids == sorted(set(tiny_lm.encode("abc")))
    with pytest.raises(UsageError, match="vocab must be one of"):
        allowed_token_ids(tiny_lm, "latin")
    with pytest.raises(UsageError, match="outside the vocabulary"):
        allowed_token_ids(tiny_lm, "all", deny="100000")
    with pytest.raises(UsageError, match="leaves no token"):
        allowed_token_ids(tiny_lm, "no-special", allow="0,1")
