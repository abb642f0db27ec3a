"""Trajectory preparation on every shared sample file with the real DeepSeek tokenizer,
and the written Megatron dataset read back."""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from megatron_hesnr.data.filters import FilterConfig
from megatron_hesnr.data.pipeline import PrepareConfig, expand_inputs, process_files
from megatron_hesnr.data.readers import read_trajectories
from megatron_hesnr.data.render import render
from megatron_hesnr.data.segments import Category, Kind
from megatron_hesnr.data.tokenize_mask import encode_and_mask


@pytest.fixture(scope="session")
def sample_files(trajectories_dir) -> list[str]:
    files, missing = expand_inputs([str(trajectories_dir)])
    assert not missing and len(files) >= 13
    return files


def _python_comment_chars(code: str) -> list[tuple[int, int]]:
    """Comments of ``code`` and of its SWE-agent edit / heredoc bodies, found with
    ``tokenize`` here (independently of the filter code) wherever it tokenizes."""
    pieces = [(0, code)]
    for m in re.finditer(r"(?s)^edit [^\n]*\n(.*?)\nend_of_edit", code):
        pieces.append((m.start(1), m.group(1)))
    for m in re.finditer(r"(?s)<< *'?(\w+)'?\n(.*?)\n\1", code):
        pieces.append((m.start(2), m.group(2)))
    found = []
    for base, piece in pieces:
        starts = [0] + [m.end() for m in re.finditer("\n", piece)]
        try:
            toks = [t for t in tokenize.generate_tokens(io.StringIO(piece).readline) if t.type == tokenize.COMMENT]
        except (tokenize.TokenError, SyntaxError):
            continue
        found += [(base + starts[t.start[0] - 1] + t.start[1], base + starts[t.end[0] - 1] + t.end[1]) for t in toks]
    return found


@pytest.mark.parametrize("template,tool_style", [("chatml", "xml"), ("plain", "json")])
def test_every_sample_file_scores_exactly_action_content(tokenizer, sample_files, template, tool_style):
    comment_tokens_seen = 0
    for path in sample_files:
        trajs = read_trajectories(path).trajectories
        assert len(trajs) == 1, path
        rd = render(trajs[0], template, tool_style)
        (ids, mask, scored), = encode_and_mask(tokenizer, [rd], FilterConfig())
        assert rd.num_actions > 0, path
        assert scored == rd.num_actions, f"{path}: only {scored}/{rd.num_actions} actions have scored tokens"
        # Which action-content span each character belongs to (-1: any other kind).
        span_of = np.full(len(rd.text), -1)
        comment = np.zeros(len(rd.text), dtype=bool)
        for k, sp in enumerate(rd.spans):
            if sp.kind is Kind.ACTION_CONTENT:
                span_of[sp.start:sp.end] = k
                if sp.raw is None:   # xml style: the rendered text is the raw value
                    for s, e in _python_comment_chars(rd.text[sp.start:sp.end]):
                        comment[sp.start + s:sp.start + e] = True
        enc = tokenizer.encode(rd.text)
        assert enc.ids == ids.tolist()
        offsets = np.asarray(enc.offsets)
        assert set(np.unique(mask)) <= {0, 1}
        scored_idx = np.flatnonzero(mask)
        assert len(scored_idx) > 0
        for j in scored_idx:
            s, e = offsets[j]
            piece = rd.text[s:e]
            assert e > s and span_of[s] >= 0 and (span_of[s:e] == span_of[s]).all(), \
                f"{path}: scored token {j} {piece!r} is not inside one action content"
            assert piece.strip(), f"{path}: scored token {j} is whitespace {piece!r}"
            text_chars = [i for i in range(s, e) if not rd.text[i].isspace()]
            assert not all(comment[i] for i in text_chars), f"{path}: scored token {j} {piece!r} is a comment"
        # Comment tokens exist in the samples, so the check above can fail.
        for j in np.flatnonzero(mask == 0):
            s, e = offsets[j]
            if e > s and comment[s:e].any() and span_of[s] >= 0:
                comment_tokens_seen += 1
    if template == "chatml":
        assert comment_tokens_seen > 0


