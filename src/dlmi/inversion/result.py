"""InversionResult: what one inversion found, how well, at what cost, and where it came from."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # results are read without torch (dlmi report)
    import torch


def visible(text: str) -> str:
    """Show whitespace: space as '·', newline as '↵', tab as '→' (plus the real newline gone)."""
    return text.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


@dataclass
class InversionResult:
    method: str
    model: str
    prompt_ids: list[int]
    prompt_text: str
    output_ids: list[int]  # greedy decoding of prompt_ids, the only judge of success
    output_text: str
    target_ids: list[int]
    target_text: str
    lcs_ratio: float  # best LCS ratio of the greedy output over the run (anytime)
    exact_match: bool
    roundtrip_ok: bool  # prompt_text re-tokenises to prompt_ids
    steps: int  # optimisation steps taken
    seconds: float  # wall time until this target was done
    seed: int
    prefix_ids: list[int] = field(default_factory=list)
    # The method's best ids did not survive as text; prompt_ids are its text re-tokenised,
    # and output and LCS are theirs (config roundtrip).
    prompt_repaired: bool = False
    solved_at_step: int | None = None
    interrupted: bool = False
    lcs_at_budget: dict[str, float] = field(default_factory=dict)  # step budget -> best LCS
    # The paper's metric, never success: LCS of the argmax of the teacher-forced logits of a
    # training forward (first sample, relaxed prompt), best over the run; None for methods
    # whose training forward has no such logits (GCG, random search).
    soft_lcs: float | None = None
    soft_lcs_at_budget: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per evaluation point
    compute: dict = field(default_factory=dict)  # ComputeCounter of this target's share
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    # exp(mean NLL) of the prompt under the model, after its fixed context (else BoS)
    prompt_perplexity: float | None = None
    # Soft prompts only (method soft-prompt): the greedy output of the embeddings themselves,
    # best over the run; the fields above judge their nearest tokens. None for hard methods.
    embedding_lcs: float | None = None
    embedding_exact: bool | None = None
    embedding_output_text: str | None = None
    embedding_solved_at_step: int | None = None
    embeddings: torch.Tensor | None = field(default=None, repr=False)  # (N, d), not in JSON

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "embeddings"}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def __str__(self) -> str:
        status = "exact match" if self.exact_match else "no exact match"
        if self.interrupted:
            status += ", interrupted"
        return "\n".join([
            f"method   {self.method} on {self.model}, seed {self.seed}",
            f"target   {visible(self.target_text)}",
            f"prompt   {visible(self.prompt_text)}"
            + ("" if self.roundtrip_ok else "   (text does not re-tokenise to the same ids)")
            + ("   (re-tokenised from the method's ids)" if self.prompt_repaired else "")
            + ("" if self.prompt_perplexity is None
               else f"   (perplexity {self.prompt_perplexity:.0f})"),
            f"output   {visible(self.output_text)}",
            f"LCS      {self.lcs_ratio:.3f} ({status}) after {self.steps} steps, "
            f"{self.seconds:.1f} s",
        ] + ([] if self.embedding_lcs is None else [
            f"soft     output {visible(self.embedding_output_text)}, LCS "
            f"{self.embedding_lcs:.3f} ("
            f"{'exact match' if self.embedding_exact else 'no exact match'}) of the "
            "embeddings themselves; the lines above judge their nearest tokens",
        ]))
