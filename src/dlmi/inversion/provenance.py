"""Where a result came from: git commit, library versions, device, date, host."""

from __future__ import annotations

import datetime
import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def _static() -> dict:
    versions = {}
    for name in ("dlmi", "torch", "transformers", "gguf", "accelerate", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": _git_commit(),
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def package_version() -> str:
    """dlmi's installed version ("unknown" when run from a source tree not installed)."""
    try:
        return metadata.version("dlmi")
    except metadata.PackageNotFoundError:
        return "unknown"


def library_versions() -> dict[str, str | None]:
    return dict(_static()["versions"])


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(device=None) -> dict:
    import torch

    from dlmi.model.screening import fast_bfloat16

    dev = str(device) if device is not None else "cpu"
    name = torch.cuda.get_device_name(device) if dev.startswith("cuda") else platform.processor()
    return {
        **_static(),
        "device": dev,
        "device_name": name or platform.machine(),
        # Whether screen=auto screens in bfloat16 here (dlmi.model.screening).
        "bfloat16_native": fast_bfloat16(torch.device(dev)),
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
