"""DLMI with hard-prompt search: the paper's Gumbel-Softmax gradient on the prompt logits Z,
plus, every step, a search over hard prompts that the learned distribution proposes.

Why: the relaxed prompt of Algorithm 1 can have a low loss that no single token sequence
realises (the relaxation gap), and one backward pass costs about three no-grad forwards. So
each step here
  1. takes the DLMI gradient step on Z and the decoupled temperatures Phi with a straight-
     through forward: forward values are one-hot (the incumbent, the "anchor", and S - 1
     Gumbel samples of Z), so their losses are real hard losses, scored for free, while the
     gradient flows through softmax((Z + g) / tau) as in DLMI. Z's Adam keeps one second
     moment per position, so Z accumulates the ranking of tokens by their gradient;
  2. scores `swaps` single-token changes of the incumbent in one no-grad teacher-forced
     batch, each new token drawn uniformly from the top_k tokens of Z at a uniform position
     (or of the anchor's own gradient, as GCG does): the learned distribution proposes, the
     real loss decides, and a swap that does no better leaves Z's top tokens (with `pairs`,
     a share of the proposals changes two positions at once; with `from_target` and
     `from_lm`, a share takes the target's tokens or the model's own next-token predictions);
  3. moves to the best prompt of the step when it improves, or, after `patience` steps
     without improvement, to the best proposal anyway (with `tabu`, not back to a recent
     incumbent); keeps the best prompt so far and reports it solved as soon as its argmax
     hits every target position, which proves that greedy decoding reproduces the target.
     With `beam` P > 1 it stands on the P best distinct prompts instead, sharing the swaps.
The runner still judges every prompt by greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dlmi.errors import UsageError
from dlmi.methods.base import (
    Batch,
    ScreenOptions,
    StepOutput,
    _at_least,
    distinct_per_row,
    per_row,
    set_rows,
    walk_on,
)
from dlmi.methods.dlmi_method import DLMI, DLMIState, GumbelPromptConfig
from dlmi.methods.registry import register
from dlmi.metrics import lcs_length
from dlmi.model.objective import (
    MARGIN_OBJECTIVES,
    OBJECTIVES,
    Objective,
    check_objective_name,
    won_positions,
)
from dlmi.model.optim import BatchedAdam
from dlmi.model.screening import screen_model, screened_variant_losses
from dlmi.options import opt

PROPOSALS = ("z", "gradient", "both")
POSITIONS = ("uniform", "late")
RANKINGS = ("loss", "lcs")
# merge=None: AUTO_MERGE swaps merged from prompts of AUTO_MERGE_FROM positions up (measured
# at N = 80: a large gain; at N = 20: none; the threshold between is not measured).
AUTO_MERGE, AUTO_MERGE_FROM = 8, 64


@dataclass
class DLMISearchConfig(ScreenOptions, GumbelPromptConfig):
    # Defaults measured on our own Algorithm 2 targets (seed 7, benchmarks/tuning/), never on
    # the presets' targets; README "Defaults of dlmi-search" states the same values.
    samples: int = opt(
        1, 'straight-through rows per gradient step; 1 = the anchor alone (sweep 1)', 'measured')
    lr: float = opt(0.1, 'Adam on Z and Phi (Table 5)', 'Table 5')
    tau0: float = opt(100.0, "initial temperature of the Gumbel-Softmax", "Table 5")
    init_std: float = opt(
        0.01, 'Z ~ N(0, 0.01^2): accumulated gradients, not the draw, rank tokens')
    swaps: int = opt(
        32, "proposals scored per step: with the anchor, GCG's cost per step at width 32")
    anchor: bool = opt(True, 'sample 0 of the gradient forward is the incumbent itself')
    proposal: str = opt("z", "swap tokens drawn from the top_k of: z, gradient (anchor's), both")
    top_k: int = opt(
        64, "tokens per position that swaps draw from, uniformly", "measured")
    # "late": position p (0-based) drawn with weight p + 1. The last prompt tokens sit next to
    # the target, and a swap there is also the cheapest to score (from its position on).
    positions: str = opt("uniform", "where swaps fall: uniform, or late (weight p + 1)")
    # Two-position moves reach prompts that no single improving swap leads to (a target token
    # that needs two prompt tokens changed together). The first round(pairs * swaps)
    # proposals change a second, different position too, also to one of Z's top_k.
    pairs: float = opt(0.0, "share of the swaps that change two positions at once")
    # Context primes the model: a target's own words in the prompt (not the target as a
    # whole) make it likelier to say them. The last round(from_target * swaps) proposals
    # draw their token from the row's target tokens that the prompt vocabulary allows
    # (none under no_target_tokens); results report the overlap as the paper's cheating check.
    from_target: float = opt(0.0, "share of the swaps whose new token is one of the target's")
    # Fluent proposals: the model's own top_k next tokens at a position, given the incumbent
    # before it (one no-grad forward of the incumbent per step). A natural-text target may
    # need a natural context, which Z's gradient ranking rarely spells out. The first prompt
    # token, which nothing before it predicts without fixed text, falls back to Z.
    from_lm: float = opt(0.0, "share of the swaps whose new token is one of the model's top_k "
                         "predictions there, given the prompt before it")
    # Induction: a model that has read "career and" in its context is likelier to say " and"
    # after "career" again. The round(copy_target * swaps) swaps after the paired ones write
    # the target's last `copy_length` tokens up to the incumbent's first missed position (the
    # miss included) at a random place in the prompt; the tokens the prompt vocabulary bans
    # are never written (none under no_target_tokens). Raises the cheating check's overlap.
    copy_target: float = opt(0.0, "share of the swaps that copy the target's tokens up to its "
                             "first missed position into the prompt (needs the anchor)")
    copy_length: int = opt(2, "copy_target: target tokens copied, ending at the first miss")
    # Insertion moves: a word added or dropped slides the text between by one position, which
    # changes many positions at once coherently; a prompt stuck in a local minimum of single
    # (and paired) swaps can still have a better shifted neighbour. The round(shifts * swaps)
    # proposals after the copies delete one token of the incumbent and insert one of Z's
    # top_k at another position.
    shifts: float = opt(0.0, "share of the swaps that delete a prompt token and insert a new "
                        "one elsewhere (the tokens between slide by one)")
    # The paper's cheating check reads the share of the target's tokens found in the prompt
    # (below 20% for every method it reports). A prompt above this share is never kept, so
    # copies and target swaps can help without the prompt spelling the target out.
    max_overlap: float = opt(1.0, "largest share of the target's tokens the kept prompts may "
                             "contain, as the cheating check counts them (1: no limit)")
    # Z is the sum of every step's (Adam-normalised) gradient, from incumbents the search has
    # long left; GCG reads the current gradient alone. A decay weighs the recent steps more:
    # after each Adam step Z shrinks by this share (0.05: about the last 20 steps count).
    # Measured no better at 0.05 on sweeps 4 and 5 (benchmarks/tuning/NOTES.md): every step counts.
    z_decay: float = opt(0.0, "share by which Z shrinks after each step, so its ranking "
                         "follows the recent gradients (0: every step counts alike)")
    row_adam: bool = opt(True, "Z's Adam keeps one second moment per position: Z ranks tokens")
    # Steps without a better prompt before the search moves to the step's best proposal
    # anyway, to leave a local minimum (1: as GCG, which moves every step); the best so far
    # is kept. 0: never move to a worse prompt.
    patience: int = opt(
        1, "steps without a better prompt before moving to the step's best proposal anyway "
        "(0: never)", "measured")
    # Tabu search: a stalled search that moves to its best proposal can step straight back
    # into the minimum it just left (that swap is the best move from the neighbour), or stay
    # put on a proposal equal to the incumbent. A move made without a gain may not land on
    # one of the last `tabu` incumbents; a move to a prompt better than the best is always
    # allowed.
    tabu: int = opt(0, "recent incumbents a move without gain may not return to (0: off)")
    # A proposal that scored no better than the incumbent leaves Z's top tokens, so a stalled
    # search explores instead of redrawing the same rejected swaps (z proposals only).
    forget_rejected: bool = opt(
        True, "a swap that scored no better leaves Z's top tokens", 'measured')
    # The loss of the gradient step and of the search: "ce" cross-entropy, or "cw" the margin
    # loss max(-cw_margin, best other logit - target logit) per position (as Faster-GCG),
    # which stops paying for positions already won and so targets greedy success; "cw-prefix"
    # (the default) credits a won position only before the first miss, as greedy decoding
    # never reaches the positions after it: the search fixes the first miss first; "cw-first"
    # leaves those positions out altogether until they are reached.
    objective: str = opt(
        "cw-prefix", "loss of the gradient and the search: cw (margin), cw-prefix (margin credited "
        "only up to the first missed position), cw-first (the positions up to the first miss "
        "alone) or ce", "measured")
    cw_margin: float = opt(
        1.0, "cw, cw-prefix, cw-first: a position won by this many logits earns nothing more")
    # Greedy decoding follows the target up to its first miss, so winning that one position
    # is what lengthens the output; under cw-prefix it weighs no more than each teacher-forced
    # position after it, which greedy decoding never reads (on the hard targets those carry
    # most of the loss). A weight w > 1 makes a swap's gain at the first miss count w times.
    # Measured worse at 0.5, 4 and 10 on sweep 5 (benchmarks/tuning/NOTES.md): the positions
    # after the miss guide the search although greedy decoding does not read them.
    miss_weight: float = opt(
        1.0, "cw-prefix, cw-first: weight of the first missed target position in the loss "
        "(1: as the others)")
    # Z only proposes; the search's loss decides. The margin losses give no gradient at a
    # position won by cw_margin, so Z learns nothing there about keeping it won, nor, under
    # cw-prefix, much beyond the first miss; cross-entropy's gradient covers every position.
    z_objective: str = opt(
        "same", "loss whose gradient trains Z: same (the objective) or one of the objectives")
    # Iterated local search: after this many steps in which the best prompt did not improve,
    # the search restarts from the best prompt with `restart_swaps` random changes drawn from
    # Z's top tokens, to leave a basin single swaps cannot (0: never).
    restart_after: int = opt(
        0, "steps without a better best prompt before restarting from a perturbed best (0: off)")
    restart_swaps: int = opt(3, "positions changed at a restart, each to one of Z's top_k")
    # Multi-coordinate move: the best improving swaps of a step at distinct positions,
    # applied together to the incumbent and scored as one more candidate (1 + merge
    # positions change at once), so gains that add up are taken in one step. With many
    # positions a step's improving swaps are many and mostly independent: measured on the
    # sweep-4 k = 1 tuning targets, merge=8 solved 6/8 within 64 steps at N = 80 against 1/8
    # off, but no more at N = 20 and none at N = 10 with merge=4 (benchmarks/tuning/NOTES.md).
    merge: int | None = opt(
        None, f"best improving swaps at distinct positions combined into one more candidate "
        f"per step (0: off; null, the default: {AUTO_MERGE} from N = {AUTO_MERGE_FROM} up, where "
        "measured to help, with one incumbent only; else off)", "measured")
    # With the screen on, the model itself scores only the screen_keep best swaps of a step,
    # so the merge had at most that many to combine (4, under its cap of 8); the screen's own
    # estimate of the others' gains lets it take every swap the screen finds improving. The
    # merged candidate is then scored by the model itself, so a wrong estimate costs nothing
    # but a worse candidate.
    merge_screened: bool = opt(
        False, "with a screen, the merge also takes swaps the screen estimates improving but "
        "did not keep for the model's own scoring")
    # Beam search: the search stands on the `beam` best distinct prompts instead of one, and
    # their single swaps share the step's `swaps` (in turn; copies are the incumbent's). A lone
    # incumbent stuck in a local minimum of single swaps (every proposal worse, as measured on
    # stalled tuning rows) can only walk on; a beam keeps the runners-up, whose neighbours
    # may lead elsewhere. The incumbent is the beam's best, the gradient's anchor. A stalled
    # step (patience) moves the whole beam to the best distinct proposals.
    beam: int = opt(1, "distinct prompts the search stands on, sharing the swaps "
                    "(1: one incumbent)")
    # First improvement within a step: the swaps are scored in `rounds` rounds, and each round
    # but the last moves the incumbent to its best swap when that improves it, so the next
    # round's swaps change the winner. One hit is about all 32 swaps find (one in 25-30 swaps
    # lowers the loss), so two rounds of 16 can take two improvements for the cost of one
    # round of 32.
    rounds: int = opt(1, "rounds the swaps of a step are split into, each but the last moving "
                      "the incumbent to its best improving swap (1: one round, as GCG)")
    # Where a step's swaps fall: the best position of a step holds about 3.5 times as many
    # improving swaps as a uniform one (position_hits.py), but neither the gradient nor the
    # previous steps tell which it is. The swaps' own losses do: with `scout` S > 0 the step
    # first scores S swaps at every position, then spends the rest at the `focus` positions
    # whose best scout came closest to improving. Same swaps, same FLOPs; two forwards.
    # Offline (scout_policy.py) scout 1 / focus 2 raised a step's chance of improving its
    # incumbent from 0.62 to 0.77; online it found fewer exact prompts (tuning NOTES.md): off.
    scout: int = opt(0, "swaps per position scored first, the rest going to the `focus` "
                     "positions where the scouts did best (0: positions uniform)")
    focus: int = opt(2, "scout: positions that the swaps after the scouts go to")
    # The judge is greedy decoding, and on a target out of reach its LCS is not the loss: a
    # prompt one swap worse may decode to more of the target. Each evaluation point decodes
    # the best and these candidates (all of them under judge_all, else the one with the most
    # teacher-forced hits); GCG offers its current prompt and its step's 4 best swaps alike.
    checked: int = opt(4, "the step's best scored prompts offered to the evaluation's greedy "
                       "check beside the best and the incumbent (0: the best alone)", "measured")
    # With patience 1 the search walks: a stalled step still moves to its best proposal, so
    # between two evaluation points it stands on up to eval_every near-best prompts, of which
    # only the last is offered. On a target out of reach their greedy outputs differ (a miss
    # elsewhere, a resync after it), and the judge keeps the best; each decode is charged.
    judge_walk: bool = opt(True, "offer every incumbent of the walk since the last evaluation "
                           "point (up to eval_every prompts) to its greedy check too",
                           "measured")
    # The judge is greedy decoding, the search's loss a teacher-forced stand-in for it: past
    # the first missed position the greedy output no longer follows the target, so on a
    # target out of reach two prompts of equal loss can decode to very different outputs.
    # "lcs" decodes every prompt of the step's pool instead of scoring it under teacher
    # forcing (the same tokens, so the same FLOPs) and ranks by the judge's own measure
    # first: the longest common subsequence of the greedy output with the target, then the
    # objective read off the logits the decode ran on (teacher-forced up to the first miss).
    rank_by: str = opt("loss", "how the search ranks prompts: loss, or lcs (each step's "
                       "prompts greedily decoded: the judge's LCS first, then the loss)")
    chunk_size: int = opt(64, 'prompts per no-grad forward: bounds memory')

    @property
    def merged(self) -> int:
        """The merge in force: `merge`, or where it is None, AUTO_MERGE for prompts of
        AUTO_MERGE_FROM positions or more when nothing it does not combine with is set."""
        if self.merge is not None:
            return self.merge
        alone = self.rounds == 1 and self.beam == 1 and self.rank_by == "loss"
        return AUTO_MERGE if alone and self.prompt_length >= AUTO_MERGE_FROM else 0

    def resolved(self) -> dict:
        return {"merge": self.merged}

    @property
    def search_loss(self) -> Objective:
        """The loss the search ranks prompts by (and Z's, with z_objective same)."""
        return Objective(self.objective, self.cw_margin, self.miss_weight)

    @property
    def z_loss(self) -> Objective:
        """The loss whose gradient trains Z."""
        if self.z_objective == "same":
            return self.search_loss
        return Objective(self.z_objective, self.cw_margin, self.miss_weight)

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "swaps", 0)
        _at_least(self, "checked", 0)
        _at_least(self, "chunk_size", 1)
        _at_least(self, "top_k", 1)
        _at_least(self, "patience", 0)
        _at_least(self, "tabu", 0)
        _at_least(self, "cw_margin", 0.0)
        _at_least(self, "miss_weight", 0.0)
        _at_least(self, "restart_after", 0)
        _at_least(self, "restart_swaps", 1)
        if self.merge is not None:
            _at_least(self, "merge", 0)
        _at_least(self, "copy_length", 1)
        _at_least(self, "beam", 1)
        _at_least(self, "rounds", 1)
        _at_least(self, "scout", 0)
        _at_least(self, "focus", 1)
        if self.scout:
            if self.swaps <= self.scout * self.prompt_length:
                raise UsageError(
                    f"scout ({self.scout}) needs more swaps than scout x prompt length "
                    f"({self.scout * self.prompt_length}): set --set swaps="
                    f"{self.scout * self.prompt_length + 1} or more, or --set scout=0")
            for name in ("pairs", "from_target", "from_lm", "copy_target", "shifts"):
                if getattr(self, name):
                    raise UsageError(f"scout does not combine with {name}: "
                                     f"set --set {name}=0 or --set scout=0")
            if self.positions != "uniform":
                raise UsageError("scout chooses the positions itself: "
                                 "set --set positions=uniform or --set scout=0")
            for name, plain in (("rounds", 1), ("beam", 1)):
                if getattr(self, name) != plain:
                    raise UsageError(f"scout does not combine with {name} > 1: "
                                     f"set --set {name}=1 or --set scout=0")
        if self.rounds > 1:
            if self.rounds > max(self.swaps, 1):
                raise UsageError(f"rounds ({self.rounds}) needs at least as many swaps: "
                                 f"set --set swaps={self.rounds} or more, or fewer rounds")
            for name in ("merge", "copy_target"):
                if getattr(self, name):
                    raise UsageError(f"rounds > 1 does not combine with {name}: "
                                     f"set --set {name}=0 or --set rounds=1")
            if self.beam > 1:
                raise UsageError("rounds > 1 does not combine with beam: "
                                 "set --set beam=1 or --set rounds=1")
        if self.beam > 1:
            if self.beam > self.swaps:
                raise UsageError(f"beam ({self.beam}) needs at least as many swaps: "
                                 f"set --set swaps={self.beam} or more, or a smaller beam")
            for name in ("tabu", "merge", "restart_after"):
                if getattr(self, name):
                    raise UsageError(f"beam > 1 does not combine with {name}: "
                                     f"set --set {name}=0 or --set beam=1")
        for name in ("pairs", "from_target", "from_lm", "copy_target", "shifts", "max_overlap",
                     "z_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1, got {getattr(self, name)}: "
                                 f"change --set {name}=VALUE")
        check_objective_name(self.objective)
        if self.miss_weight != 1.0 and MARGIN_OBJECTIVES.get(self.objective) is None:
            raise UsageError(f"miss_weight weighs the first missed position of cw-prefix or "
                             f"cw-first, not of {self.objective}: set --set objective=cw-prefix "
                             "or --set miss_weight=1")
        check_objective_name(self.z_objective, "z_objective", ("same", *OBJECTIVES))
        if self.positions not in POSITIONS:
            raise UsageError(f"positions must be one of {', '.join(POSITIONS)}, "
                             f"got {self.positions!r}: change --set positions=VALUE")
        if self.proposal not in PROPOSALS:
            raise UsageError(f"proposal must be one of {', '.join(PROPOSALS)}, "
                             f"got {self.proposal!r}: change --set proposal=VALUE")
        shares = self.pairs + self.from_target + self.from_lm + self.copy_target + self.shifts
        if shares > 1.0:
            raise UsageError("pairs + from_target + from_lm + copy_target + shifts must be at "
                             "most 1, "
                             f"got {shares:g}: lower one")
        if self.rank_by not in RANKINGS:
            raise UsageError(f"rank_by must be one of {', '.join(RANKINGS)}, "
                             f"got {self.rank_by!r}: change --set rank_by=VALUE")
        if self.rank_by == "lcs":
            for name in ("rounds", "beam", "merge"):
                if (getattr(self, name) or 0) > 1:
                    raise UsageError(f"rank_by=lcs does not combine with {name} > 1: "
                                     f"set --set {name}=1 or --set rank_by=loss")
            if self.scout:
                raise UsageError("rank_by=lcs does not combine with scout: "
                                 "set --set scout=0 or --set rank_by=loss")
        if self.proposal != "z" and not self.anchor:
            raise UsageError("gradient proposals need the anchor: set --set anchor=true "
                             "or --set proposal=z")
        if self.copy_target and not self.anchor:
            raise UsageError("copy_target needs the anchor (it reads the incumbent's first "
                             "miss): set --set anchor=true or --set copy_target=0")


