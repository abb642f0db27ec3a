"""Issue 24: records read as numpy arrays without torch, compare reads only its two
records, the report's "differs from previous" from the linearised estimator, and a
CLI that imports only what a subcommand needs."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import megatron_hesnr as mh
from megatron_hesnr.metric.accumulator import SCALAR_FIELDS
from megatron_hesnr.analysis import read_records
from megatron_hesnr.analysis.json_members import top_level_members
from megatron_hesnr.analysis.record_state import StateError, parse_state
from megatron_hesnr.cli import main
from megatron_hesnr.metric.stderr import paired_bootstrap, paired_difference

from report_synth import record_of
from stderr_synth import as_token_stats, clustered_tokens

REPO = Path(__file__).resolve().parents[1]
N_DOCS = 150


def _acc(shift: float, seed: int = 0, n_docs: int = N_DOCS, cats: bool = False) -> mh.HESNRAccumulator:
    tok = clustered_tokens(n_docs, seed, mean_len=30, shift=shift)
    acc = mh.HESNRAccumulator(num_documents=n_docs)
    n = len(tok["doc"])
    mask = torch.randint(1, 4, (n,), generator=torch.Generator().manual_seed(seed)) if cats \
        else torch.ones(n, dtype=torch.long)
    acc.update(as_token_stats(tok), mask, torch.tensor(tok["doc"]))
    return acc.all_reduce(None)


def _write(path: Path, records, tail: str = "") -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


# ------------------------------------------------------------- imports
def _modules_after(code: str) -> dict:
    probe = (f"import sys\n{code}\n"
             "import json; print('@@' + json.dumps({m: m in sys.modules for m in ('torch', 'scipy', 'matplotlib', "
             "'megatron.core')}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=REPO).stdout
    return json.loads([ln for ln in out.splitlines() if ln.startswith("@@")][-1][2:])


def _cli(argv) -> str:
    return f"from megatron_hesnr.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"


def test_help_and_argument_errors_import_no_torch(tmp_path):
    for argv in (["--help"], ["report", "--help"], ["compare", "--help"], ["inspect", "--help"],
                 ["report", "r.jsonl", "--bootstrap", "x"], ["compare", "r.jsonl", "--seed", "-1"], []):
        loaded = _modules_after(_cli(argv))
        assert not loaded["torch"] and not loaded["scipy"] and not loaded["megatron.core"], (argv, loaded)


def test_report_and_compare_run_without_torch(tmp_path):
    path = _write(tmp_path / "r.jsonl", [record_of(_acc(0.0), 1000), record_of(_acc(0.3), 2000),
                                         record_of(_acc(0.3, seed=1), 3000)])
    out = tmp_path / "rep"
    report = _modules_after(_cli(["report", path, "--no-figures", "--output-dir", str(out)]))
    assert (out / "summary.json").exists() and not report["torch"] and not report["matplotlib"], report
    compare = _modules_after(_cli(["compare", path, "--a", "1000", "--b", "2000", "--bootstrap", "100"]))
    assert not compare["torch"] and not compare["scipy"], compare


# --------------------------------------------------- numpy state == accumulator
def test_record_state_answers_exactly_as_the_accumulator():
    acc = _acc(0.2, cats=True)
    state = parse_state(json.loads(json.dumps(acc.state_dict())))
    back = mh.HESNRAccumulator.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    for cat in (None, "action", "thought", "observation", 2):
        assert state.sums(cat) == back.sums(cat)
        assert state.histogram(cat) == back.histogram(cat)
        assert state.sweep([0.7, back.config.threshold, 1.5], cat) == back.sweep([0.7, back.config.threshold, 1.5], cat)
        np.testing.assert_array_equal(state.trajectory_rows(cat), back.trajectory_rows(cat).numpy())
        a, b = state.uncertainty(cat), back.uncertainty(cat)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-12) for k in a)
    # and back into an accumulator (the EvalRecord.accumulator of the API)
    assert state.to_accumulator().state_dict() == back.state_dict()


def _set(d, path, value):
    d = copy.deepcopy(d)
    node = d
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return d


def test_numpy_reader_refuses_every_state_the_accumulator_refuses():
    base = json.loads(json.dumps(_acc(0.1).state_dict()))
    col = base["trajectories"]["by_category"]["action"]
    tf = "trajectories"
    nt = SCALAR_FIELDS.index("num_tokens")
    cases = {
        "num_high_entropy": _set(base, ["scalars", 0, SCALAR_FIELDS.index("num_high_entropy")], 10 ** 9),
        "fractional": _set(base, ["scalars", 0, nt], base["scalars"][0][nt] + 0.5),
        "negative": _set(base, ["scalars", 1, 1], -1.0),
        "non-finite": _set(base, ["scalars", 0, 2], float("nan")),
        "category_names": _set(base, ["config", "category_names"], "action"),
        "config.k": _set(base, ["config", "k"], 10.0),
        "version": _set(base, ["version"], True),
        "reduced": _set(base, ["reduced"], "no"),
        "number": _set(base, ["hist", 0, 3, 1], True),
        "unknown extra": {**base, "extra": 1},
        "missing": {k: v for k, v in base.items() if k != "reduced"},
        r"has shape \(149,\), expected \(150,\) = config.num_documents": _set(base, [tf, "by_category", "action", "sum_nll"], col["sum_nll"][:-1]),
        "add up": _set(base, [tf, "by_category", "action", "sum_nll"], [v * 2 for v in col["sum_nll"]]),
        "not a list of numbers": _set(base, [tf, "by_category", "action", "num_top1"], ["1"] * N_DOCS),
        "unknown categories": _set(base, [tf, "by_category", "tool"], col),
        "num_documents": _set(base, [tf, "num_documents"], 7),
    }
    for match, bad in cases.items():
        with pytest.raises(StateError, match=match):
            parse_state(bad)
        with pytest.raises(ValueError):
            mh.HESNRAccumulator.from_state_dict(copy.deepcopy(bad))
    assert parse_state(base).sums() == mh.HESNRAccumulator.from_state_dict(base).sums()


# ------------------------------------------------------- reading what is needed
def test_top_level_members_finds_each_value():
    obj = {"a": 1, "b": {"x": [1, 2, {"y": "}],\"{"}]}, "c\\\"": "q\\", "state": {"s": [[1.5, 2], []]}, "z": None}
    raw = json.dumps(obj).encode()
    spans = top_level_members(raw)
    assert set(spans) == set(obj)
    for k, (lo, hi) in spans.items():
        assert json.loads(raw[lo:hi]) == obj[k]
    assert top_level_members(b"  {}  ") == {}
    rng = np.random.default_rng(0)
    alphabet = list('ab,:{}[]"\\ \u00e9x1')

    def value(depth):
        kind = rng.integers(0, 6 if depth < 3 else 3)
        if kind == 0:
            return "".join(rng.choice(alphabet, rng.integers(0, 6)))
        if kind == 1:
            return float(rng.normal())
        if kind == 2:
            return None
        if kind == 3:
            return [value(depth + 1) for _ in range(rng.integers(0, 4))]
        return {"".join(rng.choice(alphabet, 3)): value(depth + 1) for _ in range(rng.integers(0, 4))}

    for _ in range(300):
        obj = {"".join(rng.choice(alphabet, rng.integers(0, 5))): value(0) for _ in range(rng.integers(0, 6))}
        raw = json.dumps(obj, ensure_ascii=bool(rng.integers(0, 2))).encode()
        spans = top_level_members(raw)
        assert spans is not None and set(spans) == set(obj), raw
        assert all(json.loads(raw[lo:hi]) == obj[k] for k, (lo, hi) in spans.items()), raw
    for broken in (b'{"a": 1', b'[1, 2]', b'{"a": "x}', b'{"a" 1}', b'{"a": 1}}', b"nope"):
        assert top_level_members(broken) is None, broken


def test_compare_decodes_and_validates_only_the_two_records(tmp_path, capsys):
    good = [record_of(_acc(0.0), 1000), record_of(_acc(0.3), 2000)]
    broken = record_of(_acc(0.1), 3000)
    broken["state"]["scalars"][0][0] = -5.0           # invalid state: report finds it, compare never reads it
    path = _write(tmp_path / "r.jsonl", good + [broken, record_of(_acc(0.2), 4000)])
    read = read_records(path, select=lambda view: [r for r in view if r.iteration in (1000, 2000)])
    assert [r.iteration for r in read.records] == [1000, 2000] and not read.bad_lines
    assert all(r.state is not None for r in read.records)
    assert main(["compare", path, "--a", "1000", "--b", "2000", "--bootstrap", "50"]) == 0
    assert "negative" not in capsys.readouterr().err
    assert len(read_records(path).bad_lines) == 1


# ---------------------------------------------------------- the estimators
def test_vs_previous_is_the_linearised_paired_difference(tmp_path):
    a, b, same = _acc(0.0), _acc(0.25), _acc(0.25)
    path = _write(tmp_path / "r.jsonl", [record_of(a, 1000), record_of(b, 2000), record_of(same, 3000)])
    out = tmp_path / "rep"
    assert main(["report", path, "--no-figures", "--output-dir", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())["checkpoints"]
    ra, rb = a.trajectory_rows(None).numpy(), b.trajectory_rows(None).numpy()
    lin = paired_difference(ra, rb, SCALAR_FIELDS)
    boot = paired_bootstrap(ra, rb, SCALAR_FIELDS, n_boot=4000, seed=3, metrics=["hesnr"])["hesnr"]
    v = rows[1]["vs_previous"]
    assert v["diff"] == lin["diff"] and v["p"] == lin["p"] and v["se"] == lin["se"]
    # The closed form and the bootstrap agree on the spread of the difference.
    assert lin["se"] == pytest.approx((boot["ci"][1] - boot["ci"][0]) / (2 * 1.96), rel=0.15)
    assert v["significant"] is True
    assert rows[2]["vs_previous"]["diff"] == 0.0 and rows[2]["vs_previous"]["p"] == 1.0


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_identical_columns_give_exactly_zero_whatever_the_layout(layout):
    rng = np.random.default_rng(1)
    rows = np.abs(rng.normal(size=(333, len(SCALAR_FIELDS)))) * 10
    rows[:, [0, 4, 5, 6]] = np.floor(rows[:, [0, 4, 5, 6]]) + 1
    other = {"C": rows.copy(), "F": np.asfortranarray(rows),
             "strided": np.repeat(rows, 2, axis=1)[:, ::2]}[layout]
    res = paired_bootstrap(rows, other, SCALAR_FIELDS, n_boot=700, seed=2)
    for m, e in res.items():
        assert e["diff"] == 0.0 and e["ci"] == [0.0, 0.0] and e["p"] == 1.0, m


def test_benchmarks_never_import_tests():
    for path in (REPO / "benchmarks").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(tests|report_synth|stderr_synth|conftest)\b", text, re.M), path
        assert "tests" not in re.findall(r"sys\.path\.\w+\([^)]*\)", text).__str__(), path


def test_bench_report_generator_writes_valid_records(tmp_path):
    """The benchmark's own generator writes records the strict reader accepts."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_report
    finally:
        sys.path.pop(0)
    path = tmp_path / "b.jsonl"
    bench_report.write_records(path, 5, 300)
    read = read_records(path, strict=True)
    assert len(read.records) == 5 and read.records[0].state.config.num_documents == 300
