"""`dlmi env`: what this machine offers dlmi (versions, device, threads, default model cache),
the facts to paste into a bug report or beside a benchmark figure."""

from __future__ import annotations

import json
import os
import platform


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="versions, device, threads and the default model's cache")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=run)


def facts() -> dict:
    import torch

    from dlmi.errors import UsageError
    from dlmi.inversion.provenance import library_versions, package_version
    from dlmi.model.models import cache_dir, smollm2_gguf_path

    try:
        gguf = str(smollm2_gguf_path())
    except UsageError as exc:  # reported, not raised: env must always print
        gguf = f"not found: {exc}"
    converted = cache_dir() / "smollm2-135m-instruct"
    cuda = torch.cuda.is_available()
    return {
        "dlmi": package_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": library_versions(),
        "device": "cuda" if cuda else "cpu",
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda else [],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "default_model": "smollm2-135m",
        "default_model_gguf": gguf,
        "model_cache": str(cache_dir()),
        "default_model_converted": (converted / "model.safetensors").is_file(),
    }


def run(args) -> int:
    info = facts()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "versions":
            value = ", ".join(f"{k} {v or 'missing'}" for k, v in value.items())
        print(f"{key:<24} {value}")
    return 0
