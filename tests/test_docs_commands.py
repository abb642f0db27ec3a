"""The documented shell commands run, and the install commands are the ones CI runs.

Every ```bash block of README.md and docs/*.md runs here (Python 3.11 leg, CPU), in order per
file, in a scratch folder that mirrors the repository, unless the line just above it is
``<!-- doc-test: needs WHAT -->`` (WHAT in gpu, slurm, py312, vllm, network, long): then it is
skipped with that reason. ``pip install`` commands are never run; they are checked against
``.ci/run`` (see docs/testing.md).
"""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO

NEEDS = ("gpu", "slurm", "py312", "vllm", "network", "long")
MARK = re.compile(r"<!-- doc-test: needs (" + "|".join(NEEDS) + r") -->")
BLOCK_TIMEOUT_S = 300   # docs/scoring.md's first block runs `hesnr demo --quick` and scores its checkpoint
INSTALL = re.compile(r"\bpip install\b")
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


@dataclass
class Block:
    path: Path
    line: int            # 1-based line of the opening fence
    text: str
    needs: str | None
    commands: list[str] = field(default_factory=list)   # logical lines, continuations joined

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"

    def segments(self) -> list[str]:
        return [seg.strip() for cmd in self.commands for seg in cmd.split(" && ")]

    def installs(self) -> list[str]:
        return [s for s in self.segments() if INSTALL.search(s)]


