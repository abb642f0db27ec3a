"""Records, validation lines and logged scalars of both front ends, byte for byte as committed.

The golden files under ``tests/golden/`` were written by ``tests/golden_outputs.py`` from the
code before the integration redesign; a refactor that changes any byte of a JSONL record
(other than its wall-clock fields), a validation line or a logged scalar fails here.
"""
from __future__ import annotations

import pytest

from golden_outputs import GOLDEN, OUTPUTS


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_outputs_match_golden_file(name, tmp_path):
    got = OUTPUTS[name](tmp_path)
    want = (GOLDEN / name).read_text()
    assert got.count("\nrecord ") + got.startswith("record ") == 4 and got.count("line  validation hesnr-") == 4
    assert got.splitlines() == want.splitlines(), f"{name}: output differs from tests/golden/{name}"
    assert got == want
