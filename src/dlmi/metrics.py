"""Metrics of the paper's evaluation protocol. Token ids in, numbers out; no torch needed here."""

from __future__ import annotations

from collections.abc import Sequence


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence (not substring) of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_ratio(output: Sequence[int], target: Sequence[int]) -> float:
    """The paper's accuracy: token-level LCS(output, target) / len(target), in [0, 1].

    Like ROUGE-L recall at the token level. Output and target are both greedy/EoS-padded to the
    same length in this project, so the ratio is symmetric in practice. 1.0 iff output==target
    when lengths are equal.
    """
    if len(target) == 0:
        raise ValueError("target is empty")
    return lcs_length(output, target) / len(target)


def exact_match(output: Sequence[int], target: Sequence[int]) -> bool:
    return list(output) == list(target)


def overlap_rate(prompt: Sequence[int], target: Sequence[int],
                 ignore: Sequence[int] = ()) -> float:
    """Share of the target's token positions whose token also occurs in the prompt.

    The paper's "cheating" check: a prompt such as 'Repeat: <target>' scores near 1. Token ids
    in `ignore` (e.g. EoS padding) are not counted. 0.0 for a target made only of ignored ids.
    """
    skip = set(ignore)
    prompt_set = set(prompt)
    counted = [t for t in target if t not in skip]
    if not counted:
        return 0.0
    return sum(t in prompt_set for t in counted) / len(counted)