def top_k_pick(scores: torch.Tensor, pos: torch.Tensor, pick: torch.Tensor,
               k: int) -> torch.Tensor:
    """The pick-th of the top k tokens of `scores` at position pos, per row and draw.
    scores (B, N, V); pos, pick (B, W) -> tokens (B, W)."""
    B, W = pos.shape
    top = scores.topk(k, dim=-1).indices  # (B, N, k)
    return top.gather(1, pos[..., None].expand(B, W, k)).gather(2, pick[..., None]).squeeze(-1)


@dataclass
class DLMISearchState(DLMIState):
    incumbent: torch.Tensor | None = None  # (B, N) the hard prompt the search stands on
    incumbent_loss: torch.Tensor | None = None  # (B,) its teacher-forced loss
    incumbent_exact: torch.Tensor | None = None  # (B,) bool: proven to decode to the target
    best: torch.Tensor | None = None  # (B, N) lowest-loss (exact first) hard prompt so far
    best_loss: torch.Tensor | None = None  # (B,)
    best_exact: torch.Tensor | None = None  # (B,)
    best_hits: torch.Tensor | None = None  # (B,) rank_by=lcs: LCS length of its greedy output
    stall: torch.Tensor | None = None  # (B,) steps since the best last improved or a kick
    since_best: torch.Tensor | None = None  # (B,) steps since the best last improved
    recent: torch.Tensor | None = None  # (B, T, N) the last T incumbents, newest first (tabu)
    walk: torch.Tensor | None = None  # (B, H, N) the last H incumbents, newest first
    beam: torch.Tensor | None = None  # (B, P, N) the prompts the search stands on, best first
    beam_loss: torch.Tensor | None = None  # (B, P)
    beam_exact: torch.Tensor | None = None  # (B, P)


