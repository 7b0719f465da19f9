"""Data sets for prompt tuning: JSONL rows {"input": text (optional), "output": text}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dlmi.errors import UsageError
from dlmi.files import read_text


@dataclass(frozen=True)
class Pair:
    input: str  # "" when the row has none (the inversion case)
    output: str


def read_pairs(path: str | Path, what: str = "--data") -> list[Pair]:
    path = Path(path)
    lines = read_text(path, f"{what} file").splitlines()
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not JSON ({exc.msg}): each line is "
                             '{"input": ..., "output": ...}') from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{number}: each line is a JSON object "
                             '{"input": ..., "output": ...}')
        output, input_text = row.get("output"), row.get("input", "")
        if not isinstance(output, str) or not output:
            raise UsageError(f"{path}:{number}: needs a non-empty string 'output'")
        if not isinstance(input_text, str):
            raise UsageError(f"{path}:{number}: 'input' must be a string")
        pairs.append(Pair(input_text, output))
    if not pairs:
        raise UsageError(f"{what} file {path} has no pairs")
    return pairs


def as_pairs(items) -> list[Pair]:
    """Pairs from Pair objects or {"input", "output"} dicts (the Python API)."""
    pairs = []
    for item in items:
        if isinstance(item, dict):
            item = Pair(item.get("input", ""), item.get("output", ""))
        if not isinstance(item, Pair) or not isinstance(item.output, str) or not item.output:
            raise UsageError("each pair needs a non-empty output: dlmi.Pair(input, output) or "
                             '{"input": ..., "output": ...}')
        pairs.append(item)
    return pairs
