"""The package's layers, as docs/design.md describes them: a shared evaluation, thin front ends."""
from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

from conftest import REPO


def test_bridge_adapter_uses_the_shared_evaluator_not_the_megatron_lm_hook():
    """bridge/ drives the shared evaluator with its own context: no Megatron-LM hook, no imitation of its args."""
    for module in sorted((REPO / "megatron_hesnr" / "bridge").glob("*.py")):
        text = module.read_text(encoding="utf-8")
        for banned in ("megatron_lm", "MegatronHESNRHook", "SimpleNamespace"):
            assert banned not in text, f"bridge/{module.name} uses {banned}"
    assert "HESNREvaluator" in (REPO / "megatron_hesnr" / "bridge" / "callback.py").read_text(encoding="utf-8")


def test_demo_drives_the_shared_evaluator():
    """demo/ evaluates through HESNREvaluator: records, the reduction and the pass are the evaluator's,
    not a loop of its own (its cross-check scores windows by hand, but reduces and writes nothing)."""
    demo = {m.name: m.read_text(encoding="utf-8") for m in (REPO / "megatron_hesnr" / "demo").glob("*.py")}
    assert "HESNREvaluator(" in demo["evaluation.py"] and ".evaluate(model, ctx)" in demo["evaluation.py"]
    for name, text in demo.items():
        for banned in ("make_record", "append_records", "reduce_metrics", "reduce_on_last_stage", "HESNRPass"):
            assert banned not in text, f"demo/{name} uses {banned}"


def _imports(module: Path) -> list[str]:
    """Every module ``module`` imports, relative imports resolved against the package."""
    package = module.relative_to(REPO).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join((list(package[:len(package) - node.level + 1]) if node.level else [])
                            + ([node.module] if node.module else []))
            out += [f"{base}.{a.name}" for a in node.names]
    return out


def test_shared_evaluation_reads_no_front_end_and_no_megatron_globals():
    """evaluation/ is what every front end shares: it imports neither front end, nor
    megatron.training, nor megatron-core's global parallel_state (the topology is handed in)."""
    modules = sorted((REPO / "megatron_hesnr" / "evaluation").glob("*.py"))
    assert len(modules) >= 10
    for module in modules:
        for name in _imports(module):
            assert not name.startswith(("megatron_hesnr.megatron_lm", "megatron_hesnr.bridge", "megatron_hesnr.demo",
                                        "megatron.training")), f"evaluation/{module.name} imports {name}"
            assert "parallel_state" not in name, f"evaluation/{module.name} imports {name}"


def test_old_integration_path_still_starts_a_patched_checkout():
    """A checkout patched before the split imports ``megatron_hesnr.integration.hook``: it warns and
    gives the same hook class (and the old entry module the same entry function)."""
    for name in [m for m in sys.modules if m.startswith("megatron_hesnr.integration")]:
        del sys.modules[name]
    with pytest.warns(DeprecationWarning, match="megatron_hesnr.megatron_lm"):
        old = importlib.import_module("megatron_hesnr.integration.hook")
    from megatron_hesnr.megatron_lm.entry import run_megatron_entry
    from megatron_hesnr.megatron_lm.hook import MegatronHESNRHook

    assert old.MegatronHESNRHook is MegatronHESNRHook
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module("megatron_hesnr.integration.entry").run_megatron_entry is run_megatron_entry
    for patch in sorted((REPO / "patches").glob("*.patch")):
        assert "megatron_hesnr.integration" not in patch.read_text(encoding="utf-8"), patch.name


def test_scoring_front_end_imports_only_the_shared_layers():
    """scoring/ (``hesnr score``) sits beside megatron_lm/ and bridge/: it imports evaluation/ and the layers
    below it, never another front end, the analysis, megatron.training or parallel_state; its records are
    the evaluation's (make_record), its windows the evaluation's planner."""
    modules = sorted((REPO / "megatron_hesnr" / "scoring").glob("*.py"))
    assert len(modules) >= 8
    for module in modules:
        for name in _imports(module):
            assert not name.startswith(("megatron_hesnr.megatron_lm", "megatron_hesnr.bridge", "megatron_hesnr.demo",
                                        "megatron_hesnr.integration", "megatron_hesnr.analysis",
                                        "megatron.training")), f"scoring/{module.name} imports {name}"
            assert "parallel_state" not in name, f"scoring/{module.name} imports {name}"
    texts = {m.name: m.read_text(encoding="utf-8") for m in modules}
    assert "make_record(" in texts["driver.py"] and "plan_set(" in texts["sets.py"]
    assert "def plan_windows" not in "".join(texts.values())
