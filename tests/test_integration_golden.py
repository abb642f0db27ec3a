"""Records, validation lines and logged scalars of both front ends, as committed.

The golden files under ``tests/golden/`` are written by ``tests/golden_outputs.py``; a change
of any key, integer, string or line of a JSONL record (other than its wall-clock fields), a
validation line or a logged scalar fails here, and so does any float that moves by more than
1e-12 relative.  Floats are not compared byte for byte: they differ in the last bits from one
CPU to the next (issue 30), and the files must pass on every machine, not only the one that
wrote them.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from float_tolerance import NUMBER, assert_text_close, text_differences
from golden_outputs import GOLDEN, OUTPUTS, hook_outputs


def _check_shape(got: str) -> None:
    assert got.count("\nrecord ") + got.startswith("record ") == 4 and got.count("line  validation hesnr-") == 4


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_outputs_match_golden_file(name, tmp_path):
    got = OUTPUTS[name](tmp_path)
    _check_shape(got)
    assert_text_close(got, (GOLDEN / name).read_text(), f"{name}: output differs from tests/golden/{name}")


def _one_ulp_up(logits: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(logits, torch.full_like(logits, math.inf))


def test_one_ulp_in_the_logits_still_matches_and_a_real_change_does_not(tmp_path):
    """The guard of issue 30: the last-bit differences another CPU makes pass; a real change fails."""
    want = (GOLDEN / "hook.txt").read_text()
    nudged = hook_outputs(tmp_path / "ulp", nudge=_one_ulp_up)
    _check_shape(nudged)
    assert nudged != want, "one ulp in every logit moved no float: the guard tests nothing"
    assert_text_close(nudged, want, "logits one ulp up")
    moved = hook_outputs(tmp_path / "1e-6", nudge=lambda x: x * (1 + 1e-6))
    assert text_differences(moved, want), "logits scaled by 1 + 1e-6 still match the golden file"


def _floats_one_ulp(text: str, direction: float) -> str:
    """Every full-precision float of ``text`` moved by one ulp (printed floats left as they are)."""
    def move(m: re.Match) -> str:
        tok = m.group(0)
        if not any(c in tok for c in ".eE") or len(tok.lstrip("-").replace(".", "")) < 15:
            return tok
        return repr(math.nextafter(float(tok), direction))
    return NUMBER.sub(move, text)


def test_golden_comparison_is_tolerant_of_ulps_only():
    want = (GOLDEN / "bridge.txt").read_text()
    up, down = _floats_one_ulp(want, math.inf), _floats_one_ulp(want, -math.inf)
    assert up != want and down != want
    assert not text_differences(up, want) and not text_differences(down, want)
    # ... and not of anything else: an integer, a string, a key, a float beyond 1e-12.
    for old, new in (('"num_tokens": 38', '"num_tokens": 39'), ('"dataset": "a"', '"dataset": "b"'),
                     ('"iteration": 4', '"iteration": 4.0'), ('"hesnr": ', '"hesnr_": ')):
        assert old in want, old
        assert text_differences(want.replace(old, new, 1), want), (old, new)
    first = next(m for m in NUMBER.finditer(want) if "." in m.group(0) and len(m.group(0)) > 15)
    x = float(first.group(0))
    bad = want[:first.start()] + repr(x * (1 + 1e-11)) + want[first.end():]
    assert text_differences(bad, want), "a float moved by 1e-11 relative passed"
    # a float printed to 7 digits may flip its last digit, not more
    line = next(ln for ln in want.splitlines() if "validation hesnr-a" in ln)
    value = re.search(r"hesnr value: (\d\.\d{6})E", line).group(1)
    last = int(value[-1])
    flip = value[:-1] + str((last + 1) % 10 if last < 9 else last - 1)
    assert not text_differences(line.replace(value, flip, 1), line)
    far = value[:-2] + str((int(value[-2]) + 2) % 10) + value[-1]
    assert text_differences(line.replace(value, far, 1), line)
