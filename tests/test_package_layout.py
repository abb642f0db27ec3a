"""The package's layers, as docs/design.md describes them: a shared evaluation, thin front ends."""
from __future__ import annotations

import ast
from pathlib import Path

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


def test_no_alias_package_and_a_small_root():
    """The metric core is ``metric/``; the root keeps ``__init__.py``, ``cli.py`` and at most three other
    modules; no package only re-exports old import paths (the project has never been released)."""
    pkg = REPO / "megatron_hesnr"
    assert not (pkg / "integration").exists()
    root = sorted(m.name for m in pkg.glob("*.py") if m.name not in ("__init__.py", "cli.py"))
    assert len(root) <= 3, root
    metric = {m.stem for m in (pkg / "metric").glob("*.py")}
    for name in ("token_stats", "shard_stats", "tp_merge", "topk_stats", "accumulator", "trajectory_sums",
                 "state_layout", "state_check", "stderr", "reduction", "vocab", "defaults"):
        assert name in metric, name
    assert (pkg / "metric" / "kernels" / "triton_shard_stats.py").is_file()
    for path in [*pkg.rglob("*.py"), *(REPO / "patches").glob("*.patch")]:
        assert "megatron_hesnr.integration" not in path.read_text(encoding="utf-8"), path


def test_metric_core_imports_no_layer_above_it():
    """metric/ is the lowest layer: it imports nothing of the package outside metric/."""
    for module in sorted((REPO / "megatron_hesnr" / "metric").rglob("*.py")):
        for name in _imports(module):
            if name.startswith("megatron_hesnr"):
                assert name.startswith("megatron_hesnr.metric"), f"{module.relative_to(REPO)} imports {name}"


def _module_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``: every import statement anywhere in the file
    (inside functions too: the lazy ones), ``importlib.import_module`` of a literal name and the
    modules named in a PEP 562 ``_LAZY`` table."""
    pkg = REPO / "megatron_hesnr"
    files = {}
    for f in pkg.rglob("*.py"):
        parts = f.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def known(name: str):
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]

        def absolute(level: int, module: str | None) -> str:
            base = package.split(".")
            return ".".join(base[:len(base) - level + 1] + ([module] if module else []))

        targets = []
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = absolute(node.level, node.module) if node.level else node.module
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                text = node.args[0].value
                dots = len(text) - len(text.lstrip("."))
                targets.append(absolute(dots, text[dots:]) if dots else text)
            elif (isinstance(node, ast.Assign) and any(getattr(x, "id", None) == "_LAZY" for x in node.targets)
                  and isinstance(node.value, ast.Dict)):  # the package's PEP 562 table {name: ".module"}
                for value in node.value.values:
                    dots = len(value.value) - len(value.value.lstrip("."))
                    targets.append(absolute(dots, value.value[dots:]))
        graph[name] = {m for t in targets if t.startswith("megatron_hesnr") and (m := known(t)) and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_sees_lazy_imports():
    """The check below can fail: a lazy import back is a cycle."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = _module_graph()
    assert "megatron_hesnr.metric.state_layout" in graph["megatron_hesnr.metric.accumulator"]
    assert "megatron_hesnr.metric.token_stats" in graph["megatron_hesnr"]  # the PEP 562 table, by name


def test_no_import_cycle_in_the_package():
    """No two modules of the package import each other, directly or round a loop, lazy imports included."""
    assert _cycles(_module_graph()) == []


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
