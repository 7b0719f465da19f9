"""The contract every inverter fulfils, and the options all of them share.

A method owns a batched optimisation state for B targets and knows three things: how to start
(`init_state`), how to take one step (`step`), and which hard prompt it currently believes in
(`current_prompts`). Evaluation, best-so-far bookkeeping, early stop, budgets, interrupts and
results are the runner's job (`dlmi.inversion.runner`), identical for every method, so
comparisons are fair.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from typing import ClassVar, Generic, TypeVar

import torch

from dlmi.errors import UsageError
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.screening import check_screen
from dlmi.options import opt, option_hint


@dataclass
class MethodConfig:
    prompt_length: int = opt(
        20, 'N; the paper evaluates N in {10, 80} (Section 4, Table 5)', 'Table 5')
    steps: int = opt(256, 'optimisation steps; Table 5 "epochs" in {256, 2048}', 'Table 5')
    eval_every: int = opt(8, 'discretise + greedy-decode every K steps (anytime evaluation)')
    early_stop: bool = opt(
        True, 'a target leaves the batch once greedy decoding matches it exactly')
    budgets: tuple[int, ...] = opt((), 'steps at which the best LCS so far is recorded')
    seed: int = opt(0, 'random seed of the run (a batch gives each target its own generator)')
    time_limit: float | None = opt(
        None, 'wall seconds for the whole run; stops with the best so far')
    # Prompts that work as text (dlmi.model.vocab): methods optimise over allowed tokens only.
    vocab: str = opt(
        "no-special", "tokens a prompt may use: all, no-special (no control tokens), ascii, "
        "printable (ASCII, no control characters)")
    vocab_allow: str | None = opt(
        None, "only these tokens: comma-separated ids, or @FILE of texts whose tokens count")
    vocab_deny: str | None = opt(None, "never these tokens: ids or @FILE, as vocab_allow")
    no_target_tokens: bool = opt(
        False, "the prompt may not use any token of the target (no copying it)")
    # Readability against success: the loss gains fluency x the prompt's mean NLL under the
    # subject model (its log-perplexity), for every method with token prompts.
    fluency: float = opt(
        0.0, "weight of the prompt's mean negative log-likelihood under the model added to "
        "the loss (0: off); results report the prompt's perplexity either way")
    # A start other than random: a warm start (`dlmi invert --init-from CKPT`, a trained
    # logit2prompt inverter) or a user's own prompt (`--init-prompt TEXT`).
    init_prompt: tuple[int, ...] | None = opt(
        None, "start from these token ids (model ids; the first N are used, the rest of the "
        "prompt starts as usual)")
    init_bias: float = opt(
        5.0, "init_prompt in logit-based methods: added to its tokens' logits, so the start's "
        "argmax is that prompt")
    # A prompt is judged as the text it decodes to: candidates whose text re-tokenises to
    # the same ids are preferred, others are judged (and returned) as their re-tokenised ids.
    roundtrip: bool = opt(
        True, "judge prompts as pasted text (re-tokenised in their context); bench's paper "
        "protocol turns it off")
    # On a target out of reach the prompt with the most teacher-forced hits need not give
    # the best greedy output (LCS counts matches after the first miss, and a shifted output).
    judge_all: bool = opt(
        True, "at each evaluation point greedy-decode every candidate prompt the method offers "
        "and keep the best output (false: only the one with the most teacher-forced hits)")

    def __post_init__(self):
        self.budgets = tuple(int(b) for b in self.budgets)
        if self.time_limit is not None:
            _positive(self, "time_limit")
        _at_least(self, "fluency", 0.0)
        _at_least(self, "prompt_length", 1)
        _at_least(self, "steps", 1)
        _at_least(self, "eval_every", 1)
        for b in self.budgets:
            if not 1 <= b <= self.steps:
                raise UsageError(f"budget {b} is outside 1..steps ({self.steps}): "
                                 "raise --steps or drop that budget")

    def resolved(self) -> dict:
        """Options set to choose themselves (None: automatic), with the value in force; a
        row records them so that `merge: null` does not hide what ran."""
        return {}

    def to_dict(self) -> dict:
        return {**asdict(self), "resolved": self.resolved()}


@dataclass
class ScreenOptions:
    """The options of searches that score their swaps through a lower-precision screen
    (dlmi.model.screening): mixed into their config before MethodConfig or its subclass."""
    # A bfloat16 copy of the model scores every swap about twice as fast where bfloat16 is
    # native (AMX or AVX512-BF16 CPUs, GPUs); the screen_keep best per row (and any the copy
    # finds exact) are scored again in the model's own precision, which alone decides and
    # proves.
    screen: str = opt("auto", "score the swaps first in a lower precision: off, auto "
                      "(bfloat16 where native and the model is float32), bfloat16, float16",
                      "measured")
    screen_keep: int = opt(4, "swaps per row scored again in the model's precision after the "
                           "screen")

    def __post_init__(self):
        super().__post_init__()
        check_screen(self.screen)
        _at_least(self, "screen_keep", 1)


def _positive(cfg, *names: str) -> None:
    """Each named option must be > 0; the error names the flag (or --set key) to change."""
    for name in names:
        value = getattr(cfg, name)
        if not 0 < value < float("inf"):
            raise UsageError(f"{name} must be finite and > 0, got {value}: "
                             f"change {option_hint(name)}")


def _at_least(cfg, name: str, low: float) -> None:
    value = getattr(cfg, name)
    if not low <= value < float("inf"):
        raise UsageError(f"{name} must be finite and >= {low}, got {value}: "
                         f"change {option_hint(name)}")


@dataclass
class Batch:
    """B targets optimised together. Targets are right-padded to the longest; `mask` marks the
    positions that count (inside the row's length, up to its first EoS)."""

    target_ids: torch.Tensor  # (B, M) long
    mask: torch.Tensor  # (B, M) bool
    generators: list[torch.Generator]  # one per row, so row b's randomness is its own

    @property
    def size(self) -> int:
        return self.target_ids.shape[0]

    def select(self, index: torch.Tensor) -> Batch:
        idx = index.tolist()
        return Batch(self.target_ids[index], self.mask[index], [self.generators[i] for i in idx])


@dataclass
class StepOutput:
    loss: torch.Tensor  # (B,) the method's objective this step (lower is better)
    temperature: torch.Tensor | None = None  # (B,) mean effective temperature, if any
    candidates: torch.Tensor | None = None  # (B, K, N) extra hard prompts worth checking
    # (B, M) argmax of the teacher-forced logits of this step's training forward (first sample):
    # what the paper's figures score as LCS (soft_lcs), under the relaxed prompt. Not success.
    train_argmax: torch.Tensor | None = None
    # (B,) the method proved (teacher-forced hits at every position) that its current prompt
    # reproduces the target: the runner judges it now instead of at the next evaluation point.
    solved: torch.Tensor | None = None


StateT = TypeVar("StateT")  # a method's own batched optimisation state (a dataclass)


class Method(abc.ABC, Generic[StateT]):
    """Subclass as Method[ItsState], set `name`, `description` and `config_class`, and
    register with @register."""

    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, dlm: DifferentiableLM):
        self.config = config
        self.dlm = dlm

    @abc.abstractmethod
    def init_state(self, batch: Batch) -> StateT:
        """Fresh optimisation state for the batch (initialise from each row's generator)."""

    @abc.abstractmethod
    def step(self, state: StateT, batch: Batch, step: int) -> StepOutput:
        """One optimisation step (1-based `step`); updates `state` in place."""

    @abc.abstractmethod
    def current_prompts(self, state: StateT) -> torch.Tensor:
        """The hard prompt each row currently proposes: (B, N) long."""

    def initial_ids(self) -> torch.Tensor | None:
        """config.init_prompt in the prompt vocabulary, at most N of them: (L,), or None."""
        ids = self.config.init_prompt
        if not ids:
            return None
        ids = torch.tensor(list(ids)[: self.config.prompt_length], device=self.dlm.device)
        return self.dlm.local_ids(ids)

    def seed_ids(self, prompts: torch.Tensor) -> torch.Tensor:
        """(B, N) starting ids with the first L replaced by init_prompt (when set)."""
        ids = self.initial_ids()
        if ids is not None:
            prompts = prompts.clone()
            prompts[:, : len(ids)] = ids
        return prompts

    def seed_logits(self, Z: torch.Tensor) -> torch.Tensor:
        """(B, N, V) starting logits with init_bias added at init_prompt's tokens."""
        ids = self.initial_ids()
        if ids is not None:
            Z = Z.clone()
            Z[:, torch.arange(len(ids), device=Z.device), ids] += self.config.init_bias
        return Z

    def current_embeddings(self, state: StateT) -> torch.Tensor | None:
        """Continuous prompt embeddings (B, N, d) judged beside the hard prompt, for methods
        whose product is a soft prompt; None for the others."""
        return None

    @abc.abstractmethod
    def keep(self, state: StateT, index: torch.Tensor) -> StateT:
        """State restricted to the rows in `index` (1-D long), moments and all."""


