"""The ``hesnr`` command line: one subcommand per module, imported lazily.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``.
A subcommand reports bad input itself (one ``hesnr CMD: ...`` line naming the path,
flag or field; exit status 2).  Anything it did not expect is still one line and
exit status 2 here; ``--debug`` shows the traceback instead.
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
    "score": ("megatron_hesnr.scoring.cli", "HE-SNR of a Hugging Face checkpoint or a served model (transformers, vLLM)"),
}


def _load(name: str):
    module, _ = COMMANDS[name]
    return importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hesnr", description="HE-SNR tools for Megatron mid-training")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse the command name first so that only the chosen module is imported.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"] if debug else argv
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
    cmd_parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    mod.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    args.debug = debug
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(mod.run(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - one line, not a traceback
        if debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"hesnr {head.command}: error: {text} ({type(exc).__name__}; --debug shows the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
