"""Shared fixtures: tiny random models built in-process (fast), the real default model (slow)."""

import pytest
import torch

from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model


@pytest.fixture(scope="session")
def tiny_lm():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return load_model("tiny-random-gpt2", device="cpu")


@pytest.fixture(scope="session", params=["tiny-random", "tiny-random-gpt2"])
def any_tiny(request):
    """Both tiny architectures (Llama-style and GPT-2)."""
    return load_model(request.param, device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m", device="cpu")


def hidden_prompt_target(lm, seed: int, prompt_len: int = 4, target_len: int = 6) -> list[int]:
    """A target made by greedy decoding from a hidden random prompt (so a solution exists)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(3, lm.vocab_size, (1, prompt_len), generator=g)
    return DifferentiableLM(lm).greedy_decode(hidden, target_len)[0].tolist()
