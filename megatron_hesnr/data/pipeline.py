"""One trajectory file -> token ids + masks, and the (optionally parallel) loop over files.

Every file is processed independently: a file that cannot be read becomes one
``FileResult`` with ``status="error"`` and a reason; the others go on.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import multiprocessing as mp
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .filters import FilterConfig
from .readers import SUFFIXES, Limits, ReadError, read_trajectories
from .render import TEMPLATES, TOOL_STYLES, render
from .segments import Category
from .tokenize_mask import encode_and_mask

log = logging.getLogger(__name__)

CATEGORY_NAMES = {"action": Category.ACTION, "thought": Category.THOUGHT, "observation": Category.OBSERVATION}


@dataclass(frozen=True)
class PrepareConfig:
    template: str = "chatml"
    tool_style: str = "xml"
    filters: FilterConfig = field(default_factory=FilterConfig)
    categories: tuple = (Category.ACTION,)
    add_special_tokens: bool = True
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"--template: unknown template {self.template!r} (choose from {sorted(TEMPLATES)})")
        if self.tool_style not in TOOL_STYLES:
            raise ValueError(f"--tool-style: unknown style {self.tool_style!r} (choose from {TOOL_STYLES})")
        if Category.ACTION not in self.categories:
            raise ValueError("--categories must include 'action'")


@dataclass
class Doc:
    source: str
    ids: np.ndarray
    mask: np.ndarray
    num_actions: int
    actions_scored: int


@dataclass
class FileResult:
    path: str
    status: str                    # ok / partial (some JSONL lines failed) / error
    format: str = ""
    reason: str = ""               # why the file (status error) failed
    line_errors: list[str] = field(default_factory=list)
    docs: list[Doc] = field(default_factory=list)


def load_tokenizer(path: str):
    """HF ``tokenizers`` tokenizer from a ``tokenizer.json`` file or a folder holding one."""
    from tokenizers import Tokenizer

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"--tokenizer: {file} not found (give a tokenizer.json or its folder)")
    try:
        return Tokenizer.from_file(file)
    except Exception as exc:  # tokenizers raises a generic Exception on bad files
        raise ValueError(f"--tokenizer: {file} is not a HF tokenizers tokenizer.json ({exc})") from None


def tokenizer_info(path: str, tokenizer) -> dict:
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    with open(file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"path": os.path.abspath(file), "sha256": digest,
            "vocab_size": int(tokenizer.get_vocab_size(with_added_tokens=True))}


def _special_kind(path: str) -> str | None:
    """``None`` for a regular file (after symlinks), else what it is (a FIFO would block a read)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"))
    return next((f"not a regular file ({name}), skipped" for test, name in kinds if test(mode)),
                "not a regular file, skipped")


