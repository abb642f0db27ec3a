"""Smoke run of benchmarks/bench_token_stats.py on CPU (tiny sizes, Triton interpreter)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_token_stats.py"


def _run(args, timeout=600):
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_benchmark_cpu_smoke(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "bench.json"
    proc = _run(["--device", "cpu", "--tokens", "6", "--vocab", "2053", "97", "--repeats", "1", "--warmup", "0",
                 "--variants", "s1", "s4", "bitonic", "512x2:s2", "--json", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["environment"]["device"] == "cpu"
    assert [(e["tokens"], e["v_local"]) for e in res["results"]] == [(6, 2053), (6, 97)]
    # Liger-Kernel runs only on CUDA: reported as not measured, never silently absent.
    assert "liger_ce_forward" in res["not_measured"]
    for entry in res["results"]:
        methods = entry["methods"]
        for name in ("read_once", "naive_torch", "chunked_reference", "kernel", "token_stats[triton]",
                     "kernel[s1]", "kernel[s4]", "kernel[512x2:s2]"):
            assert methods[name]["ms"] > 0, name
        assert all(v for v in entry["check"].values() if isinstance(v, bool)), entry["check"]
        for name, chk in entry["variant_checks"].items():
            assert all(v for v in chk.values() if isinstance(v, bool)), (name, chk)
        assert entry["ratios"]["kernel_over_read_once"] > 0
        best = entry["best_kernel"]
        assert best["method"] in methods and best["ms"] == min(
            r["ms"] for n, r in methods.items() if n.startswith("kernel") and "ms" in r)
        assert best["over_read_once"] > 0 and "speedup_vs_naive>=20" in best
    assert [(b["tokens"], b["v_local"]) for b in res["best_kernel"]] == [(6, 2053), (6, 97)]
    # The acceptance verdict is computed for V_local = 151936 only from S >= 32K.
    assert res["verdicts"] == []
    assert "S=6  V_local=97" in proc.stdout
    assert "best kernel launch per size" in proc.stdout


def test_benchmark_rejects_a_bad_variant():
    proc = _run(["--device", "cpu", "--tokens", "2", "--vocab", "16", "--variants", "s0"], timeout=120)
    assert proc.returncode == 2
    assert "--variants: 's0'" in proc.stderr
