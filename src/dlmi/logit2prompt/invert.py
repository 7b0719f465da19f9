"""Using a trained inverter: candidate prompts for a distribution, judged the way the
literature does (exact match, token F1, BLEU against the hidden prompt) and the way this
project does (the subject model's greedy output from the candidate, LCS against the hidden
prompt's output)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import torch

from dlmi.errors import UsageError
from dlmi.logit2prompt.data import next_token_logprobs
from dlmi.logit2prompt.model import Logit2Prompt
from dlmi.metrics import lcs_ratio
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.vocab import special_ids


@dataclass
class Candidate:
    prompt_ids: list[int]
    prompt_text: str
    output_text: str  # the subject model's greedy output from this prompt
    lcs_ratio: float  # against the hidden prompt's greedy output
    exact_match: bool | None = None  # against the hidden prompt, when it is known
    token_f1: float | None = None
    bleu: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def token_f1(candidate: list[int], reference: list[int]) -> float:
    """F1 of the two bags of tokens (Morris et al. 2023)."""
    common = sum((Counter(candidate) & Counter(reference)).values())
    if not common:
        return 0.0
    p, r = common / len(candidate), common / len(reference)
    return 2 * p * r / (p + r)


def bleu(candidate: str, reference: str) -> float:
    try:
        import sacrebleu
    except ImportError:
        raise UsageError("BLEU needs sacrebleu: pip install 'dlmi[l2p]'") from None

    return float(sacrebleu.sentence_bleu(candidate, [reference]).score)


@torch.no_grad()
def greedy_text_ids(lm, prompt_ids: list[int], M: int) -> list[int]:
    if not prompt_ids:
        return []
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=lm.device)
    return DifferentiableLM(lm, prompt_vocab=None).greedy_decode(prompt, M, model_ids=True
                                                                 )[0].tolist()


def invert_distribution(inverter: Logit2Prompt, lm, logprobs: torch.Tensor,
                        hidden_ids: list[int] | None = None, reference_output: list[int]
                        | None = None, beams: int = 4, candidates: int = 4,
                        output_tokens: int = 16) -> list[Candidate]:
    """Candidates (best first) for one distribution (V,). hidden_ids: the true prompt, when
    known (exact match, token F1, BLEU); reference_output: the output to match (default: the
    hidden prompt's greedy output)."""
    dev = next(inverter.parameters()).device
    written = inverter.write(logprobs[None].to(dev), beams, candidates)[0]
    if reference_output is None and hidden_ids:
        reference_output = greedy_text_ids(lm, hidden_ids, output_tokens)
    found = []
    for ids in written:
        out = greedy_text_ids(lm, ids, output_tokens)
        c = Candidate(ids, lm.decode(ids), lm.decode(out),
                      lcs_ratio(out, reference_output) if reference_output else 0.0)
        if hidden_ids:
            c.exact_match = ids == list(hidden_ids)
            c.token_f1 = token_f1(ids, list(hidden_ids))
            c.bleu = bleu(c.prompt_text, lm.decode(hidden_ids))
        found.append(c)
    return found


def distribution_of(lm, prompt_text: str) -> tuple[list[int], torch.Tensor]:
    ids = lm.encode(prompt_text)
    return ids, next_token_logprobs(lm, [ids])[0]


def warm_start_prompt(inverter: Logit2Prompt, lm, target_ids: list[int], beams: int = 4
                      ) -> tuple[list[int], float]:
    """A start for inverting a target: the inverter reads a distribution with (almost) all
    mass on the target's first token; of its candidates, the one whose greedy output best
    matches the target wins. Returns (prompt ids, that candidate's LCS)."""
    V = lm.vocab_size
    logprobs = torch.full((V,), math.log(1e-3 / (V - 1)))
    logprobs[target_ids[0]] = math.log(1 - 1e-3)
    found = invert_distribution(inverter, lm, logprobs, reference_output=list(target_ids),
                                beams=beams, candidates=beams, output_tokens=len(target_ids))
    best = max(found, key=lambda c: c.lcs_ratio)
    special = special_ids(lm.tokenizer)  # a start the default vocabulary allows
    return [t for t in best.prompt_ids if t not in special], best.lcs_ratio
