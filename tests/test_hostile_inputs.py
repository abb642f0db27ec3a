"""Issue 25's hostile pass: each numbered item as a named test, and the writers that
cannot lose or mix data (records, report outputs, `compare --json`).

Items 1 (two concurrent prepares, in separate processes) and the kill trials are in
tests/test_prepare_crash_safety.py; item 1 is also shown here in-process."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from megatron_hesnr.atomic_write import LockedError, PathLock
from megatron_hesnr.cli import main
from megatron_hesnr.data.dataset import PreparedDataset, PreparedDatasetError
from megatron_hesnr.data.readers import ReadError, read_trajectories

GOOD = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Fix the bug."},
    {"role": "assistant", "content": "Let me look.\n```bash\nls -la\n```"},
]


def _prepare(inputs, tok, prefix, *extra):
    return main(["prepare", *map(str, inputs), "--tokenizer", str(tok), "--output-prefix", str(prefix),
                 "--no-progress", *extra])


def _digest(prefix) -> dict:
    return {n: hashlib.sha256(Path(f"{prefix}{n}").read_bytes()).hexdigest()
            for n in ("_tokens.bin", "_tokens.idx", "_mask.bin", "_mask.idx", "_manifest.json")}


def _inputs(tmp_path, n=2) -> Path:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    for i in range(n):
        msgs = copy.deepcopy(GOOD)
        msgs[2]["content"] += f"\n```bash\necho {i}\n```"
        (d / f"t{i}.traj.json").write_text(json.dumps(msgs), encoding="utf-8")
    return d


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ item 1, 2

def test_item1_concurrent_prepares_refused_in_process(tmp_path, deepseek_tokenizer_json, capsys):
    d = _inputs(tmp_path)
    prefix = tmp_path / "out" / "P"
    assert _prepare([d], deepseek_tokenizer_json, prefix) == 0
    before = _digest(prefix)
    capsys.readouterr()
    with PathLock(f"{prefix}.lock", "holder"):   # another writer of the prefix
        assert _prepare([d / "t0.traj.json"], deepseek_tokenizer_json, prefix) == 2
    line = _one_error_line(capsys)
    assert f"--output-prefix {prefix}" in line and f"pid {os.getpid()}" in line and "lock file" in line, line
    assert _digest(prefix) == before
    # The lock is free again: the next run goes through.
    assert _prepare([d / "t0.traj.json"], deepseek_tokenizer_json, prefix) == 0
    assert len(PreparedDataset(str(prefix))) == 1


def test_item2_interrupted_rerun_keeps_the_old_dataset(tmp_path, deepseek_tokenizer_json, monkeypatch):
    from megatron_hesnr.data import writer as writer_mod

    d = _inputs(tmp_path, 3)
    prefix = tmp_path / "P"
    assert _prepare([d], deepseek_tokenizer_json, prefix) == 0
    before = _digest(prefix)
    real_add, calls = writer_mod.DatasetWriter.add, []

    def add(self, ids, mask):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt   # Ctrl-C in the middle of the rerun
        return real_add(self, ids, mask)

    monkeypatch.setattr(writer_mod.DatasetWriter, "add", add)
    assert _prepare([d / "t0.traj.json", d / "t1.traj.json"], deepseek_tokenizer_json, prefix) == 130   # Ctrl-C: 130, not a bad argument
    assert _digest(prefix) == before
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or p.name.endswith(".commit")] == []
    assert len(PreparedDataset(str(prefix), verify="full")) == 3


def test_item1_hashes_are_of_the_bytes_written(tmp_path, deepseek_tokenizer_json):
    """verify="full" binds the manifest to the files: a mask file from another run fails it."""
    d = _inputs(tmp_path, 2)
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "a" / "P") == 0
    assert _prepare([d / "t0.traj.json"], deepseek_tokenizer_json, tmp_path / "b" / "P") == 0
    manifest = json.loads((tmp_path / "a" / "P_manifest.json").read_text())
    for role, name in (("tokens_bin", "P_tokens.bin"), ("mask_idx", "P_mask.idx")):
        data = (tmp_path / "a" / name).read_bytes()
        assert manifest["files"][role]["sha256"] == hashlib.sha256(data).hexdigest()
    (tmp_path / "a" / "P_mask.bin").write_bytes((tmp_path / "b" / "P_mask.bin").read_bytes())
    with pytest.raises(PreparedDatasetError):
        PreparedDataset(str(tmp_path / "a" / "P"), verify="full")


# ------------------------------------------------------------------ item 3

def test_item3_huge_json_integer_is_one_error_line_for_that_file(tmp_path, deepseek_tokenizer_json, capsys):
    d = _inputs(tmp_path, 1)
    (d / "huge.traj.json").write_text('[{"role": "user", "content": "x", "n": ' + "7" * 5000 + "}]")
    (d / "rows.jsonl").write_text(json.dumps({"messages": GOOD}) + "\n" + '{"messages": [], "n": ' + "9" * 5000 + "}\n")
    (d / "smith.jsonl").write_text(json.dumps({"messages": '[{"role": "user", "n": ' + "1" * 5000 + "}]"}) + "\n")
    with pytest.raises(ReadError, match="unreadable JSON.*digits"):
        read_trajectories(str(d / "huge.traj.json"))
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "P") == 0
    err = capsys.readouterr().err
    assert f"{d / 'huge.traj.json'}: unreadable JSON" in err
    assert f"{d / 'rows.jsonl'}: line 2: unreadable JSON" in err
    assert f"{d / 'smith.jsonl'}: line 1: 'messages' is a string but not readable JSON" in err
    assert len(PreparedDataset(str(tmp_path / "P"))) == 2   # t0 and the good JSONL line


# ------------------------------------------------------------------ item 4

def test_item4_absurd_num_documents_is_a_state_error_before_allocating():
    from megatron_hesnr.metric.accumulator import AccumulatorConfig, HESNRAccumulator
    from megatron_hesnr.metric.state_check import StateError
    from megatron_hesnr.metric.token_stats import token_stats

    acc = HESNRAccumulator(AccumulatorConfig(num_documents=3))
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 6, 40), torch.randint(0, 40, (1, 6))
    acc.update(token_stats(logits, labels, impl="torch"), torch.ones(1, 6, dtype=torch.long),
               doc_ids=torch.tensor([[0, 0, 1, 1, 2, 2]]))
    good = json.loads(json.dumps(acc.state_dict()))
    assert HESNRAccumulator.from_state_dict(good).state_dict() == good
    bad = copy.deepcopy(good)
    bad["config"]["num_documents"] = 10 ** 12
    with pytest.raises(StateError, match="num_documents"):
        HESNRAccumulator.from_state_dict(bad)
    bad["trajectories"]["num_documents"] = 10 ** 12   # both counts agree: the lists give it away
    with pytest.raises(StateError, match=r"has shape \(3,\), expected \(1000000000000,\) = config.num_documents"):
        HESNRAccumulator.from_state_dict(bad)
    empty = HESNRAccumulator(AccumulatorConfig(num_documents=3)).state_dict()
    empty["config"]["num_documents"] = empty["trajectories"]["num_documents"] = 10 ** 12
    with pytest.raises(StateError, match="empty 'trajectories' table"):
        HESNRAccumulator.from_state_dict(empty)


# ------------------------------------------------------------------ item 7

def test_item7_same_file_under_two_spellings_is_prepared_once(tmp_path, deepseek_tokenizer_json, capsys,
                                                              monkeypatch):
    d = _inputs(tmp_path, 2)
    (tmp_path / "link.traj.json").symlink_to(d / "t1.traj.json")
    monkeypatch.chdir(tmp_path)
    inputs = ["in/t1.traj.json", str(d / "t1.traj.json"), "in", "link.traj.json", "in/../in/t0.traj.json"]
    assert _prepare(inputs, deepseek_tokenizer_json, tmp_path / "P") == 0
    err = capsys.readouterr().err
    assert "note: 4 input(s) named a file already given under another path" in err, err
    ds = PreparedDataset(str(tmp_path / "P"))
    assert len(ds) == 2
    assert len(ds.manifest["inputs"]) == 2


# ------------------------------------------------------------------ item 8

@pytest.mark.parametrize("flag,value", [("--max-line-bytes", "-1"), ("--max-line-bytes", "-5"),
                                        ("--max-line-bytes", "0"), ("--max-file-bytes", "-1")])
def test_item8_negative_limits_refused_naming_the_flag(tmp_path, deepseek_tokenizer_json, capsys, flag, value):
    d = _inputs(tmp_path, 1)
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "P", flag, value) == 2
    line = _one_error_line(capsys)
    assert flag in line and value in line, line
    assert not list(tmp_path.glob("P*"))


@pytest.mark.parametrize("prefix", ["", " ", "out/"])
def test_item8_empty_or_folder_output_prefix_refused(tmp_path, deepseek_tokenizer_json, capsys, monkeypatch, prefix):
    monkeypatch.chdir(tmp_path)
    d = _inputs(tmp_path, 1)
    assert _prepare([d], deepseek_tokenizer_json, prefix) == 2
    line = _one_error_line(capsys)
    assert "--output-prefix" in line, line
    assert not list(tmp_path.rglob("*_tokens.bin"))


def test_item8_limit_flags_have_help(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-file-bytes N refuse a single-document file" in out
    assert "--max-line-bytes N refuse a JSONL line longer than N bytes" in out
    assert "capped at the number of input files" in out


# ------------------------------------------------------------------ item 10

@pytest.mark.parametrize("documents", [[], [{"source": "a"}], "x"])
def test_item10_manifest_documents_that_do_not_match_are_refused(tmp_path, deepseek_tokenizer_json, capsys, documents):
    d = _inputs(tmp_path, 2)
    prefix = tmp_path / "P"
    assert _prepare([d], deepseek_tokenizer_json, prefix) == 0
    mpath = Path(f"{prefix}_manifest.json")
    m = json.loads(mpath.read_text())
    m["documents"] = documents
    mpath.write_text(json.dumps(m))
    with pytest.raises(PreparedDatasetError, match="field documents must list one object per document"):
        PreparedDataset(str(prefix), verify="sizes")
    capsys.readouterr()
    assert main(["inspect", str(prefix), "--doc", "0"]) == 2
    line = _one_error_line(capsys)
    assert "documents" in line and str(mpath) in line and "IndexError" not in line, line


# ------------------------------------------------------------------ item 11

def test_item11_workers_capped_at_files_and_cpus(tmp_path, deepseek_tokenizer_json, capsys):
    from megatron_hesnr.data.pipeline import effective_workers, usable_cpus

    assert effective_workers(100, 2) == (min(2, usable_cpus()),
                                         f"2 input file(s)/part(s), {usable_cpus()} usable CPU(s)")
    assert effective_workers(1, 5) == (1, "")
    d = _inputs(tmp_path, 2)
    t0 = time.perf_counter()
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "P", "--workers", "100") == 0
    assert f"--workers 100 capped at {min(2, usable_cpus())}" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 60
    assert len(PreparedDataset(str(tmp_path / "P"))) == 2


# ------------------------------------------------------------------ item 12

@pytest.mark.parametrize("kwargs,name", [({"k": 10.0}, "k"), ({"k": True}, "k"), ({"k": 0}, "k"),
                                         ({"vocab_size": 20.5}, "vocab_size"), ({"vocab_size": True}, "vocab_size")])
def test_item12_token_stats_arguments_named(kwargs, name):
    from megatron_hesnr.metric.token_stats import token_stats

    logits, labels = torch.randn(3, 40), torch.randint(0, 40, (3,))
    with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
        token_stats(logits, labels, impl="torch", **kwargs)


def test_item12_state_config_of_the_wrong_type_is_named():
    from megatron_hesnr.metric.accumulator import AccumulatorConfig, HESNRAccumulator
    from megatron_hesnr.metric.state_check import StateError

    for n in (None, 3):
        state = HESNRAccumulator(AccumulatorConfig(num_documents=n)).state_dict()
        state["config"] = [1]
        with pytest.raises(StateError, match="^accumulator state config must be an object, got list$"):
            HESNRAccumulator.from_state_dict(state)


# ------------------------------------------------------------------ item 13

def test_item13_cut_short_traj_says_truncated_with_position(tmp_path, deepseek_tokenizer_json, capsys):
    text = json.dumps({"history": GOOD, "info": {}})
    cut = text[:text.index("Let me") + 3]
    (tmp_path / "cut.traj").write_text(cut)
    with pytest.raises(ReadError) as info:
        read_trajectories(str(tmp_path / "cut.traj"))
    msg = str(info.value)
    assert "at at" not in msg
    assert msg.startswith("truncated JSON (cut short?): the input ends at line 1 column "
                          f"{len(cut) + 1} inside a string that starts at line 1 column"), msg
    assert _prepare([tmp_path / "cut.traj"], deepseek_tokenizer_json, tmp_path / "P") == 1
    assert f"{tmp_path / 'cut.traj'}: truncated JSON (cut short?)" in capsys.readouterr().err


def test_item13_resolved_null_is_unknown_and_dropped(tmp_path, deepseek_tokenizer_json, capsys):
    d = tmp_path / "in"
    d.mkdir()
    rows = [{"messages": GOOD, "resolved": True}, {"messages": GOOD, "resolved": None},
            {"messages": GOOD, "resolved": None, "target": 1}, {"messages": GOOD}]
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "P", "--only-resolved") == 0
    err = capsys.readouterr().err
    assert "only_resolved dropped 1" in err
    assert "line 4: --only-resolved: row has no 'resolved' or 'target' field" in err   # absent: still an error
    assert "line 2" not in err
    ds = PreparedDataset(str(tmp_path / "P"))
    assert [doc["source"].rsplit(":", 1)[1] for doc in ds.manifest["documents"]] == ["1", "3"]


# ------------------------------------------------------------------ records writer

def _hold_lock_in_child(lock_path: Path) -> subprocess.Popen:
    """A separate process holding ``lock_path`` through atomic_write.PathLock (loaded by file
    path: no torch import), until killed."""
    code = (
        "import importlib.util, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('aw', {str(REPO / 'megatron_hesnr' / 'atomic_write.py')!r})\n"
        "aw = importlib.util.module_from_spec(spec); spec.loader.exec_module(aw)\n"
        f"aw.PathLock({str(lock_path)!r}, 'x').acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_records_second_writer_refused_and_restart_after_death_appends(tmp_path):
    from megatron_hesnr.evaluation import records as rec

    path = tmp_path / "r.jsonl"
    holder = _hold_lock_in_child(Path(f"{path}.lock"))
    try:
        with pytest.raises(LockedError, match=rf"records file {path} is being written by another process "
                                              rf"\(pid {holder.pid} on "):
            rec.append_records(str(path), [{"a": 1}])
        assert not path.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died (a requeued job's predecessor): this process becomes the writer.
    try:
        rec.append_records(str(path), [{"a": 1}])
        rec.append_records(str(path), [{"a": 2}, {"a": 3}])
        assert rec.read_raw_records(str(path)) == [{"a": 1}, {"a": 2}, {"a": 3}]
        info = json.loads(Path(f"{path}.lock").read_text())
        assert info["pid"] == os.getpid()
    finally:
        rec.release_records(str(path))


def test_a_locker_refused_before_the_holder_wrote_its_line_still_names_the_holder(tmp_path):
    """The holder writes its pid line just after it takes the lock: a second locker refused in that
    moment (two `hesnr prepare` started together) waits for the line; a holder that never writes
    one (another tool's flock) is refused as unknown after that wait."""
    import time

    lock = tmp_path / "P.lock"
    code = ("import fcntl, json, os, socket, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "if sys.argv[1] == 'write':\n"
            "    time.sleep(0.3)\n"
            "    os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': 'now'}).encode(), 0)\n"
            "time.sleep(600)\n")
    for mode in ("write", "silent"):
        lock.unlink(missing_ok=True)
        holder = subprocess.Popen([sys.executable, "-c", code, mode], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            t0 = time.monotonic()
            with pytest.raises(LockedError) as e:
                PathLock(str(lock), "--output-prefix P").acquire()
            waited = time.monotonic() - t0
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        if mode == "write":
            assert f"(pid {holder.pid} on " in str(e.value), str(e.value)
        else:
            assert "(holder unknown; lock file" in str(e.value) and waited >= 0.9, (str(e.value), waited)


def test_records_torn_last_line_stays_one_bad_line(tmp_path, monkeypatch):
    from megatron_hesnr.evaluation import records as rec

    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b": [1, 2')   # a writer died in the middle of a line
    try:
        rec.append_records(str(path), [{"a": 3}])
        lines = path.read_text().splitlines()
        assert lines == ['{"a": 1}', '{"a": 2, "b": [1, 2', '{"a": 3}']
        # A write that fails half way is cut back: the file ends where it ended.
        size = path.stat().st_size
        real_write, calls = os.write, []

        def short_then_fail(fd, data):
            calls.append(1)
            if len(calls) == 1:
                return real_write(fd, bytes(data[:5]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", short_then_fail)
        with pytest.raises(OSError, match="No space left"):
            rec.append_records(str(path), [{"a": 4}])
        monkeypatch.undo()
        assert path.stat().st_size == size
    finally:
        rec.release_records(str(path))


# ------------------------------------------------------------------ report / compare outputs

def _records_file(tmp_path) -> Path:
    from megatron_hesnr.metric.accumulator import AccumulatorConfig, HESNRAccumulator
    from megatron_hesnr.evaluation.records import make_record
    from megatron_hesnr.metric.token_stats import token_stats

    lines = []
    for it in (100, 200, 300):
        torch.manual_seed(it)
        acc = HESNRAccumulator(AccumulatorConfig(num_documents=4, num_bins=16))
        logits, labels = torch.randn(1, 16, 50) * (it / 100), torch.randint(0, 50, (1, 16))
        acc.update(token_stats(logits, labels, impl="torch"), torch.ones(1, 16, dtype=torch.long),
                   doc_ids=torch.arange(16).reshape(1, 16) // 4)
        lines.append(json.dumps(make_record(iteration=it, consumed_samples=it, checkpoint=f"/c/run/iter_{it:07d}",
                                            run="run", dataset="swe", config={}, acc=acc, metrics=acc.compute())))
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_second_writer_of_an_output_dir_refused(tmp_path, capsys):
    records = _records_file(tmp_path)
    out = tmp_path / "rep"
    assert main(["report", str(records), "--output-dir", str(out), "--no-figures", "--bootstrap", "0"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert set(before) == {"report.md", "summary.json"}
    capsys.readouterr()
    with PathLock(out / ".hesnr-report.lock", "holder"):
        assert main(["report", str(records), "--output-dir", str(out), "--no-figures", "--bootstrap", "0"]) == 2
    line = _one_error_line(capsys)
    assert f"--output-dir {out} is being written by another process (pid {os.getpid()}" in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before


def test_report_failure_leaves_the_earlier_report_whole(tmp_path, monkeypatch):
    import megatron_hesnr.analysis.report as report_mod

    records = _records_file(tmp_path)
    out = tmp_path / "rep"
    assert main(["report", str(records), "--output-dir", str(out), "--no-figures", "--bootstrap", "0"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".hesnr-report.lock"}

    def broken(*a, **k):
        raise OSError(28, "No space left on device", str(out / "summary.json"))

    monkeypatch.setattr(report_mod, "write_json", broken)   # report.md is staged, summary.json fails
    assert main(["report", str(records), "--output-dir", str(out), "--no-figures", "--bootstrap", "0",
                 "--category", "action"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".hesnr-report.lock"} == before


def test_compare_json_is_replaced_whole(tmp_path, monkeypatch):
    import megatron_hesnr.atomic_write as aw

    records = _records_file(tmp_path)
    out = tmp_path / "cmp.json"
    out.write_text('{"old": true}\n')
    real_replace = os.replace

    def no_rename(src, dst):
        raise OSError(5, "Input/output error", dst)

    monkeypatch.setattr(aw.os, "replace", no_rename)
    assert main(["compare", str(records), "--a", "100", "--b", "300", "--bootstrap", "50", "--json", str(out)]) == 2
    assert out.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    monkeypatch.setattr(aw.os, "replace", real_replace)
    assert main(["compare", str(records), "--a", "100", "--b", "300", "--bootstrap", "50", "--json", str(out)]) == 0
    assert {"he_ppl", "top1_acc"} <= set(json.loads(out.read_text()))
