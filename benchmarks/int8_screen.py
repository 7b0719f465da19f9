"""Would an int8 copy of the model screen swaps on a CPU without native bfloat16? Times the
default model's forward (40 prompts of 20 tokens, logits at the last 10) in float32 and with
PyTorch's dynamic int8 quantisation of its linear layers (per tensor and per channel, with and
without the head), and prints the speed ratio and how often the two agree on the argmax.

    python benchmarks/int8_screen.py
"""

import copy
import time

import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

from dlmi.model.models import load_model


def timed(model, ids, repeats=4):
    with torch.no_grad():
        model(input_ids=ids, logits_to_keep=10)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            logits = model(input_ids=ids, logits_to_keep=10).logits
    return (time.perf_counter() - start) / repeats, logits


def main() -> None:
    model = load_model("smollm2-135m", device="cpu").model
    ids = torch.randint(0, 49152, (40, 20), generator=torch.Generator().manual_seed(0))
    base_s, base_logits = timed(model, ids)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    variants = {
        "per tensor, all linear": {n: default_dynamic_qconfig for n in linear},
        "per channel, all linear": {n: per_channel_dynamic_qconfig for n in linear},
        "per channel, no head": {n: per_channel_dynamic_qconfig for n in linear
                                 if "lm_head" not in n},
    }
    print(f"float32: {base_s:.3f} s per forward")
    for name, spec in variants.items():
        quantised = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), spec,
                                                           dtype=torch.qint8)
        s, logits = timed(quantised, ids)
        agree = (logits.argmax(-1) == base_logits.argmax(-1)).float().mean().item()
        print(f"int8 {name}: {s:.3f} s, {base_s / s:.2f}x faster, argmax agrees "
              f"{agree:.0%}, max |logit difference| {(logits - base_logits).abs().max():.1f}")


if __name__ == "__main__":
    main()
