"""``--hf`` / ``--vllm`` MODEL_DIR checked before anything slow (no torch, no dataset, no weights).

A missing path, a file, a folder without ``config.json``, a ``config.json`` that is not a JSON object,
and (``--hf``) a configuration the installed transformers cannot read each get one line naming the
path and what is wrong.  The first checks import nothing beyond the standard library, so the line
comes before torch has loaded.
"""
from __future__ import annotations

import json
import os

from .errors import ScoreError

#: ``--dtype`` values of ``--hf`` (torch dtypes of the weights and the forward).
HF_DTYPES = ("float32", "bfloat16", "float16", "float64")


def check_model_dir(path: str, flag: str) -> dict:
    """The parsed ``config.json`` of ``path``; :class:`ScoreError` for anything that cannot be a checkpoint."""
    where = f"{flag} {path}"
    if not os.path.exists(path):
        raise ScoreError(f"{where}: no such directory")
    if not os.path.isdir(path):
        raise ScoreError(f"{where}: not a directory (give the checkpoint's folder, with config.json)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        hint = ""
        if os.path.isfile(os.path.join(path, "model.pt")):   # a `hesnr demo` training checkpoint
            name = os.path.basename(os.path.normpath(path))
            hint = f"; a `hesnr demo` checkpoint: its Hugging Face export is <demo output-dir>/hf/{name}"
        raise ScoreError(f"{where}: no config.json in it (not a Hugging Face checkpoint folder){hint}")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScoreError(f"{where}: cannot read {cfg_path} ({exc})") from None
    if not isinstance(cfg, dict):
        raise ScoreError(f"{where}: {cfg_path} is not a JSON object")
    return cfg


def check_transformers_config(path: str, flag: str) -> None:
    """The installed transformers reads ``path``'s configuration (a known ``model_type``, valid fields)."""
    try:
        import transformers
        from transformers import AutoConfig
    except ImportError as exc:
        raise ScoreError(f"{flag} needs transformers (pip install 'megatron-hesnr[score]'): {exc}") from None
    try:
        AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises ValueError, KeyError, OSError, ... for a config it cannot use
        msg = " ".join(str(exc).split())[:300]
        raise ScoreError(f"{flag} {path}: transformers {transformers.__version__} cannot load this model's "
                         f"configuration ({type(exc).__name__}: {msg})") from None


def check_hf_dtype(dtype: str) -> None:
    if dtype not in HF_DTYPES:
        raise ScoreError(f"--dtype {dtype}: --hf takes one of {', '.join(HF_DTYPES)}")
