"""The prepared sets a scoring run reads: opened, checked against the model's tokenizer, windowed.

Windows come from the evaluation pass's own planner (:func:`~megatron_hesnr.evaluation.eval_pass.plan_set`,
:mod:`~megatron_hesnr.evaluation.windows`), so with the same ``--seq-length`` and stride every target is
scored with the same context as in a Megatron run.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from ..evaluation.config import EvalDataset, HESNRConfig
from ..evaluation.eval_pass import WindowedSet, plan_set
from ..evaluation.evaluator import dataset_vocab_size, open_prepared_dataset
from ..evaluation.windows import Window
from .errors import ScoreError, ScoreInterrupted  # noqa: F401  (re-exported: the scoring modules import them from here)


#: Text whose encoding is compared when two tokenizer files differ byte-wise.
PROBE_TEXT = ("def f(x):\n    return x ** 2  # ünïcödé, 中文, emoji 🙂\n\tdiff --git a/setup.py b/setup.py\n"
              "$ pytest -q tests/ && echo 'OK' <|EOT|> <think>\n")


@dataclass
class ScoreSet:
    """One prepared set; :meth:`plan` cuts it into windows once the context is known."""

    spec: EvalDataset
    dataset: object
    vocab_size: int
    manifest: dict
    wset: WindowedSet | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def plan(self, config: HESNRConfig, seq_length: int) -> "ScoreSet":
        stride = config.stride_for(seq_length) if config.long_policy == "window" else None
        if stride is not None and not 1 <= stride <= seq_length:
            raise ScoreError(f"--window-stride {stride}: must lie in [1, --seq-length {seq_length}]")
        self.wset = plan_set(self.name, self.dataset, seq_length, config.long_policy, stride,
                             skip_empty=config.skip_empty_windows)
        return self

    def trajectory_windows(self) -> dict[int, list[Window]]:
        """Trajectory index -> its windows (in order), only trajectories with a window."""
        out: dict[int, list[Window]] = {}
        for doc, w in self.wset.windows:
            out.setdefault(doc, []).append(w)
        return out


def open_sets(config: HESNRConfig) -> list[ScoreSet]:
    """Open and verify every set of ``config.datasets`` (the ``PREFIX`` arguments)."""
    out = []
    for spec in config.datasets:
        try:
            ds = open_prepared_dataset(spec.prefix)
            vocab = dataset_vocab_size(ds, spec.prefix)
        except ValueError as exc:
            raise ScoreError(f"PREFIX {spec.prefix}: {str(exc).replace('--hesnr-data-path: ', '')}") from None
        out.append(ScoreSet(spec, ds, vocab, dict(ds.manifest)))
    return out


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tokenizer_file(model_dir: str) -> str | None:
    path = os.path.join(model_dir, "tokenizer.json")
    return path if os.path.isfile(path) else None


def load_tokenizer_file(path: str, what: str):
    """``tokenizers.Tokenizer`` of ``path``; a file it cannot read is a :class:`ScoreError` naming ``what``."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
        raise ScoreError(f"{what}: tokenizers cannot read {path} ({' '.join(str(exc).split())[:200]})") from None


def _fingerprint(path: str, what: str) -> tuple:
    """What decides token ids: the vocabulary with added tokens and the encoding of a probe text."""
    tok = load_tokenizer_file(path, what)
    return (tuple(sorted(tok.get_vocab(with_added_tokens=True).items())),
            tuple(tok.encode(PROBE_TEXT, add_special_tokens=False).ids))


def check_model_tokenizer(sets: list[ScoreSet], model_dir: str, flag: str, model_vocab: int | None) -> None:
    """Refuse a model whose tokenizer is not the one the sets were prepared with.

    Equal ``tokenizer.json`` bytes pass at once; otherwise both files are loaded and their vocabularies
    (with added tokens) and the ids of a probe text compared.  ``model_vocab``: the model's output size,
    which must hold every id of the sets' tokenizer.
    """
    mine = tokenizer_file(model_dir)
    for s in sets:
        info = s.manifest.get("tokenizer") or {}
        theirs, sha = info.get("path"), info.get("sha256")
        if model_vocab is not None and s.vocab_size > model_vocab:
            raise ScoreError(f"{flag} {model_dir}: the model's vocabulary has {model_vocab} ids but set {s.name!r} "
                             f"was prepared with a {s.vocab_size}-id tokenizer ({theirs})")
        if mine is None:
            raise ScoreError(f"{flag} {model_dir}: no tokenizer.json, so it cannot be checked against the tokenizer "
                             f"set {s.name!r} was prepared with ({theirs})")
        if sha and _sha256(mine) == sha:
            continue
        if not theirs or not os.path.isfile(theirs) or (sha and _sha256(theirs) != sha):
            raise ScoreError(f"{flag} {model_dir}: its tokenizer {mine} differs byte-wise from the one set {s.name!r} "
                             f"was prepared with ({theirs}, sha256 {sha}), and that file is not here to compare "
                             "vocabularies")
        if _fingerprint(mine, f"{flag} {model_dir}") != _fingerprint(theirs, f"set {s.name!r}'s tokenizer"):
            raise ScoreError(f"{flag} {model_dir}: its tokenizer {mine} differs from the one set {s.name!r} was "
                             f"prepared with ({theirs}): other token ids")


def check_server_tokenizer(sets: list[ScoreSet], tokenize, where: str) -> None:
    """The server's ``/tokenize`` of the probe text against the sets' tokenizer (when its file is here).
    ``tokenize(text) -> list[int] | None`` (``None``: the server has no tokenize endpoint; not checked)."""
    from tokenizers import Tokenizer

    got = None
    for s in sets:
        info = s.manifest.get("tokenizer") or {}
        theirs = info.get("path")
        if not theirs or not os.path.isfile(theirs):
            continue
        if got is None:
            got = tokenize(PROBE_TEXT)
            if got is None:
                return
        want = Tokenizer.from_file(theirs).encode(PROBE_TEXT, add_special_tokens=False).ids
        if list(got) != list(want):
            raise ScoreError(f"{where}: the served model's tokenizer differs from the one set {s.name!r} was "
                             f"prepared with ({theirs}): a probe text gets other token ids")


def window_targets(tokens: np.ndarray, mask: np.ndarray, w: Window) -> tuple[np.ndarray, np.ndarray]:
    """``(prompt, score_mask)``: the window's tokens ``start .. end-1`` (the engine scores each from the
    ones before it) and, per target ``start+1 .. end-1``, its category when this window scores it, else 0."""
    prompt = np.asarray(tokens[w.start:w.end], dtype=np.int64)
    score = np.asarray(mask[w.start + 1:w.end], dtype=np.int64).copy()
    score[:w.score_from - (w.start + 1)] = 0
    return prompt, score


def manifest_digest(s: ScoreSet) -> str:
    """Identifies the set's contents (for the progress file)."""
    m = s.manifest
    return hashlib.sha256(json.dumps([m.get("binding_sha256"), m.get("lengths_sha256")]).encode()).hexdigest()[:16]
