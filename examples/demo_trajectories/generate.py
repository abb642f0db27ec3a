"""Generate the demo trajectories shipped with megatron-hesnr.

Each trajectory is a small bug-fix session of a tool-calling agent on one of the
repositories in ``bugs.py``, written as OpenAI-style chat JSONL (the shape of
SWE-smith / SWE-Gym trajectory datasets)::

    {"instance_id": ..., "messages": [system, user, assistant(tool_calls), tool, ...]}

The observations are real: the repository is written to a temporary directory and the
reproduction script, the tests and the diff are run there (temporary paths are
rewritten to ``/testbed`` and pytest timings to a fixed value, so that the output is
deterministic for a given Python version).  The wording of the agent's thoughts and
the choice between equivalent steps come from a seeded random generator.

Usage (from the repository root)::

    python examples/demo_trajectories/generate.py \\
        --output megatron_hesnr/assets/demo/trajectories.jsonl
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bugs import BUGS  # noqa: E402

ROOT = "/testbed"
SEED = 20260127

SYSTEM = """You are a software engineering agent working in a Linux shell on a Python repository checked out at /testbed.
You solve the issue the user reports by calling tools, one call per turn:
- bash: run a shell command (arguments: command)
- str_replace_editor: view, create or edit files (arguments: command = view | create | str_replace, path, and file_text, old_str, new_str, view_range as needed)
- submit: finish and submit the current changes (no arguments)
Make the smallest change that fixes the issue, check it, and do not modify the tests."""

USER = """<uploaded_files>
/testbed
</uploaded_files>
I've uploaded a Python repository in /testbed. Consider the following issue:

<issue_description>
{issue}
</issue_description>

Please make the minimal changes to the non-test files in /testbed so that the issue is resolved."""

EXPLORE_THOUGHTS = [
    "Let me start by looking at the layout of the repository.",
    "First I'll get an overview of the files in the repository.",
    "I'll begin by listing the Python files to find where `{func}` lives.",
]
GREP_THOUGHTS = [
    "Let me find where `{func}` is defined.",
    "I'll search the code for the definition of `{func}`.",
]
VIEW_THOUGHTS = [
    "The function is in `{path}`. Let me read it.",
    "Let me open `{path}` and look at the implementation.",
    "`{path}` should contain the code in question; let me view it.",
]
REPRO_THOUGHTS = [
    "Before changing anything, I'll write a small script that reproduces the problem.",
    "Let me reproduce the issue with a script first.",
    "I'll create a reproduction script based on the example in the issue.",
]
RUN_THOUGHTS = ["Now let me run it.", "Let's run the reproduction script.", "Running the script to confirm the bug."]
FIX_THOUGHTS = [
    "I can see the problem. {why}",
    "The output confirms the issue. {why}",
    "That matches the report. {why}",
]
RERUN_THOUGHTS = [
    "Let me run the reproduction script again to check the fix.",
    "Now I'll rerun the script.",
    "Let's verify the change with the same script.",
]
TEST_THOUGHTS = [
    "The output is correct now. Let me also run the existing tests for this module.",
    "That looks right. I'll run the module's tests to make sure nothing else broke.",
]
CLEAN_THOUGHTS = ["Everything passes. I'll remove the reproduction script.", "The tests pass; let me clean up the script I added."]
SUBMIT_THOUGHTS = ["The fix is complete. Submitting.", "Done: the issue is fixed and the tests pass. Let me submit."]
RETRY_THOUGHTS = [
    "The replacement failed because the indentation of `old_str` did not match. Let me view the exact lines again.",
    "The old string did not match the file verbatim. I'll look at the exact text first.",
]


def cat_n(text: str, start: int = 1) -> str:
    return "\n".join(f"{i:6d}\t{line}" for i, line in enumerate(text.splitlines(), start=start))


class Session:
    """Builds one trajectory's messages while acting on a real temporary checkout."""

    def __init__(self, bug: dict, rng: random.Random, workdir: Path):
        self.bug, self.rng, self.dir = bug, rng, workdir
        self.messages: list[dict] = []
        self.calls = 0

    # -- the environment ----------------------------------------------------
    def write(self, rel: str, text: str) -> None:
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def read(self, rel: str) -> str:
        return (self.dir / rel).read_text(encoding="utf-8")

    def shell(self, command: str) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(self.dir),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        proc = subprocess.run(["bash", "-c", command], cwd=self.dir, env=env, capture_output=True,
                              text=True, timeout=60)
        out = (proc.stdout + proc.stderr).replace(str(self.dir), ROOT)
        out = re.sub(r" in \d+\.\d+s", " in 0.02s", out)
        out = re.sub(r"\n*$", "", out)
        return out or "Your command ran successfully and did not produce any output."

    # -- the conversation ---------------------------------------------------
    def say(self, thought: str, tool: str, arguments: dict, observation: str) -> None:
        self.calls += 1
        call_id = f"call_{self.bug['repo']}_{self.calls:02d}"
        self.messages.append({
            "role": "assistant",
            "content": thought,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": tool, "arguments": json.dumps(arguments)}}],
        })
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": observation})

    def pick(self, options: list[str], **fmt) -> str:
        return self.rng.choice(options).format(**fmt)


