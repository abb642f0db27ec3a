"""``--hf`` / ``--vllm`` MODEL_DIR checked before anything slow (no torch, no dataset, no weights).

A missing path, a file, a folder without ``config.json``, a ``config.json`` that is not a JSON object,
and (``--hf``) a configuration the installed transformers cannot read each get one line naming the
path and what is wrong.  The first checks import nothing beyond the standard library, so the line
comes before torch has loaded.
"""
from __future__ import annotations

import importlib.util
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


def _known_model_type(model_type: str) -> bool | None:
    """Whether the installed transformers names ``model_type`` in its auto tables, read as text (importing
    transformers' configurations imports torch: seconds); ``None`` when that cannot be told, and then
    transformers itself decides. The tables' file has moved between versions: every module of
    ``models/auto`` is read, and the reading is trusted only if it finds a type every version knows."""
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    auto = os.path.join(list(spec.submodule_search_locations)[0], "models", "auto")
    try:
        text = "".join(open(os.path.join(auto, n), encoding="utf-8").read()
                       for n in sorted(os.listdir(auto)) if n.endswith(".py"))
    except (OSError, UnicodeDecodeError):
        return None
    quoted = lambda name: f'"{name}"' in text or f"'{name}'" in text  # noqa: E731
    if not (quoted("gpt2") and quoted("llama")):
        return None
    return quoted(model_type) or os.path.isdir(os.path.join(os.path.dirname(auto), model_type.replace("-", "_")))


def check_transformers_config(path: str, flag: str, cfg: dict | None = None) -> None:
    """The installed transformers reads ``path``'s configuration (a known ``model_type``, valid fields).
    An unknown ``model_type`` (``cfg``, the parsed config.json) is told before transformers and torch load."""
    model_type = (cfg or {}).get("model_type")
    if isinstance(model_type, str) and _known_model_type(model_type) is False:
        from importlib.metadata import version

        raise ScoreError(f"{flag} {path}: transformers {version('transformers')} cannot load this model: it does "
                         f"not know its model_type {model_type!r} (config.json; a newer transformers, or a "
                         "model that needs its own code)")
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
