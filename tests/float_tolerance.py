"""Compare computed outputs as their structure exactly and their floats to a tolerance.

Float results differ in the last bits from one processor to the next (vector widths, FMA, libm),
so a test that compares outputs written on another machine, or by another process, compares

- text (golden files, logged lines): every character outside numbers exactly, integers
  exactly as written, and every float within ``rel`` of the other (``abs_`` near 0, and one unit
  in the last printed digit for numbers printed to fewer digits, e.g. ``7.045026E-02``,
  whose rounding can flip);
- parsed JSON (records, summaries): keys, lengths, ints, bools, strings and ``None`` exactly,
  floats within ``rel`` / ``abs_``; NaN matches only NaN.
"""
from __future__ import annotations

import math
import re

#: Relative tolerance: CPU-to-CPU differences of float64 results are a few ulps (~1e-16).
REL = 1e-12
#: Absolute floor for values that cancel to (nearly) 0.
ABS = 1e-15

# A number not glued to a word (``iter_0000004``, ``run7`` and ``hesnr-a`` stay text).
NUMBER = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def _is_float_token(tok: str) -> bool:
    return any(c in tok for c in ".eE")


def _printed_unit(tok: str) -> float:
    """One unit in the last printed digit of a float token (``7.045026E-02`` -> 1e-8)."""
    mant, _, exp = tok.lower().partition("e")
    decimals = len(mant.partition(".")[2])
    return 10.0 ** (int(exp or 0) - decimals)


def floats_close(got: float, want: float, rel: float = REL, abs_: float = ABS) -> bool:
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    if math.isinf(want) or math.isinf(got):
        return got == want
    return abs(got - want) <= max(rel * max(abs(got), abs(want)), abs_)


def line_differences(got: str, want: str, rel: float = REL, abs_: float = ABS) -> list[str]:
    """Why one line differs from the other ([] when they match)."""
    g_nums, w_nums = NUMBER.findall(got), NUMBER.findall(want)
    if NUMBER.split(got) != NUMBER.split(want) or len(g_nums) != len(w_nums):
        return ["the text around the numbers differs"]
    out = []
    for i, (g, w) in enumerate(zip(g_nums, w_nums)):
        if not (_is_float_token(g) and _is_float_token(w)):
            if g != w:
                out.append(f"number {i}: {g} != {w} (integers compare exactly)")
            continue
        tol = max(_printed_unit(g), _printed_unit(w)) * 1.0000001
        if not (floats_close(float(g), float(w), rel, abs_) or abs(float(g) - float(w)) <= tol):
            out.append(f"number {i}: {g} vs {w} (relative difference "
                       f"{abs(float(g) - float(w)) / max(abs(float(w)), 1e-300):.3g})")
    return out


def text_differences(got: str, want: str, rel: float = REL, abs_: float = ABS, limit: int = 5) -> list[str]:
    """Line-by-line differences of two texts, at most ``limit`` of them."""
    g_lines, w_lines = got.split("\n"), want.split("\n")
    if len(g_lines) != len(w_lines):
        return [f"{len(g_lines)} lines, expected {len(w_lines)}"]
    out = []
    for n, (g, w) in enumerate(zip(g_lines, w_lines), 1):
        if g != w:
            out += [f"line {n}: {why}\n  got:  {g[:300]}\n  want: {w[:300]}" for why in line_differences(g, w, rel, abs_)]
        if len(out) >= limit:
            break
    return out[:limit]


def assert_text_close(got: str, want: str, what: str = "", rel: float = REL, abs_: float = ABS) -> None:
    diffs = text_differences(got, want, rel, abs_)
    assert not diffs, f"{what}: " + "\n".join(diffs)


def tree_differences(got, want, where: str = "", rel: float = REL, abs_: float = ABS) -> list[str]:
    """Differences of two parsed-JSON values: structure, ints, strings exact; floats to a tolerance."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or list(got) != list(want):
            return [f"{where or '.'}: keys {list(got) if isinstance(got, dict) else type(got).__name__} "
                    f"!= {list(want)}"]
        return [d for k in want for d in tree_differences(got[k], want[k], f"{where}.{k}", rel, abs_)]
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            return [f"{where}: {got!r:.200} != {want!r:.200}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in tree_differences(g, w, f"{where}[{i}]", rel, abs_)]
    if isinstance(want, float) and isinstance(got, float):
        return [] if floats_close(got, want, rel, abs_) else [f"{where}: {got!r} vs {want!r}"]
    if type(got) is not type(want) or got != want:
        return [f"{where}: {got!r:.200} != {want!r:.200}"]
    return []


def assert_tree_close(got, want, what: str = "", rel: float = REL, abs_: float = ABS) -> None:
    diffs = tree_differences(got, want, "", rel, abs_)
    assert not diffs, f"{what}: " + "; ".join(diffs[:5])
