"""Command line: `dlmi invert | methods | targets | bench | report | diagnose | env`.

One module per command below this package, each with `add_parser(subparsers)` that sets the
command's `handler`; the flags and helpers they share live in `dlmi.cli.common`. Bad input ends
with one line on stderr and exit code 2; Ctrl-C keeps what was computed and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys

from dlmi.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, quiet_libraries
from dlmi.errors import UsageError

COMMANDS = ("invert", "tune", "l2p", "methods", "targets", "bench", "report", "diagnose", "env")


class _Parser(argparse.ArgumentParser):
    """argparse's own errors as one line (`dlmi: error: ...`), exit 2, no usage dump."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"dlmi: error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse errors
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    quiet_libraries()
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"dlmi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dlmi: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        try:  # Python flushes stdout at exit, which would raise again: point it at devnull
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout has no file descriptor (captured)
            pass
        return 0


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from dlmi.inversion.provenance import package_version

    parser = _Parser(prog="dlmi",
                     description="Find prompts that make a frozen language model say a target.")
    parser.add_argument("--version", action="version", version=f"dlmi {package_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"dlmi.cli.{name}").add_parser(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
