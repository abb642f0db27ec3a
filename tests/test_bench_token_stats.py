"""Smoke run of benchmarks/bench_token_stats.py on CPU (tiny sizes, Triton interpreter)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_token_stats.py"


def test_benchmark_cpu_smoke(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "bench.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tokens", "6", "--vocab", "151936", "97",
         "--repeats", "1", "--warmup", "0", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["environment"]["device"] == "cpu"
    assert [(e["tokens"], e["v_local"]) for e in res["results"]] == [(6, 151936), (6, 97)]
    for entry in res["results"]:
        methods = entry["methods"]
        for name in ("read_once", "naive_torch", "chunked_reference", "kernel", "token_stats[triton]"):
            assert methods[name]["ms"] > 0, name
        assert all(v for v in entry["check"].values() if isinstance(v, bool)), entry["check"]
        assert entry["ratios"]["kernel_over_read_once"] > 0
    # The acceptance verdict is computed for V_local = 151936 only from S >= 32K.
    assert res["verdicts"] == []
    assert "S=6  V_local=97" in proc.stdout
