"""The ``hesnr`` command line: one subcommand per module, imported lazily.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand -> (module, one-line help)
COMMANDS = {
    "prepare": ("megatron_hesnr.data.cli_prepare", "trajectories -> Megatron dataset with a scoring mask"),
    "inspect": ("megatron_hesnr.data.cli_inspect", "show which characters of a prepared trajectory are scored"),
    "report": ("megatron_hesnr.analysis.cli_report", "correlate evaluation records with downstream scores"),
    "compare": ("megatron_hesnr.analysis.cli_compare", "paired test: does checkpoint B differ from A on the same trajectories"),
    "demo": ("megatron_hesnr.demo", "end-to-end quickstart on CPU"),
}


def _load(name: str):
    module, _ = COMMANDS[name]
    return importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hesnr", description="HE-SNR tools for Megatron mid-training")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse the command name first so that only the chosen module is imported.
    head, _rest = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if head.command is None:
        parser.print_help()
        return 2
    try:
        mod = _load(head.command)
    except ModuleNotFoundError as exc:
        print(f"hesnr {head.command}: not available ({exc})", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"hesnr {head.command}", description=COMMANDS[head.command][1])
    cmd_parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    mod.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