def parse(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```") and fence != "```":
            info, start = fence[3:].strip(), i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if info == "bash":
                prev = lines[start - 1].strip() if start else ""
                m = MARK.fullmatch(prev)
                text = "\n".join(body) + "\n"
                blocks.append(Block(path, start + 1, text, m.group(1) if m else None,
                                    [c.strip() for c in re.sub(r"\\\n\s*", " ", text).splitlines() if c.strip()]))
        elif fence == "```":  # a plain fence opens a block too
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
        i += 1
    return blocks


ALL = [b for p in DOCS for b in parse(p)]


def _ci_text() -> str:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    # the Python 3.12 leg runs the same commands through its venv's python, quietly
    return re.sub(r'(?:"\$vpy"|python) -m pip install -q ', "python -m pip install ", ci)


def _extra_requirements(extra: str) -> set[str]:
    reqs = importlib.metadata.requires("megatron-hesnr") or []
    return {r.split(";")[0].replace(" ", "") for r in reqs if f'extra == "{extra}"' in r}


# ----------------------------------------------------------------------------- structure
def test_markers_are_well_formed_and_placed():
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if "doc-test" in line and line.startswith("<!--"):
                assert MARK.fullmatch(line.strip()), f"{path.name}:{n + 1}: malformed marker {line!r}"
                assert n + 1 < len(lines) and lines[n + 1].strip() == "```bash", \
                    f"{path.name}:{n + 1}: a marker must be the line just above a ```bash block"


def test_docs_do_not_point_at_the_shared_folder():
    for path in DOCS:
        assert "../shared" not in path.read_text(encoding="utf-8"), path.name


def test_readme_starts_with_the_demo_and_the_test_command():
    readme = parse(REPO / "README.md")
    demo, tests = readme[0].commands, readme[1].commands
    assert demo == ["python -m pip install torch==2.13.0 && python -m pip install -e '.[demo]' && hesnr demo"]
    assert len(tests) == 1 and tests[0].endswith(" && python -m pytest -q tests")


def test_first_leg_is_the_readme_test_command():
    (readme_test,) = parse(REPO / "README.md")[1].commands
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install, _, pytest_cmd = readme_test.rpartition(" && ")
    assert install in ci and f"    {pytest_cmd}\n" in ci
    testing = [b for b in parse(REPO / "docs" / "testing.md") if b.commands == [readme_test]]
    assert testing, "docs/testing.md shows the README's test command"


def test_second_leg_runs_the_tests_the_docs_name():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    (ci_line,) = re.findall(r'"\$vpy" -m pytest -q (.*)', ci)
    documented = [c for b in ALL for c in b.commands if c.startswith("python -m pytest -q tests/test_integration_")]
    assert documented == [f"python -m pytest -q {ci_line}"], (documented, ci_line)
    for pattern in ci_line.split():
        assert list(REPO.glob(pattern)), f"{pattern} matches no test file"


def test_install_commands_are_the_ones_ci_runs():
    """Installs are never run here: each is one .ci/run runs, or the demo's extra, which CI's
    test extra contains; other installs (a tokenizer from PyPI) sit in `needs network` blocks."""
    ci = _ci_text()
    test_reqs = _extra_requirements("test")
    seen = 0
    for block in ALL:
        for seg in block.installs():
            seen += 1
            if block.needs == "network" or seg in ci:
                continue
            m = re.fullmatch(r"python -m pip install -e '\.\[(\w+)\]'", seg)
            assert m, f"{block.id}: {seg!r} is not what .ci/run installs (mark the block `needs network`)"
            missing = _extra_requirements(m.group(1)) - test_reqs
            assert not missing, f"{block.id}: the {m.group(1)} extra needs {missing}, which CI's test extra lacks"
    assert seen >= 7


def test_benchmarks_do_not_import_the_tests():
    """Benchmark scripts run from a checkout without tests/ on the path: no helper of the suite is used."""
    test_modules = {p.stem for p in (REPO / "tests").glob("*.py")}
    for script in sorted((REPO / "benchmarks").glob("*.py")):
        text = script.read_text(encoding="utf-8")
        assert '"tests"' not in text and "'tests'" not in text, f"{script.name} puts tests/ on sys.path"
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & test_modules, f"{script.name} imports {names}"


def test_worked_example_is_what_the_records_give():
    """docs/report.md's worked example (table, compare output, derived numbers) is generated."""
    import importlib.util

    # by path, under its own name: another `generate` module (the demo's) may be imported already
    spec = importlib.util.spec_from_file_location("hesnr_worked_example", REPO / "docs" / "worked-example" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    text = (REPO / "docs" / "report.md").read_text(encoding="utf-8")
    assert generate.current_section(text) == generate.render(), \
        "stale: run python docs/worked-example/generate.py --write"


# ----------------------------------------------------------------------------- running
_SCRATCH: list[Path] = []
_DONE: set[str] = set()   # commands that already ran here (README repeats the guides' first commands)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_STATUS_BEFORE: list[str] = []   # the checkout's `git status --porcelain` before the first block


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def _scratch(tmp_path_factory) -> Path:
    """One folder for all documentation files, the repository's top-level entries linked in:
    outputs (data/, report-example/) land there, never in the checkout."""
    if not _SCRATCH:
        status = _git("status", "--porcelain", "--untracked-files=all")
        _STATUS_BEFORE.append(status.stdout if status.returncode == 0 else "")
        d = tmp_path_factory.mktemp("docs_scratch")
        for entry in REPO.iterdir():
            if entry.name != ".git" and not entry.name.startswith(".pytest"):
                (d / entry.name).symlink_to(entry)
        _SCRATCH.append(d)
    return _SCRATCH[0]


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_documented_block_runs(block, tmp_path_factory):
    if block.needs:
        pytest.skip(f"needs {block.needs}")
    assert not block.installs(), f"{block.id}: installs must sit in a marked block"
    cwd = _scratch(tmp_path_factory)
    # A command that already ran in this folder (the same text, earlier in README.md or a guide)
    # is not run twice; assignments always run (later commands of the block use them).
    script = "\n".join(c for c in block.commands if _ASSIGNMENT.match(c) or c not in _DONE) \
        if "<<" not in block.text else block.text
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg")
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    out = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"{block.id} exited {proc.returncode}:\n{script}\n---\n{out}"
    _DONE.update(block.commands)
    print(f"{block.id}: {time.perf_counter() - t0:.1f} s")


def test_documented_blocks_leave_the_checkout_clean():
    """The blocks wrote nothing into the checkout, and what they write beside it (``data/``,
    ``report-example/``, ``doc0.txt``...) is ignored by git when a reader runs the guides in a
    checkout."""
    if not _SCRATCH:
        pytest.skip("no documented block ran in this session")
    if not _STATUS_BEFORE[0] and _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout")
    after = _git("status", "--porcelain", "--untracked-files=all").stdout
    assert after == _STATUS_BEFORE[0], f"the documented blocks changed the checkout:\n{after}"
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in _SCRATCH[0].iterdir() if not p.is_symlink())
    assert written, "the blocks wrote no output at all: nothing was checked"
    shown = [name for name in written if _git("check-ignore", "-q", name).returncode != 0]
    assert not shown, f"outputs of the guides that `git status` would show: {shown} (add them to .gitignore)"
