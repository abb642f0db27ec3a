"""`hesnr report` on adversarial input (issue 16, case 7): Excel's BOM, an output
directory that is a file, duplicate records whose times carry different UTC offsets."""
from __future__ import annotations

import numpy as np
import pytest
from report_synth import make_run, write_jsonl

from megatron_hesnr.analysis import RecordError, read_records, read_scores
from megatron_hesnr.cli import main


@pytest.fixture(scope="module")
def recs():
    return make_run(np.linspace(0, 1, 3), n=600, seed=5)


def test_scores_csv_with_a_utf8_byte_order_mark(tmp_path, recs):
    path = tmp_path / "scores.csv"
    rows = "".join(f"{r['checkpoint']},{0.1 * i}\r\n" for i, r in enumerate(recs))
    path.write_bytes(b"\xef\xbb\xbf" + f"checkpoint,score\r\n{rows}".encode())  # what Excel writes
    table = read_scores(path)
    assert len(table.scores) == 3 and not table.bad_lines


def test_output_dir_that_is_a_file_is_one_line_exit_2(tmp_path, recs, capsys):
    write_jsonl(tmp_path / "r.jsonl", recs)
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        assert main(["report", str(tmp_path / "r.jsonl"), "--output-dir", str(out), "--bootstrap", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--output-dir" in err[0] and str(blocker) in err[0], err


def test_duplicate_times_compare_as_instants_across_utc_offsets(tmp_path, recs):
    # 03:00+05:00 is 22:00Z the day before: older than 23:30Z although it sorts later as text.
    older = dict(recs[0], time="2026-11-28T03:00:00+05:00", metrics=dict(recs[0]["metrics"], note="old"))
    newer = dict(recs[0], time="2026-11-27T23:30:00Z", metrics=dict(recs[0]["metrics"], note="new"))
    for order in ([newer, older], [older, newer]):
        write_jsonl(tmp_path / "r.jsonl", order + recs[1:])
        kept = [r for r in read_records(tmp_path / "r.jsonl").records if r.iteration == recs[0]["iteration"]]
        assert kept[0].metrics["note"] == "new", order[0]["time"]


def test_time_that_is_not_iso_8601_names_the_field(tmp_path, recs):
    write_jsonl(tmp_path / "r.jsonl", [dict(recs[0], time="yesterday")])
    with pytest.raises(RecordError, match="'time'"):
        read_records(tmp_path / "r.jsonl", strict=True)
