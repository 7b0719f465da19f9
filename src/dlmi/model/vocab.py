"""Which tokens a learnable prompt may use: prompts that work as text.

A restriction is a sorted set of allowed token ids; methods then optimise over that
sub-vocabulary only (DifferentiableLM maps its indices back), so every method honours it by
construction, and a smaller vocabulary is also a cheaper one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dlmi.errors import UsageError
from dlmi.files import read_text

VOCABS = ("all", "no-special", "ascii", "printable")


def special_ids(tokenizer) -> set[int]:
    """Control tokens (BOS, EOS, chat markers, ...): the tokenizer's special and added-special
    tokens."""
    found = set(getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(token, "special", False):
            found.add(int(token_id))
    return found


def token_texts(lm) -> list[str]:
    """Each token id's text on its own (cached on the LoadedModel: decoding 50k ids takes a
    moment). Ids past the tokenizer (padded embedding rows) are ''."""
    cached = getattr(lm, "_token_texts", None)
    if cached is None:
        known = len(lm.tokenizer)
        texts = lm.tokenizer.batch_decode([[i] for i in range(min(known, lm.vocab_size))],
                                          skip_special_tokens=False,
                                          clean_up_tokenization_spaces=False)
        cached = texts + [""] * (lm.vocab_size - len(texts))
        lm._token_texts = cached
    return cached


def _kept_by(vocab: str, text: str) -> bool:
    if vocab == "ascii":
        return text.isascii()
    if vocab == "printable":  # ASCII without control characters (no newline, no tab)
        return text.isascii() and text.isprintable()
    return True


def allowed_token_ids(lm, vocab: str = "no-special", allow: str | None = None,
                      deny: str | None = None, banned: Iterable[int] = ()) -> torch.Tensor | None:
    """Sorted allowed ids (V',) long, or None when every token is allowed.

    vocab: all | no-special | ascii | printable (the last two drop special tokens too and keep
    tokens whose text is ASCII / printable ASCII). allow, deny: a user's lists (see
    parse_token_list); banned: ids no prompt may use (e.g. the target's own tokens).
    """
    if vocab not in VOCABS:
        raise UsageError(f"vocab must be one of {', '.join(VOCABS)}, got {vocab!r}: "
                         "change --vocab")
    V = lm.vocab_size
    keep = torch.ones(V, dtype=torch.bool)
    if vocab != "all":
        keep[[i for i in special_ids(lm.tokenizer) if 0 <= i < V]] = False
        if vocab in ("ascii", "printable"):
            texts = token_texts(lm)
            keep &= torch.tensor([bool(t) and _kept_by(vocab, t) for t in texts])
    if allow is not None:
        only = torch.zeros(V, dtype=torch.bool)
        only[parse_token_list(lm, allow, "vocab_allow")] = True
        keep &= only
    if deny is not None:
        keep[parse_token_list(lm, deny, "vocab_deny")] = False
    banned = [int(t) for t in banned]
    if banned:
        keep[banned] = False
    if bool(keep.all()):
        return None
    ids = keep.nonzero()[:, 0]
    if ids.numel() == 0:
        raise UsageError("the vocabulary restriction leaves no token for the prompt: "
                         "loosen --vocab, vocab_allow or vocab_deny")
    return ids


def parse_token_list(lm, spec: str, name: str) -> list[int]:
    """A token list: comma-separated ids ("11,12,13"), or @FILE with one text per line whose
    tokens are listed (words a user allows or forbids)."""
    spec = spec.strip()
    if spec.startswith("@"):
        text = read_text(spec[1:], f"{name} file")
        ids = sorted({t for line in text.splitlines() if line.strip() for t in lm.encode(line)})
    else:
        try:
            ids = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"{name} takes comma-separated token ids or @FILE of texts, "
                             f"got {spec!r}") from None
    bad = [i for i in ids if not 0 <= i < lm.vocab_size]
    if bad:
        raise UsageError(f"{name}: token id {bad[0]} is outside the vocabulary "
                         f"(0..{lm.vocab_size - 1})")
    if not ids:
        raise UsageError(f"{name} lists no tokens: give ids or a file of texts")
    return ids
