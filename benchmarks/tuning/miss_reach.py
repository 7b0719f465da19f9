"""How far can any prompt push one target position? A reach probe for the stubborn misses.

For each (target, position) asked for, a GCG search over N-token prompts (the prompt, then the
target teacher-forced, as the methods feed them) maximises one thing alone: the target token's
logit margin over its best rival at that position; every other position is ignored and the
prompt may hold any token of the methods' default vocabulary, no-special (no round trip, no
overlap cap). So the best margin it finds is an estimate from above of what an honest search,
which must also win every position before it, can reach there. A position still negative here
is out of this search's reach with N tokens; no proof that no prompt wins it. With --joint the
search wins every position up to it together instead (the hinge loss of cw-first, reported as
the smallest margin: > 0 exactly where greedy decoding follows the target that far), what a
search for an exact prompt has to do. Prints per (target, position) the margin given the BoS
alone, given the target itself as the prompt (what induction can copy), the search's best at
each printed step, and the best prompt's ids (`best_prompt_ids`, a start for `init_prompt`).
Usage: python benchmarks/tuning/miss_reach.py TARGETS.jsonl ID:POS [ID:POS ...]
       [--prompt-length 10] [--steps 100] [--swaps 32] [--top-k 64] [--seed 0]
       [--joint] [--bos] [--out FILE]
"""

import argparse
import json

import torch
from miss_ranks import ranks_and_margins  # this folder's probe, beside this script

from dlmi.model.models import load_model
from dlmi.model.objective import target_and_rival
from dlmi.model.vocab import allowed_token_ids


def margins_at(model, embeds: torch.Tensor, targets: list[int]) -> torch.Tensor:
    """embeds (R, S, d), whose last len(targets) positions predict `targets` -> their
    margins (R, J)."""
    J = len(targets)
    logits = model(inputs_embeds=embeds).logits[:, -J:]  # (R, J, V)
    own, rival = target_and_rival(logits, torch.tensor([targets]).expand(len(embeds), J))
    return own - rival


def score(model, embeds: torch.Tensor, wanted: list[int], joint: bool):
    """-> (loss to lower (R,), what the probe reports (R,)). Alone: the last position's
    margin. Joint: the hinge loss relu(1 - margin) summed over every position (as cw-first),
    reported as the smallest margin, > 0 exactly where greedy decoding reproduces them all."""
    if not joint:
        m = margins_at(model, embeds, wanted[-1:])[:, 0]
        return -m, m
    m = margins_at(model, embeds, wanted)  # (R, J)
    return (1.0 - m).clamp_min(0.0).sum(1), m.amin(1)


def reported(margins: list[float], joint: bool) -> float:
    """What the probe reports of a context's margins at positions 0..pos: the last one's, or
    (joint) the smallest."""
    return min(margins) if joint else margins[-1]


def reach(lm, target_ids: list[int], pos: int, N: int, steps: int, swaps: int, top_k: int,
          seed: int, joint: bool = False, bos: bool = False,
          every: int = 10) -> tuple[list[tuple[int, float]], list[int]]:
    """GCG on the margin at target position pos alone, or (joint) on the positions up to
    it together: ([(step, best reported margin so far)], the best prompt's ids)."""
    model, E = lm.model, lm.model.get_input_embeddings().weight  # E (V, d)
    V = E.shape[0]
    allowed = allowed_token_ids(lm)  # the methods' default vocabulary (no-special)
    banned = torch.ones(V, dtype=torch.bool)
    banned[allowed] = False
    g = torch.Generator().manual_seed(seed)
    prompt = allowed[torch.randint(len(allowed), (N,), generator=g)]  # (N,)
    # The methods feed the prompt with no BoS before it (the DLM's input is the prompt, then
    # the target); --bos puts one there, as the first records of this probe had it.
    head = torch.tensor([lm.bos_token_id] if bos else [], dtype=torch.long)
    tail = torch.tensor(target_ids[:pos], dtype=torch.long)  # the target before pos
    best, best_prompt, out = -float("inf"), prompt, []
    for step in range(steps + 1):
        x = torch.nn.functional.one_hot(prompt, V).to(E.dtype).requires_grad_(True)  # (N, V)
        embeds = torch.cat([E[head], x @ E, E[tail]])[None]  # (1, S, d)
        wanted = target_ids[:pos + 1]
        loss, m = score(model, embeds, wanted, joint)
        loss.sum().backward()
        if float(m.detach()) > best:
            best, best_prompt = float(m.detach()), prompt
        if step % every == 0 or step == steps:
            out.append((step, round(best, 3)))
        if step == steps:
            break
        grad = x.grad.masked_fill(banned, float("inf"))  # (N, V): lower raises the margin
        top = (-grad).topk(top_k, dim=-1).indices  # (N, k)
        at = torch.randint(N, (swaps,), generator=g)
        cand = prompt.repeat(swaps, 1)  # (W, N)
        cand[torch.arange(swaps), at] = top[at, torch.randint(top_k, (swaps,), generator=g)]
        with torch.no_grad():
            ids = torch.cat([head.expand(swaps, -1), cand, tail.expand(swaps, -1)], 1)
            loss, _ = score(model, E[ids], wanted, joint)  # (W,)
        prompt = cand[loss.argmin()]  # GCG: move to the step's best candidate
    return out, best_prompt.tolist()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("targets")
    ap.add_argument("cells", nargs="+", help="ID:POS, a target id and a 0-based position")
    ap.add_argument("--prompt-length", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--swaps", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--joint", action="store_true",
                    help="win every position up to POS together (the smallest margin reported)")
    ap.add_argument("--bos", action="store_true",
                    help="a BoS before the prompt (the methods have none)")
    ap.add_argument("--out")
    a = ap.parse_args()
    lm = load_model("smollm2-135m", device="cpu")
    targets = {t["id"]: t for t in map(json.loads, open(a.targets))}
    for cell in a.cells:
        tid, pos = cell.rsplit(":", 1)
        t, pos = targets[tid], int(pos)
        ids = t["target_ids"]
        bos = [lm.bos_token_id]
        given_bos = reported(ranks_and_margins(lm, bos, ids[:pos + 1])[1], a.joint)
        given_target = reported(ranks_and_margins(  # the target as the prompt, fed as asked
            lm, bos * a.bos + ids, ids[:pos + 1])[1], a.joint)
        curve, best_prompt = reach(lm, ids, pos, a.prompt_length, a.steps, a.swaps, a.top_k,
                                   a.seed, a.joint, a.bos)
        record = {"targets": a.targets, "target_id": tid, "position": pos, "text": t["text"],
                  "prompt_length": a.prompt_length, "swaps": a.swaps, "top_k": a.top_k,
                  "seed": a.seed, "joint": a.joint, "bos_before_prompt": a.bos,
                  "margin_given_bos": round(given_bos, 3),
                  "margin_given_target_as_prompt": round(given_target, 3),
                  "best_margin_by_step": curve, "best_prompt_ids": best_prompt}
        print(json.dumps(record), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