def setup_repo(s: Session) -> None:
    bug = s.bug
    pkg = bug["path"].split("/")[0]
    s.write(f"{pkg}/__init__.py", "")
    s.write(bug["path"], bug["source"])
    s.write(bug["test_path"], bug["test"])
    s.write("README.md", f"# {bug['repo']}\n\nSmall utilities; run the tests with `python -m pytest`.\n")
    s.write("pyproject.toml", f'[project]\nname = "{bug["repo"]}"\nversion = "0.1.0"\n')
    s.shell("git init -q && git add -A && git -c user.name=dev -c user.email=dev@example.com commit -qm init")


def session(bug: dict, index: int, workdir: Path) -> dict:
    rng = random.Random(f"{SEED}:{bug['repo']}")
    s = Session(bug, rng, workdir)
    setup_repo(s)
    path = f"{ROOT}/{bug['path']}"
    func = bug["func"].split(".")[-1]
    s.messages += [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER.format(issue=bug["issue"])}]

    # 1. Locate the code.
    if rng.random() < 0.5:
        cmd = f"find {ROOT} -name '*.py' -not -path '*/.git/*' | sort"
        s.say(s.pick(EXPLORE_THOUGHTS, func=func), "bash", {"command": cmd}, s.shell(cmd.replace(ROOT, ".")).replace("./", f"{ROOT}/"))
    else:
        cmd = f"grep -rn 'def {func}' {ROOT} --include='*.py'"
        s.say(s.pick(GREP_THOUGHTS, func=func), "bash", {"command": cmd},
              s.shell(cmd.replace(ROOT, ".")).replace("./", f"{ROOT}/"))
    s.say(s.pick(VIEW_THOUGHTS, path=bug["path"]), "str_replace_editor", {"command": "view", "path": path},
          f"Here's the result of running `cat -n` on {path}:\n" + cat_n(s.read(bug["path"])))
    if rng.random() < 0.3:
        tpath = f"{ROOT}/{bug['test_path']}"
        s.say("Let me also look at the existing tests for this module.", "str_replace_editor",
              {"command": "view", "path": tpath},
              f"Here's the result of running `cat -n` on {tpath}:\n" + cat_n(s.read(bug["test_path"])))

    # 2. Reproduce.
    inline = rng.random() < 0.25
    if inline:
        code = bug["repro"]
        cmd = f"cd {ROOT} && python - <<'EOF'\n{code}EOF"
        s.say(s.pick(REPRO_THOUGHTS[1:2]), "bash", {"command": cmd}, s.shell(cmd.replace(f"cd {ROOT} && ", "")))
    else:
        s.say(s.pick(REPRO_THOUGHTS), "str_replace_editor",
              {"command": "create", "path": f"{ROOT}/reproduce.py", "file_text": bug["repro"]},
              f"File created successfully at: {ROOT}/reproduce.py")
        s.write("reproduce.py", bug["repro"])
        cmd = f"cd {ROOT} && python reproduce.py"
        s.say(s.pick(RUN_THOUGHTS), "bash", {"command": cmd}, s.shell("python reproduce.py"))

    # 3. Fix (sometimes after a failed replacement with the wrong indentation).
    old, new = bug["old"], bug["new"]
    source = s.read(bug["path"])
    if old not in source or source.count(old) != 1:
        raise SystemExit(f"{bug['repo']}: old snippet not found exactly once in {bug['path']}")
    fix_thought = s.pick(FIX_THOUGHTS, why=bug["why"])
    if rng.random() < 0.25:
        bad_old = "\n".join(line.strip() for line in old.splitlines())
        if bad_old != old:
            s.say(fix_thought, "str_replace_editor",
                  {"command": "str_replace", "path": path, "old_str": bad_old, "new_str": new},
                  f"No replacement was performed, old_str `{bad_old}` did not appear verbatim in {path}.")
            first = source[: source.index(old)].count("\n") + 1
            last = first + old.count("\n")
            lo, hi = max(1, first - 2), min(source.count("\n"), last + 2)
            s.say(s.pick(RETRY_THOUGHTS), "str_replace_editor",
                  {"command": "view", "path": path, "view_range": [lo, hi]},
                  f"Here's the result of running `cat -n` on {path}:\n"
                  + cat_n("\n".join(source.splitlines()[lo - 1:hi]), start=lo))
            fix_thought = "Now with the exact indentation."
    fixed = source.replace(old, new)
    s.write(bug["path"], fixed)
    start = fixed.index(new)
    first = fixed[:start].count("\n") + 1
    last = first + new.count("\n")
    lines = fixed.splitlines()
    lo, hi = max(1, first - 4), min(len(lines), last + 4)
    s.say(fix_thought, "str_replace_editor", {"command": "str_replace", "path": path, "old_str": old, "new_str": new},
          f"The file {path} has been edited. Here's the result of running `cat -n` on a snippet of {path}:\n"
          + cat_n("\n".join(lines[lo - 1:hi]), start=lo)
          + "\nReview the changes and make sure they are as expected. Edit the file again if necessary.")

    # 4. Verify.
    if inline:
        cmd = f"cd {ROOT} && python - <<'EOF'\n{bug['repro']}EOF"
        s.say(s.pick(RERUN_THOUGHTS), "bash", {"command": cmd}, s.shell(cmd.replace(f"cd {ROOT} && ", "")))
    else:
        s.say(s.pick(RERUN_THOUGHTS), "bash", {"command": f"cd {ROOT} && python reproduce.py"}, s.shell("python reproduce.py"))
    cmd = f"cd {ROOT} && python -m pytest -q {bug['test_path']}"
    s.say(s.pick(TEST_THOUGHTS), "bash", {"command": cmd}, s.shell(f"python -m pytest -q -p no:cacheprovider {bug['test_path']}"))
    if not inline:
        s.say(s.pick(CLEAN_THOUGHTS), "bash", {"command": f"rm {ROOT}/reproduce.py"}, s.shell("rm reproduce.py"))

    # 5. Submit: the observation is the patch.
    diff = "".join(difflib.unified_diff(source.splitlines(keepends=True), fixed.splitlines(keepends=True),
                                        fromfile=f"a/{bug['path']}", tofile=f"b/{bug['path']}"))
    s.say(s.pick(SUBMIT_THOUGHTS), "submit", {}, f"diff --git a/{bug['path']} b/{bug['path']}\n{diff}".rstrip("\n"))
    return {"instance_id": f"hesnr-demo__{bug['repo']}-{index:03d}", "resolved": True, "messages": s.messages}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    records = []
    for i, bug in enumerate(BUGS):
        with tempfile.TemporaryDirectory(prefix="hesnr-demo-") as tmp:
            records.append(session(bug, i, Path(tmp)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    n_msgs = sum(len(r["messages"]) for r in records)
    print(f"wrote {len(records)} trajectories ({n_msgs} messages) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
