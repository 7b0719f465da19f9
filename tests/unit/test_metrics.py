import pytest

from dlmi.metrics import exact_match, lcs_length, lcs_ratio, overlap_rate


@pytest.mark.parametrize("a,b,n", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 4),
    ([1, 2, 3, 4], [4, 3, 2, 1], 1),
    ([1, 3, 5, 7], [1, 2, 3, 4, 5], 3),
    ([], [1, 2], 0),
    ([7, 7, 7], [7, 1, 7], 2),
])
def test_lcs_length_hand_cases(a, b, n):
    assert lcs_length(a, b) == n
    assert lcs_length(b, a) == n


def test_lcs_ratio_is_relative_to_target_length():
    assert lcs_ratio([1, 9, 3, 9], [1, 2, 3, 4]) == 0.5
    assert lcs_ratio([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    with pytest.raises(ValueError):
        lcs_ratio([1], [])


def test_exact_match():
    assert exact_match([1, 2], (1, 2)) and not exact_match([1, 2], [1, 3])


def test_overlap_rate_counts_target_tokens_found_in_prompt():
    assert overlap_rate([5, 6, 7], [5, 9, 7, 8]) == 0.5
    assert overlap_rate([5], [2, 2, 5], ignore=[2]) == 1.0
    assert overlap_rate([5], [2, 2], ignore=[2]) == 0.0

