"""`dlmi report`: tables and plots from result rows (no model, no torch)."""

from __future__ import annotations

from pathlib import Path

from dlmi.cli.common import add_quiet_flag, check_output_dir
from dlmi.errors import UsageError


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="tables and plots from result files (no model needed)")
    r.add_argument("results", nargs="+", help="results JSONL files (dlmi bench / invert --json)")
    r.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_quiet_flag(r)
    r.set_defaults(handler=run)


def run(args) -> int:
    from dlmi.evaluation.report import write_report

    paths = [Path(p) for p in args.results]
    for p in paths:
        if p.is_dir():
            raise UsageError(f"{p} is a directory: give results JSONL files")
        if not p.is_file():
            raise UsageError(f"results file not found: {p}")
    check_output_dir(args.out, "--out")
    files = write_report(paths, Path(args.out))
    for f in files:
        print(f)
    return 0


