"""Round trip: the ids a user really gets by pasting a prompt's text into its context."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def retokenised(lm, before: Sequence[int], ids: Sequence[int], after: Sequence[int] = ()
                ) -> list[int]:
    """The span's ids when the prompt's text is tokenised together with the fixed text around
    it (before + text + after); where the boundaries merge into other tokens, the text's own
    tokens. Equal to `ids` exactly when the prompt survives being used as text."""
    text = lm.decode(ids)
    before, after = list(before), list(after)
    full = lm.encode(lm.decode(before) + text + lm.decode(after))
    end = len(full) - len(after)
    if full[: len(before)] == before and full[end:] == after and end >= len(before):
        return full[len(before): end]
    return lm.encode(text)


def round_trips(lm, before: Sequence[int], prompts: torch.Tensor, after: Sequence[int] = ()
                ) -> torch.Tensor:
    """Which prompts (..., N) of model ids survive as text between `before` and `after`:
    before + text + after tokenises to before + ids + after. -> bool (...)."""
    flat = prompts.reshape(-1, prompts.shape[-1]).tolist()
    tok = lm.tokenizer
    texts = tok.batch_decode(flat, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    before, after = list(before), list(after)
    head = lm.decode(before) if before else ""
    tail = lm.decode(after) if after else ""
    again = tok([head + t + tail for t in texts], add_special_tokens=False)["input_ids"]
    ok = [list(a) == before + ids + after for a, ids in zip(again, flat, strict=True)]
    return torch.tensor(ok, device=prompts.device).view(prompts.shape[:-1])


def mended(lm, before: Sequence[int], ids: Sequence[int], ranked: Sequence[Sequence[int]],
           after: Sequence[int] = ()) -> list[int]:
    """ids changed, left to right, where their text would not re-tokenise to them: at each
    position where the prompt so far fails the round trip (its token merges with the ones
    before, or, last, with `after`), the first of that position's alternatives `ranked[i]`
    that passes replaces it; where none passes, the token stays. A long prompt drawn token
    by token usually fails at a few positions only (Z's argmax at N = 80: one)."""
    out: list[int] = []
    last = len(ids) - 1
    for i, token in enumerate(ids):
        tail = after if i == last else ()
        for choice in (token, *ranked[i]):
            if bool(round_trips(lm, before, torch.tensor([[*out, choice]]), tail)[0]):
                out.append(choice)
                break
        else:
            out.append(token)
    return out