@register
class DLMISearch(DLMI):
    name = "dlmi-search"
    description = ("DLMI's straight-through gradient on Z + a search over hard prompts "
                   "proposed by Z's top tokens")
    config_class = DLMISearchConfig

    def init_state(self, batch: Batch) -> DLMISearchState:
        base = super().init_state(batch)
        return DLMISearchState(base.Z, base.phi, base.optimizer)

    def make_optimizer(self, params: list[torch.Tensor]) -> BatchedAdam:
        # Z (first) with one second moment per position, so top-k of Z ranks tokens by their
        # accumulated gradient; Phi per element as in DLMI.
        rows = [self.config.row_adam] + [False] * (len(params) - 1)
        return BatchedAdam(params, lr=self.config.lr, row_second_moment=rows)

    def step(self, state: DLMISearchState, batch: Batch, step: int) -> StepOutput:
        cfg = self.config
        B = batch.size
        rows = torch.arange(B, device=self.dlm.device)
        dev = self.dlm.device
        if state.incumbent is None:  # the first incumbent is Z's argmax, not yet scored
            state.incumbent = state.best = self._start(state.Z.detach())
            state.incumbent_loss = state.best_loss = torch.full((B,), float("inf"), device=dev)
            state.incumbent_exact = state.best_exact = torch.zeros(B, dtype=torch.bool,
                                                                   device=dev)
            state.best_hits = torch.zeros(B, device=dev)
            state.stall = torch.zeros(B, dtype=torch.long, device=dev)
            state.since_best = torch.zeros(B, dtype=torch.long, device=dev)
            state.beam = state.incumbent[:, None].repeat(1, cfg.beam, 1)
            state.beam_loss = state.incumbent_loss[:, None].repeat(1, cfg.beam)
            state.beam_exact = state.incumbent_exact[:, None].repeat(1, cfg.beam)
        samples, sample_loss, sample_exact, tau, train_argmax, grad = self._gradient_step(
            state, batch)
        with torch.no_grad():
            widths = self._round_widths() if cfg.swaps else [0]
            early = torch.zeros(B, dtype=torch.bool, device=dev)  # best improved before the last
            if len(widths) > 1:
                if cfg.anchor:  # its loss, fresh from the training forward, is the bar
                    state.incumbent_loss = sample_loss[:, 0]
                    state.incumbent_exact = sample_exact[:, 0]
                for W in widths[:-1]:
                    early |= self._early_round(state, batch, grad, W)
                if cfg.anchor:  # the pool's first prompt is the incumbent as it now stands
                    samples, sample_loss, sample_exact = (samples.clone(), sample_loss.clone(),
                                                          sample_exact.clone())
                    samples[:, 0] = state.incumbent
                    sample_loss[:, 0] = state.incumbent_loss
                    sample_exact[:, 0] = state.incumbent_exact
            W = widths[-1]  # the last round's swaps
            if cfg.anchor:  # sample 0 is the incumbent, just scored by the training forward
                pools, losses, exacts = [samples], [sample_loss], [sample_exact]
            else:
                pools = [state.incumbent[:, None], samples]
                losses = [state.incumbent_loss[:, None], sample_loss]
                exacts = [state.incumbent_exact[:, None], sample_exact]
            # The beam's runners-up (the incumbent, its best, is already in the pool).
            runners_at = sum(x.shape[1] for x in pools)  # their first pool index
            if cfg.beam > 1:
                pools.append(state.beam[:, 1:])
                losses.append(state.beam_loss[:, 1:])
                exacts.append(state.beam_exact[:, 1:])
            if W:
                parents = self._parents(dev, W)  # (W,) the beam member each swap changes
                if cfg.scout:
                    cand, pos, tokens, cand_loss, cand_exact, screen_gain = self._scouted(
                        state, batch, grad, W)
                else:
                    cand, pos, tokens = self._propose(state, batch, grad, W)  # (B, W, N), (B, W)
                    if self._copies(W):
                        self._copy_target(cand, state.incumbent, batch, train_argmax)
                    if cfg.rank_by == "lcs":  # decoded with the whole pool below
                        cand_loss = cand_exact = None
                    else:
                        cand_loss, cand_exact, screen_gain = self._score(
                            self._bases(state), cand, batch, parents)
                if cand_loss is not None:
                    base_loss = torch.cat([losses[0][:, :1], state.beam_loss[:, 1:]],
                                          1)[:, parents]
                    rejected = self._rejected(cand_loss, base_loss, screen_gain)
                    single = self._single(W, dev)
                    self._forget_rejected(state, pos, tokens, rejected, W)
                pools.append(cand)
                losses.append(cand_loss)
                exacts.append(cand_exact)
                if cfg.merged > 1:
                    gain = self._merge_gain(cand_loss, losses[0][:, :1], screen_gain, single)
                    merged = self._merge(state.incumbent, pos, tokens, gain)  # (B, 1, N)
                    merged_loss, merged_exact, _ = self._score(state.incumbent[:, None],
                                                               merged, batch)
                    pools.append(merged)
                    losses.append(merged_loss)
                    exacts.append(merged_exact)
            pool = torch.cat(pools, 1)  # (B, K, N); the incumbent first, so ties keep it
            if cfg.rank_by == "lcs":  # every prompt decoded: the judge's measure and the loss
                raw_loss, raw_exact, pool_hits = self._decoded(pool, batch)  # (B, K) x3
                if W:  # a swap that ranks no better than the incumbent (index 0) is rejected
                    key = self._key(raw_loss, raw_exact, pool_hits)
                    self._forget_rejected(state, pos, tokens, key[:, -W:] >= key[:, :1], W)
            else:
                raw_loss, raw_exact, pool_hits = torch.cat(losses, 1), torch.cat(exacts, 1), None
            pool_loss, pool_exact = self._admissible(pool, raw_loss, raw_exact, batch)
            # An exact prompt beats any inexact one, then (rank_by=lcs) the longer common
            # subsequence of its greedy output with the target, then the lower loss.
            key = self._key(pool_loss, pool_exact, pool_hits)  # (B, K): what best may become
            # The walk may pass through prompts best may not become, ranked after all others.
            walk = self._walk_key(key, self._key(raw_loss, raw_exact, pool_hits))  # (B, K)
            top = key.argmin(1)
            improved = key[rows, top] < self._key(state.best_loss, state.best_exact,
                                                  state.best_hits)
            set_rows(state, "best", improved, pool[rows, top], pool_loss[rows, top],
                      pool_exact[rows, top])
            if pool_hits is not None:
                state.best_hits = torch.where(improved, pool_hits[rows, top], state.best_hits)
            improved |= early
            state.stall = torch.where(improved, 0, state.stall + 1)
            # Move to the step's best proposal when it improves, or when stalled too long.
            kick = (state.stall >= cfg.patience) if cfg.patience else torch.zeros_like(improved)
            kick &= pool.shape[1] > 1
            move = self._move(state, pool, walk) if pool.shape[1] > 1 else top
            choice = torch.where(kick, move, walk.argmin(1))
            if cfg.beam > 1:  # the best distinct prompts; a kick leaves the old beam
                old = torch.zeros(pool.shape[1], dtype=torch.bool, device=dev)  # (K,)
                old[0] = True
                old[runners_at:runners_at + cfg.beam - 1] = True
                walk = walk.masked_fill(kick[:, None] & old, float("inf"))
                pick = self._top_distinct(pool, walk, cfg.beam)  # (B, P)
                choice = pick[:, 0]
                state.beam = pool.gather(1, pick[..., None].expand(-1, -1, pool.shape[2]))
                state.beam_loss = raw_loss.gather(1, pick)
                state.beam_exact = raw_exact.gather(1, pick)
            # The walk's own losses: each step passes the pool through _admissible again.
            set_rows(state, "incumbent", torch.ones_like(improved), pool[rows, choice],
                      raw_loss[rows, choice], raw_exact[rows, choice])
            if cfg.tabu:
                recent = state.recent if state.recent is not None else pool[:, :0]
                state.recent = torch.cat([state.incumbent[:, None], recent], 1)[:, :cfg.tabu]
            state.stall = torch.where(kick, 0, state.stall)
            state.since_best = torch.where(improved, 0, state.since_best + 1)
            if cfg.restart_after:
                self._restart(state, batch, state.since_best >= cfg.restart_after)
            checked = None  # under rank_by=lcs every prompt of the pool was decoded already
            if cfg.checked and cfg.rank_by != "lcs":  # the incumbent, then the best by key
                order = key.argsort(1)[:, :cfg.checked]
                checked = torch.cat([state.incumbent[:, None], pool.gather(
                    1, order[..., None].expand(-1, -1, pool.shape[2]))], 1)
            if cfg.judge_walk and cfg.rank_by != "lcs":  # the walk since the last evaluation
                state.walk = walk_on(state.walk, state.incumbent, cfg.eval_every)
                if checked is None:
                    checked = state.walk
                else:  # the newest is the incumbent, offered already
                    checked = torch.cat([checked, state.walk[:, 1:]], 1)
            if checked is not None and cfg.max_overlap < 1.0:
                # The walk may pass through prompts over the cap; the judge must not keep one
                # (it re-tokenises what does not round-trip itself, so only the cap is ours).
                over = self._over_cap(checked, batch)  # (B, C)
                checked = torch.where(over[..., None], self.current_prompts(state)[:, None],
                                      checked)
        return StepOutput(loss=state.best_loss.clone(), temperature=tau.detach().mean(1),
                          candidates=checked, train_argmax=train_argmax,
                          solved=state.best_exact.clone())

    @staticmethod
    def _top_distinct(pool: torch.Tensor, key: torch.Tensor, P: int) -> torch.Tensor:
        """Indices of the P lowest-key distinct prompts of pool (B, K, N), best first, by key
        (B, K) (ties: the lower index): (B, P); with fewer than P distinct, copies follow."""
        K = pool.shape[1]
        order = key.argsort(dim=1, stable=True)  # (B, K)
        ranked = pool.gather(1, order[..., None].expand_as(pool))
        same = (ranked[:, :, None] == ranked[:, None]).all(-1)  # (B, K, K)
        earlier = torch.ones(K, K, dtype=torch.bool, device=pool.device).tril(-1)
        seen = (same & earlier).any(-1)  # (B, K) a copy of a better-ranked prompt
        rank = seen.int().argsort(dim=1, stable=True)[:, :P]  # distinct first, by key
        return order.gather(1, rank)

    @staticmethod
    def _move(state: DLMISearchState, pool: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Where a move without gain goes: the pool's best prompt other than the incumbent
        (pool index 0) and, with tabu, other than the recent incumbents. pool (B, K, N),
        key (B, K) -> index (B,)."""
        key = key[:, 1:]
        if state.recent is not None:
            seen = (pool[:, 1:, None] == state.recent[:, None]).all(-1).any(-1)  # (B, K-1)
            key = key.masked_fill(seen, float("inf"))
        return key.argmin(1) + 1

    def _scouted(self, state: DLMISearchState, batch: Batch, grad: torch.Tensor | None,
                 W: int):
        """A step's W swaps of the incumbent in two forwards: `scout` at every position,
        then the rest spread over the `focus` positions whose best scout has the lowest loss.
        -> cand (B, W, N), pos, tokens, loss, exact (B, W), screen_gain (B, W) or None."""
        cfg = self.config
        B, N = state.incumbent.shape
        dev = state.incumbent.device
        S = cfg.scout * N
        everywhere = torch.arange(N, device=dev).repeat(cfg.scout).expand(B, S)  # (B, S)
        first = self._propose(state, batch, grad, S, at=everywhere)
        base = state.incumbent[:, None]
        loss, exact, gain = self._score(base, first[0], batch)  # (B, S)
        # Each position's best scout (exact first, as the search ranks prompts): (B, N).
        best = torch.full((B, N), float("inf"), device=dev).scatter_reduce(
            1, everywhere, self._key(loss, exact), "amin")
        focus = best.argsort(dim=1, stable=True)[:, :min(cfg.focus, N)]  # (B, F)
        slots = torch.arange(W - S, device=dev) % focus.shape[1]
        second = self._propose(state, batch, grad, W - S, at=focus[:, slots])
        loss2, exact2, gain2 = self._score(base, second[0], batch)  # (B, W - S)
        if gain is not None or gain2 is not None:  # a screen judged one of the two
            # Without a screen every loss is the model's own, so its gain is never read.
            gain = torch.cat([g if g is not None else torch.zeros_like(x)
                              for g, x in ((gain, loss), (gain2, loss2))], 1)
        return (*(torch.cat([a, b], 1) for a, b in zip(first, second, strict=True)),
                torch.cat([loss, loss2], 1), torch.cat([exact, exact2], 1), gain)

    def _early_round(self, state: DLMISearchState, batch: Batch, grad: torch.Tensor | None,
                     W: int) -> torch.Tensor:
        """A round before a step's last: W swaps of the incumbent scored, the incumbent moved
        to the best of them where it improves, and the best prompt with it where better
        still. -> (B,) bool: the rows whose best improved."""
        rows = torch.arange(batch.size, device=state.incumbent.device)
        cand, pos, tokens = self._propose(state, batch, grad, W)  # (B, W, N), (B, W) x2
        loss, exact, gain = self._score(state.incumbent[:, None], cand, batch)  # (B, W)
        rejected = self._rejected(loss, state.incumbent_loss[:, None], gain)
        self._forget_rejected(state, pos, tokens, rejected, W)
        loss, exact = self._admissible(cand, loss, exact, batch)
        key = self._key(loss, exact)  # (B, W)
        top = key.argmin(1)
        won = key[rows, top]
        better = won < self._key(state.incumbent_loss, state.incumbent_exact)
        set_rows(state, "incumbent", better, cand[rows, top], loss[rows, top], exact[rows, top])
        improved = won < self._key(state.best_loss, state.best_exact)
        set_rows(state, "best", improved, cand[rows, top], loss[rows, top], exact[rows, top])
        return improved

    def _start(self, Z: torch.Tensor) -> torch.Tensor:
        """The first incumbent (B, N): Z (B, N, V)'s argmax, mended with Z's next tokens
        where its text would not re-tokenise to it (roundtrip), so the search starts on a
        prompt it may keep: at N = 80 a single merging pair made every swap but the few at
        that pair inadmissible."""
        start = Z.argmax(-1)
        if not self.config.roundtrip:
            return start
        ranked = Z.topk(min(self.config.top_k, Z.shape[-1]), dim=-1).indices[..., 1:]
        return self.dlm.mend_round_trip(start, ranked)  # (B, N)

    @staticmethod
    def _walk_key(key: torch.Tensor, raw_key: torch.Tensor) -> torch.Tensor:
        """The order the walk moves in (B, K), float64: key where a prompt may be kept, else
        after all of those, by raw_key (its key before _admissible). Where every prompt near
        the incumbent fails the round trip (a merging pair that swaps elsewhere all keep),
        the walk still moves by loss until it reaches prompts that may be kept."""
        return torch.where(key.isfinite(), key.double(), raw_key.double() + 1e12)

    @staticmethod
    def _key(loss: torch.Tensor, exact: torch.Tensor,
             hits: torch.Tensor | None = None) -> torch.Tensor:
        """The order prompts are ranked in, lowest first: an exact prompt before any inexact
        one, then, given hits (the LCS length of the greedy output), the longer, then the
        lower loss. loss, exact, hits: same shape -> that shape (float64 with hits, so the
        loss still breaks ties under the offsets)."""
        if hits is None:
            return loss - exact.float() * 1e9
        return loss.double() - exact.double() * 1e9 - hits.double() * 1e3

    @torch.no_grad()
    def _decoded(self, pool: torch.Tensor, batch: Batch):
        """Every prompt of pool (B, K, N) scored by greedy decoding (rank_by=lcs): the loss
        of the objective on the logits the decode ran on (the teacher-forced loss up to the
        first miss, the model's own course after it), exact (the output is the target), and
        hits, the length of the longest common subsequence of the output with the target,
        the judge's measure: three (B, K) tensors. Each distinct prompt is decoded once, in
        chunks of chunk_size; the decode reads the same tokens as teacher-forced scoring."""
        cfg = self.config
        lengths = batch.mask.sum(1)  # (B,)
        rows, distinct, back = distinct_per_row(pool)  # (D,), (D, N), (B, K)
        target, mask = batch.target_ids[rows], batch.mask[rows]  # (D, M)
        parts = [self.dlm.greedy_margins(distinct[i:i + cfg.chunk_size],
                                         target[i:i + cfg.chunk_size])
                 for i in range(0, len(distinct), cfg.chunk_size)]
        output, wanted, rival, lse = (torch.cat(p) for p in zip(*parts, strict=True))
        if cfg.search_loss.is_margin:
            loss = cfg.search_loss.margin_loss(wanted, rival, mask)
        else:
            per = (lse - wanted) * mask
            loss = per.sum(1) / mask.sum(1).clamp_min(1)
        exact = ((output == target) | ~mask).all(1)
        targets = target.tolist()
        hits = torch.tensor([float(lcs_length(out[:n], targets[d][:n])) for d, (out, n) in
                             enumerate(zip(output.tolist(), lengths[rows].tolist(),
                                           strict=True))], device=pool.device)
        return tuple(x[back] for x in (loss, exact, hits))

    @staticmethod
    def _rejected(loss: torch.Tensor, base_loss: torch.Tensor,
                  screen_gain: torch.Tensor | None) -> torch.Tensor:
        """Swaps (B, W) that did no better than the prompt they change (base_loss, (B, W) or
        (B, 1)); where the model did not score one, the screen's estimated gain decides."""
        rejected = loss >= base_loss
        if screen_gain is not None:
            rejected = torch.where(loss.isfinite(), rejected, screen_gain <= 0)
        return rejected

    def _single(self, W: int, device) -> torch.Tensor:
        """Which of a round's W swaps change one position alone: (W,) bool. Two-position
        moves, copies and shifts neither leave Z's top tokens nor merge: their new token is
        not to blame alone."""
        return (torch.arange(W, device=device)
                >= self._paired(W) + self._copies(W) + self._shifted(W))

    def _forget_rejected(self, state: DLMISearchState, pos: torch.Tensor, tokens: torch.Tensor,
                         rejected: torch.Tensor, W: int) -> None:
        """forget_rejected: the rejected (B, W) single swaps whose token Z proposed."""
        cfg = self.config
        if not cfg.forget_rejected or cfg.proposal == "gradient":
            return
        from_z = (torch.arange(W, device=pos.device)
                  < W - self._targeted(W) - self._fluent(W))
        self._forget(state, pos, tokens, rejected & self._single(W, pos.device) & from_z)

    def _admissible(self, pool: torch.Tensor, loss: torch.Tensor, exact: torch.Tensor,
                    batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """loss and exact (B, K) of the prompts pool (B, K, N), with +inf and False where a
        prompt may not be kept: it does not survive as text (roundtrip) or holds too much of
        the target (max_overlap)."""
        if self.config.roundtrip:
            safe = self.dlm.round_trips(pool)  # (B, K)
            loss, exact = loss.masked_fill(~safe, float("inf")), exact & safe
        if self.config.max_overlap < 1.0:
            over = self._over_cap(pool, batch)  # (B, K)
            loss, exact = loss.masked_fill(over, float("inf")), exact & ~over
        return loss, exact

    def _over_cap(self, pool: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Prompts of pool (B, K, N) holding more of the target than max_overlap: (B, K) bool
        (a float tolerance, so a prompt exactly at the cap stays)."""
        return self._overlap(pool, batch) > self.config.max_overlap + 1e-6

    def _gradient_step(self, state: DLMISearchState, batch: Batch):
        """One Adam step on Z and Phi from S straight-through Gumbel-Softmax samples.

        Forward values are one-hot, so each sample's loss is its real hard loss; with the
        anchor, sample 0 is the incumbent (its gradient through softmax((Z + g) / tau) still
        reaches Z). Returns the samples (B, S, N), their losses and exactness (B, S), the
        temperatures (B, N), the argmax of sample 0's logits (B, M) and the gradient of the
        loss w.r.t. the anchor's one-hot input (B, N, V), or None unless proposals use it.
        """
        cfg = self.config
        Z = state.Z
        B, N, V = Z.shape
        S = cfg.samples
        # Straight-through: one-hot forward, gradient through softmax((Z + g) / tau).
        prompt, p, samples, tau = self.sample_prompts(
            state, batch, hard=True, anchor=state.incumbent if cfg.anchor else None)
        # The anchor's gradient w.r.t. its one-hot input, for gradient proposals only.
        wants_grad = cfg.anchor and cfg.proposal != "z"
        if wants_grad:
            (prompt if p is None else p).retain_grad()
        targets = batch.target_ids.repeat_interleave(S, 0)  # (B*S, M)
        mask = batch.mask.repeat_interleave(S, 0)
        logits = self.dlm.teacher_forced_logits(prompt, targets, soft_positions=N)
        fluency = self.dlm.fluency_penalty(prompt, p)
        per_sample = (cfg.search_loss(logits, targets, mask)
                      + fluency).view(B, S)  # the search's loss of each sample
        trained = per_sample
        if cfg.z_loss != cfg.search_loss:
            trained = (cfg.z_loss(logits, targets, mask) + fluency).view(B, S)
        state.optimizer.zero_grad()
        # Sum over rows: each row's gradient is its own (rows share no parameters).
        trained.mean(1).sum().backward()
        state.optimizer.step()
        with torch.no_grad():
            if cfg.z_decay:
                Z.mul_(1.0 - cfg.z_decay)
            argmax = logits.detach().argmax(-1)  # (B*S, M)
            exact = won_positions(argmax, targets, mask).all(1).view(B, S)
            grad = None
            if wants_grad:  # (B, N, V), times S to undo the mean over samples
                grad = (p.grad.view(B, S, N, V)[:, 0] if p is not None else
                        prompt.grad.view(B, S, N, -1)[:, 0] @ self.dlm.W_E.T) * S
        return (samples, per_sample.detach(), exact, tau.detach(), argmax.view(B, S, -1)[:, 0],
                grad)

    def _propose(self, state: DLMISearchState, batch: Batch, grad: torch.Tensor | None,
                 W: int | None = None, at: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """W (default: swaps) single-token changes of the incumbent: (B, W, N), and their
        positions and new tokens (B, W). Position `at` (B, W) where given, else uniform (or
        weighted towards the end: positions=late); the new token drawn uniformly from the
        top_k tokens of Z at that position (proposal z), or of the anchor's negative gradient
        (proposal gradient, as in GCG), or half of each (both)."""
        cfg = self.config
        Z = state.Z.detach()  # (B, N, V)
        B, N, V = Z.shape
        W, dev = self._width(W), Z.device
        if at is not None:
            pos = at
        elif cfg.positions == "late":
            weight = torch.arange(1, N + 1, dtype=torch.float, device=dev)
            pos = per_row(batch.generators, lambda g: torch.multinomial(
                weight, W, replacement=True, generator=g))  # (B, W)
        else:
            pos = per_row(batch.generators,
                          lambda g: torch.randint(N, (W,), generator=g, device=dev))  # (B, W)
        k = min(cfg.top_k, V)
        pick = per_row(batch.generators,
                       lambda g: torch.randint(k, (W,), generator=g, device=dev))  # (B, W)

        def pick_top(scores):  # (B, N, V) -> (B, W)
            return top_k_pick(scores, pos, pick, k)

        if cfg.proposal == "z":
            tokens = pick_top(Z)
        elif cfg.proposal == "gradient":
            tokens = pick_top(-grad)
        else:  # both: even swaps from the gradient, odd ones from Z
            tokens = torch.where(torch.arange(W, device=dev) % 2 == 0, pick_top(-grad),
                                 pick_top(Z))
        T, L = self._targeted(W), self._fluent(W)
        if T:
            tokens[:, W - T:] = self._target_tokens(batch, tokens[:, W - T:])
        if L:  # the L swaps before the targeted ones
            span = slice(W - T - L, W - T)
            tokens[:, span] = self._model_tokens(state.incumbent, pos[:, span], pick[:, span],
                                                 tokens[:, span])
        parents = self._bases(state)[:, self._parents(dev, W)]  # (B, W, N) what each changes
        cand = parents.clone().scatter_(2, pos[..., None], tokens[..., None])
        P = self._paired(W)
        if P and N > 1:  # a second position, never the first one, for the first P swaps
            shift = per_row(batch.generators,
                            lambda g: torch.randint(1, N, (P,), generator=g, device=dev))
            pos2 = (pos[:, :P] + shift) % N  # (B, P)
            pick2 = per_row(batch.generators,
                            lambda g: torch.randint(k, (P,), generator=g, device=dev))
            tokens2 = top_k_pick(Z, pos2, pick2, k)  # (B, P)
            cand[:, :P].scatter_(2, pos2[..., None], tokens2[..., None])
        H = self._shifted(W)
        if H and N > 1:  # after the copies: delete a token elsewhere, insert at pos
            span = slice(P + self._copies(W), P + self._copies(W) + H)
            gap = per_row(batch.generators,
                          lambda g: torch.randint(1, N, (H,), generator=g, device=dev))
            cand[:, span] = self._shift(parents[:, span], (pos[:, span] + gap) % N,
                                        pos[:, span], tokens[:, span])
        return cand, pos, tokens

    @staticmethod
    def _shift(base: torch.Tensor, drop: torch.Tensor, put: torch.Tensor,
               tokens: torch.Tensor) -> torch.Tensor:
        """base (B, H, N) with its token at `drop` deleted and `tokens` inserted at `put` (an
        index of the result), the tokens between sliding by one: (B, H, N). drop, put,
        tokens: (B, H)."""
        N = base.shape[-1]
        i = torch.arange(N, device=base.device)  # (N,) result positions
        k = i - (i > put[..., None]).long()  # (B, H, N) index in base without the dropped one
        src = k + (k >= drop[..., None]).long()
        out = base.gather(-1, src.clamp_max(N - 1))
        return torch.where(i == put[..., None], tokens[..., None], out)

    def _targeted(self, W: int | None = None) -> int:
        """How many of a step's swaps (the last ones) draw their token from the target."""
        return round(self.config.from_target * self._width(W))

    def _fluent(self, W: int | None = None) -> int:
        """How many of a step's swaps (just before the targeted ones) take the model's own
        prediction."""
        return round(self.config.from_lm * self._width(W))

    def _model_tokens(self, incumbent: torch.Tensor, pos: torch.Tensor, pick: torch.Tensor,
                      fallback: torch.Tensor) -> torch.Tensor:
        """The pick-th of the model's top_k next tokens at each position pos, given the
        incumbent (B, N) before it: (B, L) prompt-vocabulary ids; a position the model does
        not predict (the first, without fixed text) keeps its fallback (B, L)."""
        logp, first = self.dlm.prompt_log_probs(self.dlm.embed_prompt(incumbent))  # (B, P, V)
        k = min(self.config.top_k, logp.shape[-1])
        tokens = top_k_pick(logp, (pos - first).clamp_min(0), pick, k)
        return torch.where(pos >= first, tokens, fallback)

    def _target_tokens(self, batch: Batch, fallback: torch.Tensor) -> torch.Tensor:
        """Per row, fallback.shape[1] tokens drawn uniformly from the row's target tokens that
        the prompt vocabulary allows: (B, T) prompt-vocabulary ids; a row with none keeps
        its fallback (B, T)."""
        local, ok = self.dlm.allowed_local_ids(batch.target_ids)  # (B, M) x2
        ok &= batch.mask
        T = fallback.shape[1]
        out = fallback.clone()
        for b, g in enumerate(batch.generators):
            if ok[b].any():
                choice = torch.multinomial(ok[b].float(), T, replacement=True, generator=g)
                out[b] = local[b, choice]
        return out

    def _shifted(self, W: int | None = None) -> int:
        """How many of a step's swaps (after the copies) are insertion moves."""
        return round(self.config.shifts * self._width(W))

    def _copies(self, W: int | None = None) -> int:
        """How many of a step's swaps (after the paired ones) copy target tokens."""
        return round(self.config.copy_target * self._width(W))

    def _copy_target(self, cand: torch.Tensor, incumbent: torch.Tensor, batch: Batch,
                     anchor_argmax: torch.Tensor) -> None:
        """Overwrite the copy proposals of cand (B, W, N), in place, with the incumbent (B, N)
        plus the target's last copy_length tokens up to its first missed position (from the
        anchor's teacher-forced argmax (B, M)) written at a uniform offset. A row without a
        miss, or whose span holds a token the prompt vocabulary bans, keeps its single swaps."""
        N = cand.shape[2]
        local, ok = self.dlm.allowed_local_ids(batch.target_ids)  # (B, M) x2
        missed = ~won_positions(anchor_argmax, batch.target_ids, batch.mask)  # (B, M)
        first = missed.int().argmax(1).tolist()  # (B,) 0 for a row without a miss
        start, C = self._paired(), self._copies()
        for b, g in enumerate(batch.generators):
            span = slice(max(0, first[b] - self.config.copy_length + 1, first[b] + 1 - N),
                         first[b] + 1)  # at most N target positions, ending at the miss
            if not bool(missed[b].any()) or not bool(ok[b, span].all()):
                continue
            tokens = local[b, span]  # (L,)
            L = tokens.shape[0]
            offsets = torch.randint(N - L + 1, (C,), generator=g, device=g.device).tolist()
            for j, o in enumerate(offsets):
                cand[b, start + j] = incumbent[b]
                cand[b, start + j, o:o + L] = tokens

    @staticmethod
    def _bases(state: DLMISearchState) -> torch.Tensor:
        """The prompts swaps change: the incumbent, then the beam's runners-up: (B, P, N)."""
        return torch.cat([state.incumbent[:, None], state.beam[:, 1:]], 1)

    def _parents(self, device, W: int | None = None) -> torch.Tensor:
        """The beam member (0: the incumbent) each of a round's W swaps changes: in turn, and
        the incumbent for the copies, which read its first miss. -> (W,)"""
        parents = torch.arange(self._width(W), device=device) % self.config.beam
        parents[self._paired(W):self._paired(W) + self._copies(W)] = 0
        return parents

    def _overlap(self, pool: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The cheating check's overlap of each prompt of pool (B, K, N) with its row's
        target: the share of scored target positions, EoS padding aside, whose token occurs
        in the prompt -> (B, K), as metrics.overlap_rate counts it."""
        local, ok = self.dlm.allowed_local_ids(batch.target_ids)  # (B, M) x2
        counted = batch.mask.bool()
        if self.dlm.eos_id is not None:
            counted = counted & (batch.target_ids != self.dlm.eos_id)
        found = (pool[:, :, :, None] == local[:, None, None]).any(2) & ok[:, None]  # (B, K, M)
        counted = counted[:, None].float()
        return (found * counted).sum(-1) / counted.sum(-1).clamp_min(1.0)

    def _width(self, W: int | None) -> int:
        """A round's swaps: W, or by default all of a step's."""
        return self.config.swaps if W is None else W

    def _round_widths(self) -> list[int]:
        """The swaps of each round of a step, the remainder in the last: sums to swaps."""
        R, W = self.config.rounds, self.config.swaps
        return [W // R] * (R - 1) + [W - (W // R) * (R - 1)]

    def _paired(self, W: int | None = None) -> int:
        """How many of a step's swaps (the first ones) change two positions."""
        return round(self.config.pairs * self._width(W))

    def _merge_gain(self, cand_loss: torch.Tensor, incumbent_loss: torch.Tensor,
                    screen_gain: torch.Tensor | None, single: torch.Tensor) -> torch.Tensor:
        """Each swap's gain over the incumbent (B, W) for the merge: the model's own where it
        scored the swap; with merge_screened, the screen's estimate where only the screen
        did, else none (-inf); -inf for swaps that change more than one position (single
        (W,) False). cand_loss (B, W), incumbent_loss (B, 1)."""
        unscored = torch.full_like(cand_loss, float("-inf"))  # the screen dropped the swap
        if self.config.merge_screened and screen_gain is not None:
            unscored = screen_gain
        gain = torch.where(cand_loss.isfinite(), incumbent_loss - cand_loss, unscored)
        return gain.masked_fill(~single, float("-inf"))

    def _merge(self, incumbent: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor,
               gain: torch.Tensor) -> torch.Tensor:
        """The incumbent (B, N) with up to `merge` of the step's improving swaps (gain > 0)
        applied at once, best first, one per position: (B, 1, N). pos, tokens, gain:
        (B, W)."""
        merged = incumbent.clone()
        order = gain.argsort(dim=1, descending=True, stable=True)  # (B, W) best swap first
        for b in range(incumbent.shape[0]):
            taken: set[int] = set()
            for w in order[b].tolist():
                if len(taken) == self.config.merged or not gain[b, w] > 0:
                    break
                p = int(pos[b, w])
                if p not in taken:
                    taken.add(p)
                    merged[b, p] = tokens[b, w]
        return merged[:, None]

    def _restart(self, state: DLMISearchState, batch: Batch, rows: torch.Tensor) -> None:
        """Rows (B,) bool start again from their best prompt with `restart_swaps` positions
        redrawn from Z's top_k tokens; the incumbent's loss is unknown until scored."""
        if not bool(rows.any()):
            return
        cfg = self.config
        Z = state.Z.detach()  # (B, N, V)
        B, N, V = Z.shape
        k, R, dev = min(cfg.top_k, V), min(cfg.restart_swaps, N), Z.device
        pos = per_row(batch.generators,
                      lambda g: torch.randperm(N, generator=g, device=dev)[:R])  # (B, R)
        pick = per_row(batch.generators,
                       lambda g: torch.randint(k, (R,), generator=g, device=dev))  # (B, R)
        tokens = top_k_pick(Z, pos, pick, k)  # (B, R)
        restarted = state.best.clone().scatter_(1, pos, tokens)  # (B, N)
        state.incumbent = torch.where(rows[:, None], restarted, state.incumbent)
        state.incumbent_loss = torch.where(rows, float("inf"), state.incumbent_loss)
        state.incumbent_exact = state.incumbent_exact & ~rows
        state.since_best = torch.where(rows, 0, state.since_best)
        state.stall = torch.where(rows, 0, state.stall)

    @staticmethod
    def _forget(state: DLMISearchState, pos: torch.Tensor, tokens: torch.Tensor,
                rejected: torch.Tensor) -> None:
        """Swaps that scored no better than the incumbent drop out of Z's top tokens: their
        logit is set to the position's minimum, so the next proposals try other tokens (the
        gradient can raise it again). pos, tokens, rejected: (B, W)."""
        Z = state.Z.data  # (B, N, V); an edit of the parameter, not a gradient step
        b, w = rejected.nonzero(as_tuple=True)
        if b.numel():
            p, t = pos[b, w], tokens[b, w]
            Z[b, p, t] = Z[b, p].amin(-1)

    def _score(self, bases: torch.Tensor, cand: torch.Tensor, batch: Batch,
               parents: torch.Tensor | None = None):
        """cand (B, K, N), each a variant of bases[:, parents] (bases (B, P, N), parents (K,),
        default all 0) -> loss (B, K), exact (B, K), no-grad and teacher-forced, each from
        its first changed position on (dlm.variant_losses); and screen_gain (B, K), the
        screen's estimate of the gain over its base (its loss of the base minus its loss of
        the candidate; None without a screen).
        A swap the screen drops has loss +inf and is never exact."""
        cfg = self.config
        B, K, N = cand.shape
        P, dev = bases.shape[1], cand.device
        if parents is None:
            parents = torch.zeros(K, dtype=torch.long, device=dev)
        rows = (torch.arange(B, device=dev)[:, None] * P + parents).reshape(-1)  # (B * K,)
        args = (bases.reshape(B * P, N), cand.reshape(B * K, N), rows,
                batch.target_ids.repeat_interleave(P, 0), batch.mask.repeat_interleave(P, 0))
        low = screen_model(self.dlm, cfg.screen) if K > cfg.screen_keep else None
        if low is None:  # no screen, or it would keep every swap anyway
            loss, exact = self.dlm.variant_losses(*args, cfg.chunk_size, cfg.search_loss)
            return loss.view(B, K), exact.view(B, K), None
        s = screened_variant_losses(self.dlm, low, *args, cfg.screen_keep, cfg.chunk_size,
                                    cfg.search_loss)
        return s.loss.view(B, K), s.exact.view(B, K), s.gain.view(B, K)

    @torch.no_grad()
    def current_prompts(self, state: DLMISearchState) -> torch.Tensor:
        if state.best is None:  # before the first step
            return state.Z.detach().argmax(-1)
        return state.best

    def keep(self, state: DLMISearchState, index: torch.Tensor) -> DLMISearchState:
        base = super().keep(state, index)
        rows = {f.name: None if getattr(state, f.name) is None else getattr(state, f.name)[index]
                for f in fields(DLMISearchState) if f.name not in ("Z", "phi", "optimizer")}
        return DLMISearchState(base.Z, base.phi, base.optimizer, **rows)