def expand_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Files, folders (searched recursively for trajectory suffixes) and globs -> (files, problems).

    ``problems`` are ``"PATH: reason"`` lines: a missing path, a folder that cannot be
    listed, a FIFO / socket / device (never opened: reading one could block forever).
    """
    files, problems = [], []

    def unlistable(exc: OSError) -> None:
        problems.append(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")

    def keep(path: str) -> None:
        why = _special_kind(path)
        if why is None:
            files.append(path)
        else:
            problems.append(f"{path}: {why}")

    for item in inputs:
        if os.path.isdir(item):
            for root, _dirs, names in os.walk(item, onerror=unlistable):
                # Skip manifests of earlier `hesnr prepare` runs written into the same folder.
                for n in names:
                    if n.endswith(SUFFIXES) and not n.endswith("_manifest.json"):
                        keep(os.path.join(root, n))
        elif os.path.exists(item):
            keep(item)
        else:
            hits = [h for h in glob.glob(item, recursive=True) if not os.path.isdir(h)]
            for h in hits:
                keep(h)
            if not hits:
                problems.append(f"{item}: no such file, folder or glob match")
    seen, unique = set(), []
    for f in sorted(files):
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, problems


def _read_render(path: str, cfg: PrepareConfig):
    """-> (FileResult without docs, rendered trajectories); status error on failure."""
    try:
        read = read_trajectories(path, cfg.limits)
    except ReadError as exc:
        return FileResult(path, "error", reason=str(exc)), []
    except OSError as exc:
        return FileResult(path, "error", reason=f"cannot open ({exc.strerror or exc})"), []
    except (RecursionError, MemoryError) as exc:
        return FileResult(path, "error", reason=f"input too deeply nested or too large ({type(exc).__name__})"), []
    result = FileResult(path, "ok", read.format, line_errors=list(read.errors))
    try:
        rendered = [render(t, cfg.template, cfg.tool_style) for t in read.trajectories]
    except (RecursionError, MemoryError) as exc:
        return FileResult(path, "error", read.format, reason=f"too large or deeply nested to render ({type(exc).__name__})"), []
    return result, rendered


def _finish(result: FileResult, rendered, encoded) -> FileResult:
    for r, (ids, mask, scored) in zip(rendered, encoded):
        if len(ids) == 0:
            result.line_errors.append(f"{r.source}: renders to no tokens")
            continue
        result.docs.append(Doc(r.source, ids, mask, r.num_actions, scored))
    if not result.docs:
        reasons = "; ".join(result.line_errors[:3]) or "no trajectory"
        return FileResult(result.path, "error", result.format, reason=f"nothing usable ({reasons})",
                          line_errors=result.line_errors)
    if result.line_errors:
        result.status = "partial"
    return result


def _stage(paths: list[str], cfg: PrepareConfig):
    return [_read_render(p, cfg) for p in paths]


def _complete(staged, tokenizer, cfg: PrepareConfig) -> list[FileResult]:
    flat = [r for result, rendered in staged if result.status != "error" for r in rendered]
    encoded = iter(encode_and_mask(tokenizer, flat, cfg.filters, cfg.categories, cfg.add_special_tokens))
    out = []
    for result, rendered in staged:
        if result.status == "error":
            out.append(result)
        else:
            out.append(_finish(result, rendered, [next(encoded) for _ in rendered]))
    return out


def process_files(paths: list[str], tokenizer, cfg: PrepareConfig) -> list[FileResult]:
    """Read and render every file, tokenize all their texts in one ``encode_batch`` call
    (the tokenizer's thread pool then has enough work), then build the masks."""
    return _complete(_stage(paths, cfg), tokenizer, cfg)


def process_file(path: str, tokenizer, cfg: PrepareConfig) -> FileResult:
    return process_files([path], tokenizer, cfg)[0]


# ------------------------------------------------------------------ parallel

_WORKER: dict = {}


def _init_worker(tokenizer_path: str, cfg: PrepareConfig) -> None:
    # One process per core already: the tokenizer's own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["tokenizer"] = load_tokenizer(tokenizer_path)
    _WORKER["cfg"] = cfg


def _work(paths: list[str]) -> list[FileResult]:
    return process_files(paths, _WORKER["tokenizer"], _WORKER["cfg"])


def _batches(paths: list[str], size: int):
    for i in range(0, len(paths), size):
        yield paths[i:i + size]


def iter_results(paths: list[str], tokenizer_path: str, cfg: PrepareConfig, workers: int = 1, tokenizer=None,
                 batch_files: int = 16):
    """Yield one :class:`FileResult` per path, in input order.

    ``workers <= 1``: in this process, ``batch_files`` files per ``encode_batch`` call
    (the tokenizer uses its own threads). ``workers > 1``: that many processes, each
    given batches of files and tokenizing single-threaded.
    """
    if workers <= 1 or len(paths) <= 1:
        tok = tokenizer or load_tokenizer(tokenizer_path)
        # encode_batch releases the GIL: tokenize batch k in a thread while this thread
        # reads and renders batch k+1 (and the caller writes the results of batch k-1).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for batch in _batches(paths, batch_files):
                staged = _stage(batch, cfg)
                nxt = pool.submit(_complete, staged, tok, cfg)
                if pending is not None:
                    yield from pending.result()
                pending = nxt
            if pending is not None:
                yield from pending.result()
        return
    # Small batches keep all workers busy and the progress bar moving.
    size = max(1, min(batch_files, len(paths) // (4 * workers)))
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path, cfg)) as pool:
        for results in pool.imap(_work, list(_batches(paths, size))):
            yield from results
