"""The demo's inputs: code text present on every machine, and trajectories.

* Code: Python's own standard-library sources (``sysconfig.get_paths()['stdlib']``),
  a bounded, deterministic selection (the same files on the same Python version).
* Trajectories: the set shipped with the package (``assets/demo/trajectories.jsonl``,
  written for this project by ``examples/demo_trajectories/generate.py``) or the
  user's own files, split into a training part and a held-out evaluation part.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: Directories of the standard library that are tests, data or platform glue.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo",
              "__pycache__", "ensurepip", "config-3", "tkinter", "pydoc_data", "encodings"}


def bundled_trajectories() -> Path:
    """Path of the trajectory set shipped with the package."""
    path = Path(__file__).resolve().parent.parent / "assets" / "demo" / "trajectories.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"the bundled demo trajectories are missing: {path} (broken install?)")
    return path


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_code(max_bytes: int, max_file_bytes: int = 64_000, root: Path | None = None) -> list[str]:
    """Source texts of standard-library modules, about ``max_bytes`` in total.

    Files are taken in the order of a hash of their relative path (a spread over
    the library rather than its alphabetically first package); files larger than
    ``max_file_bytes`` are skipped so that no single module dominates.
    """
    root = root or stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"Python's standard library was not found at {root}")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                files.append((hashlib.sha1(rel.encode()).hexdigest(), path))
    texts, total = [], 0
    for _, path in sorted(files):
        if total >= max_bytes:
            break
        try:
            size = path.stat().st_size
            if size == 0 or size > max_file_bytes:
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        total += len(text.encode("utf-8"))
    if not texts:
        raise FileNotFoundError(
            f"no Python sources under {root}: this Python ships only byte code; pass code text another way"
        )
    log.info("standard-library code: %d files, %.1f MB from %s", len(texts), total / 1e6, root)
    return texts


@dataclass
class TrajectorySplit:
    train: list[Path]
    """Files (or JSONL parts) the model trains on."""
    eval: list[Path]
    """Held-out files the metric is evaluated on."""
    num_train: int
    num_eval: int
    held_out: bool
    """False when there were too few trajectories to hold any out (eval = train)."""


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def split_trajectories(paths: list[Path], out_dir: Path, eval_every: int = 3) -> TrajectorySplit:
    """Hold out every ``eval_every``-th trajectory for evaluation, deterministically.

    JSONL files are split by line (one trajectory per line) into
    ``out_dir/{train,eval}.jsonl``; any other file (``.traj``, ``.traj.json``) is one
    trajectory and goes whole to one side. The files are only copied, never parsed
    here: reading them is ``hesnr prepare``'s job, with its error reporting.
    """
    if eval_every < 2:
        raise ValueError(f"eval_every must be >= 2, got {eval_every}")
    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[tuple[str, object]] = []  # ("line", text) or ("file", path)
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"--trajectories: {path} does not exist")
        if path.is_dir():
            # The same files `hesnr prepare` would take from this folder (its suffixes).
            from ..data.pipeline import SUFFIXES

            children = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not children:
                raise FileNotFoundError(f"--trajectories: directory {path} has no trajectory files ({', '.join(SUFFIXES)})")
            for child in children:
                items.extend(_items_of(child))
        else:
            items.extend(_items_of(path))
    if not items:
        raise ValueError(f"--trajectories: no trajectories found in {', '.join(map(str, paths))}")
    held_out = len(items) >= 2
    train_items = [it for i, it in enumerate(items) if not held_out or i % eval_every != eval_every - 1]
    eval_items = [it for i, it in enumerate(items) if not held_out or i % eval_every == eval_every - 1]
    if held_out and not eval_items:
        eval_items, train_items = train_items[-1:], train_items[:-1]
    return TrajectorySplit(
        train=_write_side(train_items, out_dir / "train"),
        eval=_write_side(eval_items, out_dir / "eval"),
        num_train=len(train_items),
        num_eval=len(eval_items),
        held_out=held_out,
    )


def _items_of(path: Path) -> list[tuple[str, object]]:
    if not _is_jsonl(path):
        return [("file", path)]
    with open(path, "rb") as f:
        lines = [line for line in f.read().split(b"\n") if line.strip()]
    return [("line", line) for line in lines]


def _write_side(items, side_dir: Path) -> list[Path]:
    side_dir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    lines = [it for kind, it in items if kind == "line"]
    if lines:
        path = side_dir / "trajectories.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        out.append(path)
    for i, (kind, src) in enumerate(items):
        if kind == "file":
            dst = side_dir / f"{i:05d}_{src.name}"
            dst.write_bytes(src.read_bytes())
            out.append(dst)
    return out


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)


def trajectory_strings(paths: list[Path]) -> list[str]:
    """Every string value in the trajectory files (for tokenizer training only).

    Tool-call arguments are JSON inside a string; they are decoded once more so that
    the tokenizer learns the code in them rather than its escaped form.  Unreadable
    files are skipped here: ``hesnr prepare`` reports them.
    """
    import json

    out: list[str] = []
    for path in paths:
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs = raw.splitlines() if _is_jsonl(Path(path)) else [raw]
        for doc in docs:
            try:
                obj = json.loads(doc)
            except ValueError:
                continue
            for s in _strings(obj):
                if s[:1] in "{[":
                    try:
                        out.extend(_strings(json.loads(s)))
                        continue
                    except ValueError:
                        pass
                out.append(s)
    return out
