"""Refactors change no result: every method, seed 0, tiny-random, 6 steps, gives the prompts
and losses recorded in tests/data/golden.json, which tests/data/make_golden.py wrote on the
checkout before the CLI/config/layout refactor (commit c881d34)."""

import json
from pathlib import Path

import pytest

from tests.data.make_golden import METHODS, golden

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "golden.json").read_text())


@pytest.fixture(scope="module")
def now():
    return golden()


@pytest.mark.parametrize("method", METHODS)
def test_fixed_seed_results_are_unchanged(now, method):
    assert now[method]["prompt_ids"] == GOLDEN[method]["prompt_ids"]
    assert now[method]["lcs_ratio"] == GOLDEN[method]["lcs_ratio"]
    assert now[method]["loss"] == pytest.approx(GOLDEN[method]["loss"], abs=1e-4)