def row_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def per_row(generators: list[torch.Generator], fn) -> torch.Tensor:
    """Stack fn(generator) over rows: row b's random numbers come from row b's generator only,
    so a target's run is the same alone or in a batch."""
    return torch.stack([fn(g) for g in generators])


def set_rows(state, name: str, where: torch.Tensor, prompts, loss, exact) -> None:
    """Overwrite state.<name>, <name>_loss and <name>_exact in the rows `where` (B,) with
    prompts (B, N), loss (B,) and exact (B,): a search's best-so-far bookkeeping."""
    setattr(state, name, torch.where(where[:, None], prompts, getattr(state, name)))
    setattr(state, name + "_loss", torch.where(where, loss, getattr(state, name + "_loss")))
    setattr(state, name + "_exact", torch.where(where, exact, getattr(state, name + "_exact")))


def distinct_per_row(prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct prompts of each row of prompts (B, K, N), so each is scored once:
    rows (D,) the row each came from, distinct (D, N), and back (B, K), the index into
    distinct of every prompt (scores[back] puts per-prompt scores back in place)."""
    B, K, N = prompts.shape
    keyed = torch.cat([torch.arange(B, device=prompts.device).repeat_interleave(K)[:, None],
                       prompts.reshape(B * K, N)], 1)  # (B * K, 1 + N): row, prompt
    distinct, back = torch.unique(keyed, dim=0, return_inverse=True)
    return distinct[:, 0], distinct[:, 1:], back.view(B, K)


def random_prompt_ids(generators: list[torch.Generator], length: int, vocab: int,
                      device) -> torch.Tensor:
    """(B, length) uniformly random token ids, row b drawn from generator b."""
    return per_row(generators,
                   lambda g: torch.randint(vocab, (length,), generator=g, device=device))


def walk_on(walk: torch.Tensor | None, current: torch.Tensor, length: int) -> torch.Tensor:
    """The last `length` prompts a search stood on, newest first: current (B, N) in front of
    walk (B, H, N), or alone when walk is None -> (B, min(H + 1, length), N). A search that
    moves every step offers these to the greedy check (`judge_walk`), so each prompt it stood
    on between two evaluation points is judged once."""
    front = current[:, None]
    return front if walk is None else torch.cat([front, walk], 1)[:, :length]


@dataclass
class IncumbentState:
    prompts: torch.Tensor  # (B, N) the best prompt so far, per row
    loss: torch.Tensor  # (B,) its loss
    walk: torch.Tensor | None = None  # (B, H, N) the last H prompts, newest first (judge_walk)


class IncumbentSearch(Method[IncumbentState]):
    """Discrete searches that hold one hard prompt per row (random search, GCG): they start
    from random tokens and report the incumbent as their current prompt."""

    def init_state(self, batch: Batch) -> IncumbentState:
        dev = self.dlm.device
        prompts = self.seed_ids(random_prompt_ids(batch.generators, self.config.prompt_length,
                                                  self.dlm.vocab_size, dev))
        return IncumbentState(prompts, torch.full((batch.size,), float("inf"), device=dev))

    def current_prompts(self, state: IncumbentState) -> torch.Tensor:
        return state.prompts

    def keep(self, state: IncumbentState, index: torch.Tensor) -> IncumbentState:
        return IncumbentState(state.prompts[index], state.loss[index],
                              None if state.walk is None else state.walk[index])
