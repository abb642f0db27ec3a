"""The ``--hesnr-*`` command-line flags, derived from :class:`~.config.HESNRConfig`'s fields.

``add_hesnr_args(parser)`` adds them to any ``argparse`` parser (Megatron-LM's
``extra_args_provider``, a Megatron-Bridge launch script);
``config_from_args(args)`` turns the parsed namespace into :class:`~.config.HESNRConfig`
(``None`` when no ``--hesnr-data-path`` is given, i.e. the evaluation is off).
"""
from __future__ import annotations

import argparse

from .config import HESNRConfig, HESNRConfigError, flag_settings, parse_data_specs

#: Every flag this module adds, in the order of the config's fields.
FLAGS = tuple(s.flag for s in flag_settings())


def add_hesnr_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the HE-SNR flags (Megatron's ``extra_args_provider`` contract: returns the parser)."""
    g = parser.add_argument_group(title="HE-SNR evaluation (megatron-hesnr)")
    for s in flag_settings():
        kw = {"default": list(s.default) if isinstance(s.default, tuple) else s.default, **s.argparse}
        g.add_argument(s.flag, help=s.help, **kw)
    return parser


def config_from_args(args) -> HESNRConfig | None:
    """The config of a parsed namespace, or ``None`` when ``--hesnr-data-path`` is absent."""
    paths = getattr(args, "hesnr_data_path", None)
    if not paths:
        if getattr(args, "hesnr_jsonl", None):
            raise HESNRConfigError("--hesnr-jsonl", "given without --hesnr-data-path (nothing would be evaluated)")
        return None
    values: dict = {}
    for s in flag_settings():
        value = getattr(args, dest_of(s.flag))
        if s.path == ("datasets",):
            value = parse_data_specs(value)
        elif s.inverted:
            value = not value
        elif isinstance(s.default, tuple):
            value = tuple(value)
        *outer, name = s.path  # a nested field's flags fill a mapping, which HESNRConfig checks and builds
        target = values
        for part in outer:
            target = target.setdefault(part, {})
        target[name] = value
    return HESNRConfig(**values)


def dest_of(flag: str) -> str:
    """argparse's attribute for ``flag`` (``--hesnr-k`` -> ``hesnr_k``)."""
    return flag.lstrip("-").replace("-", "_")


