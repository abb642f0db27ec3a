"""hesnr prepare on broken inputs: one error line per bad file, the rest still prepared."""
from __future__ import annotations

import json
import pickle

import pytest

from megatron_hesnr.data.readers import Limits, ReadError, read_trajectories

GOOD_MESSAGES = [
    {"role": "system", "content": "You are an agent."},
    {"role": "user", "content": "Fix the bug."},
    {"role": "assistant", "content": "Let me look.\n```bash\nls -la  # list\n```"},
    {"role": "user", "content": "<output>a.py</output>"},
]


def _chat_line(i: int) -> dict:
    return {"instance_id": f"x-{i}", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": "task"},
        {"role": "assistant", "content": "I will run it.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "bash", "arguments": json.dumps({"command": f"python run_{i}.py  # go"})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "str_replace_editor", "arguments": json.dumps(
                {"command": "create", "path": "/a/b.py", "file_text": "x = 1  # one\n# two\ny = 2\n"})}}]},
    ]}


def _write_bad_files(d):
    bad = {
        "malformed.traj": b'{"history": [ {"role": "user", "content": "x"} oops ]}',
        "truncated.traj": json.dumps({"history": GOOD_MESSAGES})[:-20].encode(),
        "unknown.traj": json.dumps({"foo": 1, "bar": [1, 2]}).encode(),
        "numbers.traj.json": b"[1, 2, 3]",
        "empty.traj": b"",
        "blank.traj.json": b"  \n\n ",
        "latin1.traj": json.dumps({"history": GOOD_MESSAGES}).encode().replace(b"agent", b"ag\xe9nt"),
        "deep.traj": b"[" * 200_000 + b"]" * 200_000,
        "pickle.traj": pickle.dumps({"history": GOOD_MESSAGES}),
        "noassistant.traj.json": json.dumps([GOOD_MESSAGES[0], GOOD_MESSAGES[1]]).encode(),
        "badrole.traj.json": json.dumps([{"role": "robot", "content": "x"}]).encode(),
    }
    for name, data in bad.items():
        (d / name).write_bytes(data)
    return sorted(bad)


@pytest.mark.parametrize("name,data,reason", [
    ("a.traj", b'{"history": [ oops ]}', "malformed JSON"),
    ("a.traj", b'{"history": [{"role": "user"', "truncated JSON"),
    ("a.traj", b'{"x": 1}', "unknown schema"),
    ("a.traj", b"", "empty"),
    ("a.traj", b'{"history": "\xff"}', "not UTF-8"),
    ("a.traj", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("a.traj.json", b'[{"role": "user", "content": "x"}]', "no assistant message"),
    ("a.traj.json", b'[{"role": "assistant", "content": 5}]', "content must be"),
])
def test_reader_errors_say_why(tmp_path, name, data, reason):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ReadError, match=reason):
        read_trajectories(str(p))


def test_chat_jsonl_reads_lines_and_reports_bad_ones(tmp_path):
    p = tmp_path / "smith.jsonl"
    lines = [json.dumps(_chat_line(0)), "", "{not json", json.dumps({"other": 1}), "x" * 5000,
             json.dumps(_chat_line(1))]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = read_trajectories(str(p), Limits(max_line_bytes=4096))
    assert [t.source for t in res.trajectories] == [f"{p}:1", f"{p}:6"]
    assert len(res.errors) == 3
    assert res.errors[0].startswith("line 3: malformed JSON")
    assert res.errors[1].startswith("line 4: unknown schema")
    assert res.errors[2].startswith("line 5: longer than 4096 bytes")
    assert res.trajectories[0].num_actions == 2


def test_prepare_cli_reports_each_bad_file_and_keeps_going(tmp_path, deepseek_tokenizer_json, capsys):
    from megatron_hesnr.cli import main
    from megatron_hesnr.data.dataset import PreparedDataset

    d = tmp_path / "in"
    d.mkdir()
    bad = _write_bad_files(d)
    (d / "good.traj.json").write_text(json.dumps(GOOD_MESSAGES), encoding="utf-8")
    (d / "lines.jsonl").write_text(json.dumps(_chat_line(0)) + "\n{broken\n", encoding="utf-8")
    # Deeply nested code inside an action: the Python tokenizer gives up, the file is fine.
    nested = "x = " + "(" * 5000 + "1" + ")" * 5000 + "  # deep\n"
    deep_code = GOOD_MESSAGES[:3] + [{"role": "assistant", "content": f"Write it.\n```bash\ncat > d.py <<'EOF'\n{nested}EOF\n```"}]
    (d / "deepcode.traj.json").write_text(json.dumps(deep_code), encoding="utf-8")
    # Content that would do something if it were ever executed.
    marker = tmp_path / "pwned"
    evil = GOOD_MESSAGES[:2] + [{"role": "assistant", "content": f"```bash\ntouch {marker}\n```"}]
    (d / "evil.traj.json").write_text(json.dumps(evil), encoding="utf-8")
    tok = str(deepseek_tokenizer_json)
    prefix = str(tmp_path / "out" / "P")

    rc = main(["prepare", str(d), str(tmp_path / "missing.traj"), "--tokenizer", tok, "--output-prefix", prefix,
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0
    error_lines = [l for l in err.splitlines() if "error:" in l]
    for name in bad:
        hits = [l for l in error_lines if f"{d / name}:" in l]
        assert len(hits) == 1, (name, error_lines)
    assert any("missing.traj" in l for l in error_lines)
    assert any("lines.jsonl: line 2: truncated JSON" in l or "lines.jsonl: line 2: malformed JSON" in l
               for l in error_lines)
    assert len(error_lines) == len(bad) + 2
    assert not marker.exists()
    ds = PreparedDataset(prefix)
    assert len(ds) == 4   # good, lines.jsonl:1, deepcode, evil
    statuses = {i["path"].rsplit("/", 1)[-1]: i["status"] for i in ds.manifest["inputs"]}
    assert statuses["good.traj.json"] == "ok" and statuses["lines.jsonl"] == "partial"
    assert statuses["malformed.traj"] == "error"
    assert all(d_["actions_scored"] == d_["num_actions"] for d_ in ds.manifest["documents"])

    assert main(["prepare", str(d), "--tokenizer", tok, "--output-prefix", prefix + "2", "--no-progress",
                 "--strict"]) == 1
    capsys.readouterr()
    only_bad = [str(d / n) for n in bad]
    assert main(["prepare", *only_bad, "--tokenizer", tok, "--output-prefix", prefix + "3", "--no-progress"]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert not (tmp_path / "out" / "P3_manifest.json").exists()
    assert main(["prepare", str(d), "--tokenizer", str(tmp_path / "nope.json"), "--output-prefix", prefix]) == 2


def test_file_size_limit(tmp_path):
    p = tmp_path / "big.traj.json"
    p.write_text(json.dumps(GOOD_MESSAGES), encoding="utf-8")
    assert read_trajectories(str(p)).trajectories[0].num_actions == 1
    with pytest.raises(ReadError, match="larger than 100 bytes"):
        read_trajectories(str(p), Limits(max_file_bytes=100))
