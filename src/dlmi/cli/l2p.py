"""`dlmi l2p`: the trained logit-to-prompt inverter: collect, train, invert, eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlmi.cli.common import (
    EXIT_INTERRUPTED,
    add_model_flags,
    add_quiet_flag,
    check_output_dir,
    check_writable,
    load_model_from_args,
)
from dlmi.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("l2p", help="logit2prompt: train a model that writes the prompt behind "
                                   "a next-token distribution",
                       description="The trained inverter of Morris et al. (2023): collect "
                                   "next-token distributions, train a T5 inverter on them, "
                                   "invert, and evaluate with and without defences.")
    steps = p.add_subparsers(dest="l2p_command", required=True, metavar="STEP",
                             help="collect, train, invert or eval")

    c = steps.add_parser("collect", help="next-token log-probs of prompts, sharded on disk")
    add_model_flags(c)
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", metavar="FILE",
                     help="one prompt per line, or JSONL rows with 'text'")
    src.add_argument("--generate", type=int, metavar="COUNT",
                     help="sample COUNT prompts (4-12 tokens) from the subject model itself")
    c.add_argument("--seed", type=int, default=0, help="seed of --generate (default 0)")
    c.add_argument("--out", required=True, metavar="DIR",
                   help="data folder (a rerun continues after its finished shards)")
    c.add_argument("--shard-size", type=int, default=256, help="prompts per shard file")
    add_quiet_flag(c)
    c.set_defaults(handler=run_collect)

    t = steps.add_parser("train", help="train (or resume) an inverter on a data folder")
    add_model_flags(t)
    t.add_argument("--data", required=True, metavar="DIR", help="a `dlmi l2p collect` folder")
    t.add_argument("--out", required=True, metavar="CKPT",
                   help="checkpoint folder; an existing one is resumed")
    t.add_argument("--steps", type=int, default=2000, help="training steps (default 2000)")
    t.add_argument("--batch-size", type=int, default=32, help="default 32")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--width", type=int, default=256, help="encoder width d (default 256)")
    t.add_argument("--layers", type=int, default=4, help="T5 layers each side (default 4)")
    t.add_argument("--eval-every", type=int, default=200, help="held-out loss every K steps")
    t.add_argument("--save-every", type=int, default=200, help="checkpoint every K steps")
    t.add_argument("--pretrained", default=None, metavar="DIR",
                   help="a local pretrained T5 checkpoint to start from")
    add_quiet_flag(t)
    t.set_defaults(handler=run_train)

    i = steps.add_parser("invert", help="candidate prompts for a distribution")
    add_model_flags(i)
    i.add_argument("--checkpoint", required=True, metavar="CKPT")
    what = i.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="a hidden prompt: its distribution is inverted")
    what.add_argument("--logits", metavar="FILE",
                      help="a saved (V,) tensor of log-probs or logits (torch.save)")
    i.add_argument("--beams", type=int, default=4, help="beam width (default 4)")
    i.add_argument("--candidates", type=int, default=4, help="prompts returned (default 4)")
    i.add_argument("--json", dest="json_out", metavar="FILE",
                   help="write the candidates as a JSON list")
    add_quiet_flag(i)
    i.set_defaults(handler=run_invert)

    e = steps.add_parser("eval", help="held-out metrics with and without each defence")
    add_model_flags(e)
    e.add_argument("--checkpoint", required=True, metavar="CKPT")
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--limit", type=int, default=50, help="held-out prompts (default 50)")
    e.add_argument("--json", dest="json_out", metavar="FILE", help="write the table as JSON")
    add_quiet_flag(e)
    e.set_defaults(handler=run_eval)


def _positive(value, flag: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{flag} must be >= 1, got {value}")


def run_collect(args) -> int:
    from dlmi.logit2prompt.data import collect, generate_prompts, read_prompts

    _positive(args.generate, "--generate")
    _positive(args.shard_size, "--shard-size")
    check_output_dir(args.out, "--out")
    prompts = read_prompts(args.prompts) if args.prompts else None
    lm = load_model_from_args(args)
    if prompts is None:
        prompts = generate_prompts(lm, args.generate, args.seed)

    def report(done, total):
        if not args.quiet:
            print(f"collected {done}/{total}", file=sys.stderr)

    try:
        n = collect(lm, prompts, args.out, args.shard_size, report)
    except KeyboardInterrupt:
        print("dlmi: interrupted; finished shards are kept, rerun to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{n} prompts' next-token log-probs in {args.out}")
    return 0


def run_train(args) -> int:
    from dlmi.logit2prompt.data import read_meta
    from dlmi.logit2prompt.train import TrainConfig, train

    for flag in ("steps", "batch_size", "width", "layers", "eval_every", "save_every"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if not 0 < args.lr < 1:
        raise UsageError(f"--lr must be in (0, 1), got {args.lr}")
    if args.width % max(1, args.width // 64):
        raise UsageError("--width must be a multiple of 64")
    read_meta(args.data)
    check_output_dir(args.out, "--out")
    lm = load_model_from_args(args)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      eval_every=args.eval_every, save_every=args.save_every)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc="train", unit="step")

    def tick(step, loss):
        if bar:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.refresh()

    try:
        result = train(args.data, args.out, cfg, lm, args.width, args.layers, args.pretrained,
                       args.device, tick)
    except KeyboardInterrupt:
        print("dlmi: interrupted; the last checkpoint is kept, rerun to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar:
            bar.close()
    print(f"step {result['step']}: train loss {result['train_loss']:.3f}, held-out loss "
          f"{result['eval_loss']:.3f}; checkpoint in {args.out}")
    return 0


def run_invert(args) -> int:
    import torch

    from dlmi.logit2prompt.invert import distribution_of, invert_distribution
    from dlmi.logit2prompt.model import Logit2Prompt, check_checkpoint

    _positive(args.beams, "--beams")
    _positive(args.candidates, "--candidates")
    check_checkpoint(args.checkpoint)
    if args.json_out:
        check_writable(args.json_out, "--json")
    lm = load_model_from_args(args)
    inverter = Logit2Prompt.load(args.checkpoint, lm.device)
    hidden = None
    if args.prompt is not None:
        hidden, logprobs = distribution_of(lm, args.prompt)
    else:
        try:
            logprobs = torch.load(args.logits, weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise UsageError(f"cannot read --logits {args.logits}: {exc}") from None
        if not isinstance(logprobs, torch.Tensor) or logprobs.shape != (lm.vocab_size,):
            raise UsageError(f"--logits must hold one tensor of shape ({lm.vocab_size},)")
        logprobs = logprobs.float().log_softmax(-1)
    found = invert_distribution(inverter, lm, logprobs, hidden_ids=hidden, beams=args.beams,
                                candidates=args.candidates)
    for rank, c in enumerate(found, 1):
        extra = ("" if c.exact_match is None else
                 f"  exact {c.exact_match}  token-F1 {c.token_f1:.2f}  BLEU {c.bleu:.1f}")
        print(f"{rank}. {c.prompt_text!r} -> {c.output_text!r}  LCS {c.lcs_ratio:.2f}{extra}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([c.to_dict() for c in found], indent=1,
                                                  ensure_ascii=False) + "\n")
    return 0


def run_eval(args) -> int:
    from dlmi.logit2prompt.data import read_meta
    from dlmi.logit2prompt.evaluate import evaluate
    from dlmi.logit2prompt.model import Logit2Prompt, check_checkpoint

    _positive(args.limit, "--limit")
    check_checkpoint(args.checkpoint)
    read_meta(args.data)
    if args.json_out:
        check_writable(args.json_out, "--json")
    lm = load_model_from_args(args)
    inverter = Logit2Prompt.load(args.checkpoint, lm.device)
    table = evaluate(inverter, lm, args.data, limit=args.limit)
    print("| defence | prompts | exact | token F1 | BLEU | output LCS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m in table.items():
        print(f"| {name} | {m['prompts']} | {m['exact_match']:.2f} | {m['token_f1']:.2f} | "
              f"{m['bleu']:.1f} | {m['lcs_ratio']:.2f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(table, indent=1) + "\n")
    return 0
