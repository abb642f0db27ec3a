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
import os
import sys

#: subcommand -> (module, one-line help)
COMMANDS = {
    "prepare": ("megatron_hesnr.data.cli_prepare", "trajectories -> Megatron dataset with a scoring mask"),
    "inspect": ("megatron_hesnr.data.cli_inspect", "show which characters of a prepared trajectory are scored"),
    "report": ("megatron_hesnr.analysis.cli_report", "correlate evaluation records with downstream scores"),
    "compare": ("megatron_hesnr.analysis.cli_compare", "paired test: does checkpoint B differ from A on the same trajectories"),
    "demo": ("megatron_hesnr.demo", "end-to-end quickstart on CPU"),
}


GLOBAL_FLAGS = {"-v": "verbose", "--verbose": "verbose", "--debug": "debug"}
#: Exit status after Ctrl-C (128 + SIGINT), and when the reader of stdout went away (128 + SIGPIPE).
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def _load(name: str):
    module, _ = COMMANDS[name]
    return importlib.import_module(module)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hesnr", description="HE-SNR tools for Megatron mid-training",
                                     epilog="Global options go before or after COMMAND; "
                                            "`hesnr COMMAND --help` lists a command's own options.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _split(argv: list[str]) -> tuple[dict, str | None, list[str]]:
    """Global flags before the command, the command, the command's own arguments.
    Only the chosen command's module is imported afterwards (``--help`` and argument
    errors of the others cost nothing)."""
    flags = {"verbose": False, "debug": False}
    i = 0
    while i < len(argv) and argv[i] in GLOBAL_FLAGS:
        flags[GLOBAL_FLAGS[argv[i]]] = True
        i += 1
    if i < len(argv) and argv[i] in COMMANDS:
        rest = argv[i + 1:]
        if "--debug" in rest:
            flags["debug"] = True
            rest = [a for a in rest if a != "--debug"]
        return flags, argv[i], rest
    return flags, None, argv[i:]


def _quiet_stdout() -> None:
    """After a broken pipe: send what is left of stdout nowhere (no error at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    name = None
    try:
        flags, name, rest = _split(argv)
        if name is None:
            parser = _top_parser()
            if not rest:
                parser.print_help()
                return 2
            parser.parse_args(rest)  # --help exits 0; a wrong command or flag exits 2 with argparse's line
            parser.print_help()
            return 2
        return _run(name, rest, flags)
    except KeyboardInterrupt:
        print(f"hesnr{' ' + name if name else ''}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


def _run(name: str, rest: list[str], flags: dict) -> int:
    debug = flags["debug"]
    try:
        mod = _load(name)
    except ModuleNotFoundError as exc:
        print(f"hesnr {name}: not available ({exc})", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"hesnr {name}", description=COMMANDS[name][1])
    cmd_parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    cmd_parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    mod.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    args.debug = debug
    args.verbose = args.verbose or flags["verbose"]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = int(mod.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        if debug:
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"hesnr {name}: error: {text} ({type(exc).__name__}; --debug shows the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
