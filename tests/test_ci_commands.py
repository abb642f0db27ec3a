"""README.md shows the commands CI runs: the first leg verbatim, the second leg's tests."""
from __future__ import annotations

import ast
import re

from conftest import REPO


def _readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_first_leg_is_the_readme_test_command():
    readme_test = _readme_blocks()[1].strip()  # the second block: "Run the tests"
    assert readme_test.endswith("python -m pytest -q tests"), readme_test
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install, _, pytest_cmd = readme_test.rpartition(" && ")
    assert install in ci and f"    {pytest_cmd}\n" in ci


def test_second_leg_runs_the_tests_the_readme_names():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    (ci_line,) = re.findall(r'"\$vpy" -m pytest -q (.*)', ci)
    readme = [line for block in _readme_blocks() for line in block.splitlines()
              if line.startswith("python -m pytest -q tests/test_integration_")]
    assert readme == [f"python -m pytest -q {ci_line}"], (readme, ci_line)
    for pattern in ci_line.split():
        assert list(REPO.glob(pattern)), f"{pattern} matches no test file"


def test_benchmarks_do_not_import_the_tests():
    """Benchmark scripts run from a checkout without tests/ on the path: no helper of the suite is used."""
    
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        assert '"tests"' not in text and "'tests'" not in text, f"{script.name} puts tests/ on sys.path"
        test_modules = {p.stem for p in (REPO / "tests").glob("*.py")}
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & test_modules, f"{script.name} imports {names}"