def test_filter_switches_change_what_is_scored(tokenizer, sample_files):
    path = next(p for p in sample_files if "function_calling__marshmallow" in p)
    traj = read_trajectories(path).trajectories[0]

    def run(**kw):
        cats = kw.pop("categories", (Category.ACTION,))
        rd = render(traj, "chatml", "xml")
        (ids, mask, _), = encode_and_mask(tokenizer, [rd], FilterConfig(**kw), cats)
        return rd, ids, mask

    rd, ids, base = run()
    text = lambda ids, m: tokenizer.decode(ids[m].tolist())  # noqa: E731
    assert "round to nearest" not in text(ids, base == 1)
    _, ids2, no_comments = run(comments=False)
    assert "round to nearest" in tokenizer.decode(ids2[no_comments == 1].tolist()).replace("  ", " ")
    _, ids3, no_markup = run(markup=False)
    assert (no_markup == 1).sum() > (base == 1).sum()
    assert "parameter" in text(ids3, no_markup == 1)
    _, ids4, no_ws = run(whitespace=False)
    ws = [j for j in np.flatnonzero(no_ws == 1) if not tokenizer.decode([int(ids4[j])]).strip()]
    assert ws, "with the whitespace filter off, whitespace tokens are scored"
    _, ids5, cats = run(categories=(Category.ACTION, Category.THOUGHT, Category.OBSERVATION))
    assert {1, 2, 3} <= set(np.unique(cats).tolist())
    np.testing.assert_array_equal(cats == 1, base == 1)


def test_prepare_cli_writes_dataset_that_reads_back_equal(tokenizer, sample_files, deepseek_tokenizer_json,
                                                          trajectories_dir, tmp_path, capsys):
    from megatron_hesnr.cli import main
    from megatron_hesnr.data.dataset import PreparedDataset, PreparedDatasetError

    prefix = str(tmp_path / "out" / "P")
    rc = main(["prepare", str(trajectories_dir), "--tokenizer", str(deepseek_tokenizer_json),
               "--output-prefix", prefix, "--workers", "2", "--no-progress", "--strict",
               "--categories", "action,thought"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "total" in out.out and "actions scored" in out.out
    ds = PreparedDataset(prefix)
    assert len(ds) == len(sample_files)
    cfg = PrepareConfig(categories=(Category.ACTION, Category.THOUGHT))
    expected = [d for r in process_files(sample_files, tokenizer, cfg) for d in r.docs]
    assert [d.source for d in expected] == [ds.source(i) for i in range(len(ds))]
    for i, d in enumerate(expected):
        ids, mask = ds[i]
        assert ids.dtype == np.int64 and mask.dtype == np.uint8
        np.testing.assert_array_equal(ids, d.ids)
        np.testing.assert_array_equal(mask, d.mask)
    # Documents outlive the dataset (its memory map is closed on collection).
    ids0, mask0 = ds[0]
    ids0_copy, mask0_copy = ids0.copy(), mask0.copy()
    m = ds.manifest
    del ds
    import gc

    gc.collect()
    np.testing.assert_array_equal(ids0, ids0_copy)
    np.testing.assert_array_equal(mask0, mask0_copy)
    assert m["tokenizer"]["vocab_size"] == tokenizer.get_vocab_size(with_added_tokens=True)
    assert m["filters"] == {"markup": True, "comments": True, "whitespace": True}
    assert m["counts"]["action"] == sum(int((d.mask == 1).sum()) for d in expected) > 0
    assert m["counts"]["thought"] > 0
    assert all(f["status"] == "ok" for f in m["inputs"])

    # inspect shows scored text in markers, and the summary
    assert main(["inspect", prefix, "--doc", "0", "--color", "never"]) == 0
    shown = capsys.readouterr().out
    assert "⟦" in shown and "⟦2:" in shown
    assert main(["inspect", prefix]) == 0
    assert "filters: markup=on" in capsys.readouterr().out

    # The hash binds the mask file to the token file: a changed mask byte is caught.
    mask_bin = Path(prefix + "_mask.bin")
    data = bytearray(mask_bin.read_bytes())
    data[len(data) // 2] ^= 1
    mask_bin.write_bytes(bytes(data))
    with pytest.raises(PreparedDatasetError, match="_mask.bin: sha256"):
        PreparedDataset(prefix)
    Path(prefix + "_manifest.json").unlink()
    with pytest.raises(PreparedDatasetError, match="manifest not found"):
        PreparedDataset(prefix)
