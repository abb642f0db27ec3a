"""`hesnr prepare` / `hesnr inspect` on adversarial input (issue 16, cases 1 and 2):
lone surrogate escapes, FIFOs and unlistable folders among the inputs, output
prefixes that cannot be written.  Every error is one line, exit status 2 for the
command's own arguments."""
from __future__ import annotations

import json
import os
import signal

import pytest

from megatron_hesnr.cli import main
from megatron_hesnr.data.dataset import PreparedDataset

GOOD = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Fix the bug."},
    {"role": "assistant", "content": "Let me look.\n```bash\nls -la\n```"},
]


@pytest.fixture
def alarm():
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def boom(*_):
        raise TimeoutError("hesnr prepare hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _prepare(inputs, tok, prefix, *extra):
    return main(["prepare", *map(str, inputs), "--tokenizer", str(tok), "--output-prefix", str(prefix),
                 "--no-progress", *extra])


def test_lone_surrogate_escape_is_made_encodable(tmp_path, deepseek_tokenizer_json, capsys):
    d = tmp_path / "in"
    d.mkdir()
    # Valid JSON, not valid Unicode: "\ud83d" without its low half, in tool output and in an action.
    text = json.dumps(GOOD[:2] + [{"role": "assistant", "content": "Emoji cut: \ud83d.\n```bash\necho '\ud83d'\n```"},
                                  {"role": "user", "content": "out: \udc00"}])
    assert "\\ud83d" in text
    (d / "surrogate.traj.json").write_text(text, encoding="utf-8")
    (d / "good.traj.json").write_text(json.dumps(GOOD), encoding="utf-8")
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "out" / "P", "--strict") == 0
    ds = PreparedDataset(str(tmp_path / "out" / "P"))
    assert len(ds) == 2
    i = next(j for j, doc in enumerate(ds.manifest["documents"]) if "surrogate" in doc["source"])
    _ids, mask = ds[i]
    assert mask.sum() > 0  # the action is still scored


def test_fifo_in_a_folder_is_skipped_with_a_message(tmp_path, deepseek_tokenizer_json, capsys, alarm):
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.traj.json").write_text(json.dumps(GOOD), encoding="utf-8")
    os.mkfifo(d / "pipe.traj.json")
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "out" / "P") == 0
    err = capsys.readouterr().err
    assert f"{d / 'pipe.traj.json'}: not a regular file (FIFO), skipped" in err
    assert len(PreparedDataset(str(tmp_path / "out" / "P"))) == 1
    # Named directly too, and through a glob.
    assert _prepare([d / "pipe.traj.json", d / "good.traj.json"], deepseek_tokenizer_json, tmp_path / "o2" / "P") == 0
    assert _prepare([f"{d}/*.json"], deepseek_tokenizer_json, tmp_path / "o3" / "P") == 0
    assert "FIFO" in capsys.readouterr().err


def test_unlistable_folder_is_reported(tmp_path, deepseek_tokenizer_json, capsys, monkeypatch):
    d = tmp_path / "in"
    (d / "locked").mkdir(parents=True)
    (d / "good.traj.json").write_text(json.dumps(GOOD), encoding="utf-8")
    real = os.scandir

    def scandir(path="."):  # what chmod 000 does for a non-root user
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "out" / "P") == 0
    err = capsys.readouterr().err
    assert f"{d / 'locked'}: cannot list folder (Permission denied)" in err
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "o2" / "P", "--strict") == 1


def test_output_prefix_that_cannot_be_created_is_one_line_exit_2(tmp_path, deepseek_tokenizer_json, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "good.traj.json").write_text(json.dumps(GOOD), encoding="utf-8")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for prefix in (blocker / "P", blocker / "sub" / "P"):
        assert _prepare([d], deepseek_tokenizer_json, prefix) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--output-prefix" in err[0] and str(blocker) in err[0], err
    # The folder is fine but a file cannot be written (here: a folder in its place).
    (tmp_path / "o" / "P_tokens.bin").mkdir(parents=True)
    assert _prepare([d], deepseek_tokenizer_json, tmp_path / "o" / "P") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output-prefix" in err[0] and "P_tokens.bin" in err[0], err


def test_inspect_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nothing") in err[0], err


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    import megatron_hesnr.analysis.cli_report as rep

    def broken(args):
        raise KeyError("surprise")

    monkeypatch.setattr(rep, "run", broken)
    assert main(["report", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "surprise" in err[0] and "--debug" in err[0]
    with pytest.raises(KeyError, match="surprise"):
        main(["--debug", "report", str(tmp_path / "r.jsonl")])
    with pytest.raises(KeyError, match="surprise"):
        main(["report", str(tmp_path / "r.jsonl"), "--debug"])
