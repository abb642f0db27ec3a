"""The small bugs behind the demo trajectories (written for megatron-hesnr).

Each entry is one repository with one Python module that has one bug, the issue a
user filed about it, a script that reproduces it, the fix, and a test file.
``generate.py`` runs the scripts for real to get the observations.
"""

BUGS = [
    dict(
        repo="listkit",
        path="listkit/chunks.py",
        func="chunk",
        source='''"""Splitting sequences into pieces."""


def chunk(items, size):
    """Split ``items`` into lists of ``size`` elements (the last one may be shorter)."""
    if size <= 0:
        raise ValueError("size must be positive")
    out = []
    for start in range(0, len(items) - size + 1, size):
        out.append(list(items[start:start + size]))
    return out


def pairwise(items):
    """Consecutive pairs: [1, 2, 3] -> [(1, 2), (2, 3)]."""
    return list(zip(items, items[1:]))
''',
        old='''    for start in range(0, len(items) - size + 1, size):''',
        new='''    for start in range(0, len(items), size):''',
        issue='''chunk() silently drops the last elements

When the length of the list is not a multiple of the chunk size, the trailing
elements are lost:

```python
>>> from listkit.chunks import chunk
>>> chunk([1, 2, 3, 4, 5], 2)
[[1, 2], [3, 4]]
```

I expected `[[1, 2], [3, 4], [5]]`, as the docstring says.''',
        repro='''from listkit.chunks import chunk

print(chunk([1, 2, 3, 4, 5], 2))
print(chunk([1, 2, 3], 3))
print(chunk([], 4))
''',
        why="The loop stops at `len(items) - size + 1`, so a start index for the last, shorter chunk is never produced. Iterating over `range(0, len(items), size)` gives every start, and slicing already handles the short tail.",
        test_path="tests/test_chunks.py",
        test='''from listkit.chunks import chunk, pairwise


def test_chunk_exact():
    assert chunk([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]


def test_chunk_tail():
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_pairwise():
    assert pairwise([1, 2, 3]) == [(1, 2), (2, 3)]
''',
    ),
    dict(
        repo="statsy",
        path="statsy/central.py",
        func="median",
        source='''"""Measures of central tendency."""


def mean(values):
    values = list(values)
    if not values:
        raise ValueError("mean of empty data")
    return sum(values) / len(values)


def median(values):
    values = sorted(values)
    if not values:
        raise ValueError("median of empty data")
    mid = len(values) // 2
    return values[mid]
''',
        old='''    mid = len(values) // 2
    return values[mid]''',
        new='''    mid = len(values) // 2
    if len(values) % 2 == 0:
        # Even length: the median is the mean of the two middle values.
        return (values[mid - 1] + values[mid]) / 2
    return values[mid]''',
        issue='''median of an even number of values is wrong

`statsy.central.median([1, 2, 3, 4])` returns `3`, but the median of that list is `2.5`.''',
        repro='''from statsy.central import median

print(median([1, 2, 3, 4]))
print(median([5, 1, 3]))
print(median([10, 2]))
''',
        why="For an even number of values the function returns the upper of the two middle elements. The median is the average of `values[mid - 1]` and `values[mid]` in that case.",
        test_path="tests/test_central.py",
        test='''import pytest

from statsy.central import mean, median


def test_median_odd():
    assert median([3, 1, 2]) == 2


def test_median_even():
    assert median([1, 2, 3, 4]) == 2.5


def test_mean_empty():
    with pytest.raises(ValueError):
        mean([])
''',
    ),
    dict(
        repo="webtext",
        path="webtext/slug.py",
        func="slugify",
        source='''"""URL slugs."""
import re
import unicodedata


def slugify(text):
    """'Hello, World!' -> 'hello-world'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^a-zA-Z0-9]", "-", text.lower())
    return text
''',
        old='''    text = re.sub(r"[^a-zA-Z0-9]", "-", text.lower())
    return text''',
        new='''    text = re.sub(r"[^a-z0-9]+", "-", text.lower())
    return text.strip("-")''',
        issue='''slugify leaves repeated and trailing dashes

```
>>> slugify("Hello, World!")
'hello--world-'
```

The docstring promises `hello-world`.''',
        repro='''from webtext.slug import slugify

for title in ["Hello, World!", "  Already-a-slug  ", "Crème brûlée"]:
    print(repr(slugify(title)))
''',
        why="Every single non-alphanumeric character becomes its own dash, so runs of punctuation give runs of dashes, and nothing strips them at the ends. Replacing runs with `+` and stripping `-` fixes both.",
        test_path="tests/test_slug.py",
        test='''from webtext.slug import slugify


def test_punctuation():
    assert slugify("Hello, World!") == "hello-world"


def test_accents():
    assert slugify("Crème brûlée") == "creme-brulee"
''',
    ),
    dict(
        repo="timeparse",
        path="timeparse/duration.py",
        func="parse_duration",
        source='''"""Parsing durations such as '1h30m' or '45s'."""
import re

_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text):
    """Return the number of seconds in a duration string."""
    match = re.match(r"(\\d+)([hms])", text.strip())
    if match is None:
        raise ValueError(f"invalid duration: {text!r}")
    number, unit = match.groups()
    return int(number) * _UNITS[unit]
''',
        old='''    match = re.match(r"(\\d+)([hms])", text.strip())
    if match is None:
        raise ValueError(f"invalid duration: {text!r}")
    number, unit = match.groups()
    return int(number) * _UNITS[unit]''',
        new='''    text = text.strip()
    if not re.fullmatch(r"(\\d+[hms])+", text):
        raise ValueError(f"invalid duration: {text!r}")
    return sum(int(number) * _UNITS[unit] for number, unit in re.findall(r"(\\d+)([hms])", text))''',
        issue='''parse_duration ignores everything after the first unit

`parse_duration("1h30m")` gives 3600 instead of 5400, and `parse_duration("2m10s")` gives 120.''',
        repro='''from timeparse.duration import parse_duration

print(parse_duration("1h30m"))
print(parse_duration("2m10s"))
print(parse_duration("45s"))
''',
        why="`re.match` only looks at the first number-unit pair. Validating the whole string with `fullmatch` and summing over `findall` handles every component.",
        test_path="tests/test_duration.py",
        test='''import pytest

from timeparse.duration import parse_duration


def test_compound():
    assert parse_duration("1h30m") == 5400


def test_invalid():
    with pytest.raises(ValueError):
        parse_duration("10 minutes")
''',
    ),
    dict(
        repo="confmerge",
        path="confmerge/merge.py",
        func="deep_merge",
        source='''"""Merging nested configuration dictionaries."""


def deep_merge(base, override):
    """Return a new dict: ``override`` merged into ``base`` recursively."""
    result = base
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result
''',
        old='''    result = base
''',
        new='''    result = dict(base)
''',
        issue='''deep_merge modifies the base config

After merging a user config into the defaults, the defaults dict itself has changed,
so the next merge starts from the wrong values.''',
        repro='''from confmerge.merge import deep_merge

defaults = {"db": {"host": "localhost", "port": 5432}, "debug": False}
merged = deep_merge(defaults, {"db": {"port": 6000}, "debug": True})
print(merged)
print(defaults)
''',
        why="`result = base` does not copy, so every assignment writes into the caller's dict. Copying each level with `dict(base)` keeps the inputs untouched; nested levels are copied by the recursive call.",
        test_path="tests/test_merge.py",
        test='''from confmerge.merge import deep_merge


def test_inputs_unchanged():
    base = {"a": {"b": 1}}
    deep_merge(base, {"a": {"b": 2}})
    assert base == {"a": {"b": 1}}


def test_nested():
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
''',
    ),
    dict(
        repo="calendarx",
        path="calendarx/years.py",
        func="is_leap_year",
        source='''"""Year arithmetic for the Gregorian calendar."""


def is_leap_year(year):
    return year % 4 == 0


def days_in_year(year):
    return 366 if is_leap_year(year) else 365
''',
        old='''    return year % 4 == 0''',
        new='''    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)''',
        issue='''1900 reported as a leap year

`days_in_year(1900)` returns 366. 1900 was not a leap year (divisible by 100 but not by 400).''',
        repro='''from calendarx.years import days_in_year, is_leap_year

for year in (1900, 2000, 2023, 2024):
    print(year, is_leap_year(year), days_in_year(year))
''',
        why="Only the divisible-by-4 rule is implemented. Gregorian years divisible by 100 are leap years only when they are also divisible by 400.",
        test_path="tests/test_years.py",
        test='''from calendarx.years import is_leap_year


def test_century_rules():
    assert not is_leap_year(1900)
    assert is_leap_year(2000)
    assert is_leap_year(2024)
''',
    ),
    dict(
        repo="numutil",
        path="numutil/bounds.py",
        func="clamp",
        source='''"""Keeping numbers inside bounds."""


def clamp(value, low, high):
    """Limit ``value`` to the closed interval [low, high]."""
    if low > high:
        raise ValueError("low must not exceed high")
    return min(low, max(value, high))
''',
        old='''    return min(low, max(value, high))''',
        new='''    return max(low, min(value, high))''',
        issue='''clamp always returns the lower bound

```python
clamp(5, 0, 10)   # -> 0, expected 5
clamp(15, 0, 10)  # -> 0, expected 10
```''',
        repro='''from numutil.bounds import clamp

print(clamp(5, 0, 10))
print(clamp(15, 0, 10))
print(clamp(-3, 0, 10))
''',
        why="`min` and `max` are swapped: `max(value, high)` is at least `high`, and the outer `min` with `low` then always returns `low`. It must be `max(low, min(value, high))`.",
        test_path="tests/test_bounds.py",
        test='''from numutil.bounds import clamp


def test_inside():
    assert clamp(5, 0, 10) == 5


def test_outside():
    assert clamp(15, 0, 10) == 10
    assert clamp(-3, 0, 10) == 0
''',
    ),
    dict(
        repo="textstats",
        path="textstats/counts.py",
        func="word_count",
        source='''"""Simple text statistics."""


def word_count(text):
    """Number of whitespace-separated words."""
    return len(text.split(" "))


def line_count(text):
    return len(text.splitlines())
''',
        old='''    return len(text.split(" "))''',
        new='''    return len(text.split())''',
        issue='''word_count counts spaces

`word_count("hello  world")` (two spaces) returns 3, and `word_count("")` returns 1.''',
        repro='''from textstats.counts import word_count

print(word_count("hello  world"))
print(word_count(""))
print(word_count("one\\ntwo three"))
''',
        why="`split(\" \")` yields an empty string between consecutive spaces and for the empty text, and does not split on newlines. `str.split()` with no argument splits on any run of whitespace and drops empty pieces.",
        test_path="tests/test_counts.py",
        test='''from textstats.counts import line_count, word_count


def test_words():
    assert word_count("hello  world") == 2
    assert word_count("") == 0


def test_lines():
    assert line_count("a\\nb") == 2
''',
    ),
    dict(
        repo="nestlib",
        path="nestlib/flatten.py",
        func="flatten",
        source='''"""Flattening nested containers."""
from collections.abc import Iterable


def flatten(items):
    """Yield the leaves of arbitrarily nested iterables."""
    for item in items:
        if isinstance(item, Iterable):
            yield from flatten(item)
        else:
            yield item
''',
        old='''        if isinstance(item, Iterable):''',
        new='''        # Strings are iterable too, and a 1-character string contains itself.
        if isinstance(item, Iterable) and not isinstance(item, (str, bytes)):''',
        issue='''flatten crashes on lists of strings

`list(flatten(["ab", ["c"]]))` raises `RecursionError` instead of returning `['ab', 'c']`.''',
        repro='''from nestlib.flatten import flatten

print(list(flatten([1, [2, [3, 4]], 5])))
print(list(flatten(["ab", ["c"]])))
''',
        why="A string is an `Iterable`, and iterating a one-character string yields the same string again, so the recursion never ends. Strings and bytes must be treated as leaves.",
        test_path="tests/test_flatten.py",
        test='''from nestlib.flatten import flatten


def test_numbers():
    assert list(flatten([1, [2, [3]]])) == [1, 2, 3]


def test_strings_are_leaves():
    assert list(flatten(["ab", ["c"]])) == ["ab", "c"]
''',
    ),
    dict(
        repo="signals",
        path="signals/smooth.py",
        func="moving_average",
        source='''"""Smoothing of numeric series."""


def moving_average(values, window):
    """Means of every run of ``window`` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    for i in range(len(values) - window):
        out.append(sum(values[i:i + window]) / window)
    return out
''',
        old='''    for i in range(len(values) - window):''',
        new='''    for i in range(len(values) - window + 1):''',
        issue='''moving_average misses the last window

`moving_average([1, 2, 3, 4], 2)` gives `[1.5, 2.5]`; it should be `[1.5, 2.5, 3.5]`.
With `window == len(values)` the result is empty.''',
        repro='''from signals.smooth import moving_average

print(moving_average([1, 2, 3, 4], 2))
print(moving_average([2, 4, 6], 3))
''',
        why="There are `len(values) - window + 1` windows, and the loop stops one short of that.",
        test_path="tests/test_smooth.py",
        test='''from signals.smooth import moving_average


def test_windows():
    assert moving_average([1, 2, 3, 4], 2) == [1.5, 2.5, 3.5]


def test_full_window():
    assert moving_average([2, 4, 6], 3) == [4.0]
''',
    ),
    dict(
        repo="casing",
        path="casing/convert.py",
        func="camel_to_snake",
        source='''"""Identifier case conversion."""
import re


def camel_to_snake(name):
    """'parseHTTPResponse' -> 'parse_http_response'."""
    return re.sub(r"([A-Z])", r"_\\1", name).lower().lstrip("_")


def snake_to_camel(name):
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)
''',
        old='''    return re.sub(r"([A-Z])", r"_\\1", name).lower().lstrip("_")''',
        new='''    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\\1_\\2", name)
    name = re.sub(r"([a-z0-9])([A-Z])", r"\\1_\\2", name)
    return name.lower()''',
        issue='''camel_to_snake splits acronyms into letters

`camel_to_snake("parseHTTPResponse")` returns `parse_h_t_t_p_response`.''',
        repro='''from casing.convert import camel_to_snake

for name in ["parseHTTPResponse", "simpleName", "HTTPServer", "getX"]:
    print(name, "->", camel_to_snake(name))
''',
        why="Every capital letter gets an underscore. The usual two-step rule puts one boundary between an acronym and a following capitalised word, and another between a lowercase letter or digit and a capital.",
        test_path="tests/test_convert.py",
        test='''from casing.convert import camel_to_snake, snake_to_camel


def test_acronyms():
    assert camel_to_snake("parseHTTPResponse") == "parse_http_response"
    assert camel_to_snake("HTTPServer") == "http_server"


def test_roundtrip():
    assert snake_to_camel(camel_to_snake("simpleName")) == "simpleName"
''',
    ),
    dict(
        repo="numerals",
        path="numerals/roman.py",
        func="roman_to_int",
        source='''"""Roman numerals."""

VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}


def roman_to_int(text):
    total = 0
    for char in text.upper():
        total += VALUES[char]
    return total
''',
        old='''    total = 0
    for char in text.upper():
        total += VALUES[char]
    return total''',
        new='''    digits = [VALUES[char] for char in text.upper()]
    total = 0
    for value, following in zip(digits, digits[1:] + [0]):
        # A smaller numeral before a larger one is subtracted (IV = 4).
        total += -value if value < following else value
    return total''',
        issue='''roman_to_int ignores subtractive notation

`roman_to_int("IV")` returns 6 and `roman_to_int("MCMXC")` returns 2190.''',
        repro='''from numerals.roman import roman_to_int

for numeral in ["III", "IV", "IX", "MCMXC"]:
    print(numeral, roman_to_int(numeral))
''',
        why="All numerals are added. In Roman notation a numeral followed by a larger one is subtracted, so each value has to be compared with the next one.",
        test_path="tests/test_roman.py",
        test='''from numerals.roman import roman_to_int


def test_additive():
    assert roman_to_int("XVI") == 16


def test_subtractive():
    assert roman_to_int("IV") == 4
    assert roman_to_int("MCMXC") == 1990
''',
    ),
    dict(
        repo="searching",
        path="searching/bisect_search.py",
        func="binary_search",
        source='''"""Searching sorted sequences."""


def binary_search(items, target):
    """Index of ``target`` in the sorted ``items``, or -1."""
    lo, hi = 0, len(items) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
''',
        old='''    while lo < hi:''',
        new='''    while lo <= hi:''',
        issue='''binary_search cannot find the last element

```python
binary_search([1, 3, 5, 7], 7)  # -1
binary_search([4], 4)           # -1
```''',
        repro='''from searching.bisect_search import binary_search

print(binary_search([1, 3, 5, 7], 7))
print(binary_search([4], 4))
print(binary_search([1, 3, 5, 7], 3))
''',
        why="With an inclusive `hi`, the loop must also run when `lo == hi`: that last candidate is never compared.",
        test_path="tests/test_search.py",
        test='''from searching.bisect_search import binary_search


def test_ends():
    assert binary_search([1, 3, 5, 7], 7) == 3
    assert binary_search([1, 3, 5, 7], 1) == 0


def test_missing():
    assert binary_search([1, 3], 2) == -1
''',
    ),
    dict(
        repo="envflags",
        path="envflags/parse.py",
        func="parse_bool",
        source='''"""Reading settings from environment variables."""
import os


def parse_bool(value):
    return bool(value)


def flag(name, default=False):
    raw = os.environ.get(name)
    return default if raw is None else parse_bool(raw)
''',
        old='''def parse_bool(value):
    return bool(value)''',
        new='''_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(value):
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")''',
        issue='''DEBUG=false turns debugging on

Setting `DEBUG=false` or `DEBUG=0` in the environment still enables debug mode.''',
        repro='''import os

from envflags.parse import flag

for raw in ["false", "0", "true", "yes"]:
    os.environ["DEBUG"] = raw
    print(raw, flag("DEBUG"))
''',
        why="`bool(value)` of any non-empty string is `True`, including \"false\" and \"0\". The text has to be compared with known spellings, and anything else should be an error rather than a guess.",
        test_path="tests/test_parse.py",
        test='''import pytest

from envflags.parse import parse_bool


def test_spellings():
    assert parse_bool("false") is False
    assert parse_bool("Yes") is True


def test_garbage():
    with pytest.raises(ValueError):
        parse_bool("maybe")
''',
    ),
    dict(
        repo="progress",
        path="progress/ratio.py",
        func="percent",
        source='''"""Percentages for progress displays."""


def percent(done, total):
    return round(100.0 * done / total, 1)


def bar(done, total, width=20):
    filled = int(width * percent(done, total) / 100)
    return "[" + "#" * filled + "." * (width - filled) + "]"
''',
        old='''def percent(done, total):
    return round(100.0 * done / total, 1)''',
        new='''def percent(done, total):
    if total == 0:
        # Nothing to do counts as finished.
        return 100.0
    return round(100.0 * done / total, 1)''',
        issue='''Progress bar crashes for an empty job list

With zero items the progress display raises `ZeroDivisionError`.''',
        repro='''from progress.ratio import bar, percent

print(percent(3, 4))
print(bar(0, 0))
''',
        why="`percent` divides by `total` without checking it. An empty job is complete, so 100% is the natural value for `total == 0`.",
        test_path="tests/test_ratio.py",
        test='''from progress.ratio import bar, percent


def test_percent():
    assert percent(1, 4) == 25.0


def test_empty():
    assert percent(0, 0) == 100.0
    assert bar(0, 0, width=4) == "[####]"
''',
    ),
    dict(
        repo="listkit2",
        path="listkit2/unique.py",
        func="dedupe",
        source='''"""Removing duplicates."""


def dedupe(items):
    """Drop repeated items, keeping the first occurrence of each."""
    return list(set(items))
''',
        old='''    return list(set(items))''',
        new='''    seen = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out''',
        issue='''dedupe scrambles the order

`dedupe(["b", "a", "b", "c"])` should be `["b", "a", "c"]` but the order of the result changes from run to run.''',
        repro='''from listkit2.unique import dedupe

print(dedupe([3, 1, 3, 2, 1]))
print(dedupe([10, 9, 8, 9]))
''',
        why="A `set` does not keep insertion order. Tracking seen items while appending to a list keeps the first occurrences in order.",
        test_path="tests/test_unique.py",
        test='''from listkit2.unique import dedupe


def test_order():
    assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]
''',
    ),
    dict(
        repo="humanize",
        path="humanize/sizes.py",
        func="format_bytes",
        source='''"""Human readable sizes."""

UNITS = ["B", "KiB", "MiB", "GiB", "TiB"]


def format_bytes(size):
    value = float(size)
    for unit in UNITS:
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
''',
        old='''        if value < 1000:''',
        new='''        if value < 1024:''',
        issue='''format_bytes(1000) prints "1.0 KiB"

Sizes from 1000 to 1023 bytes are shown as `1.0 KiB`, e.g. `format_bytes(1000) == "1.0 KiB"`, although 1000 bytes is less than one KiB (1024 bytes).''',
        repro='''from humanize.sizes import format_bytes

for size in [512, 1000, 1023, 1024, 5 * 1024 ** 2]:
    print(size, format_bytes(size))
''',
        why="The switch to the next unit happens at 1000 while the division is by 1024. For binary units the threshold has to be 1024 too.",
        test_path="tests/test_sizes.py",
        test='''from humanize.sizes import format_bytes


def test_boundary():
    assert format_bytes(1023) == "1023.0 B"
    assert format_bytes(1024) == "1.0 KiB"
''',
    ),
    dict(
        repo="iniparse",
        path="iniparse/simple.py",
        func="parse_settings",
        source='''"""A tiny 'key = value' settings parser."""


def parse_settings(text):
    settings = {}
    for line in text.splitlines():
        if not line:
            continue
        key, value = line.split("=")
        settings[key] = value
    return settings
''',
        old='''    for line in text.splitlines():
        if not line:
            continue
        key, value = line.split("=")
        settings[key] = value''',
        new='''    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: expected 'key = value', got {line!r}")
        key, value = line.split("=", 1)
        settings[key.strip()] = value.strip()''',
        issue='''parse_settings keeps spaces and chokes on comments

```
name = demo
# the port
url = http://x/?a=b
```

gives keys with trailing spaces (`'name '`) and then fails with
`ValueError: not enough values to unpack` on the comment line.''',
        repro='''from iniparse.simple import parse_settings

text = """name = demo
# the port
port = 8080
url = http://x/?a=b
"""
print(parse_settings(text))
''',
        why="Lines are split on every `=` and nothing is stripped or skipped. Comments should be cut first, keys and values stripped, and only the first `=` separates them (values may contain `=`).",
        test_path="tests/test_simple.py",
        test='''import pytest

from iniparse.simple import parse_settings


def test_parse():
    assert parse_settings("a = 1  # one\\n\\nb=x=y\\n") == {"a": "1", "b": "x=y"}


def test_bad_line():
    with pytest.raises(ValueError, match="line 1"):
        parse_settings("oops")
''',
    ),
    dict(
        repo="structs",
        path="structs/stack.py",
        func="Stack.pop",
        source='''"""A LIFO stack."""


class EmptyStackError(Exception):
    pass


class Stack:
    def __init__(self):
        self._items = []

    def push(self, item):
        self._items.append(item)

    def pop(self):
        return self._items.pop()

    def __len__(self):
        return len(self._items)
''',
        old='''    def pop(self):
        return self._items.pop()''',
        new='''    def pop(self):
        if not self._items:
            raise EmptyStackError("pop from an empty stack")
        return self._items.pop()''',
        issue='''Stack.pop raises IndexError instead of EmptyStackError

The module defines `EmptyStackError`, and our code catches it, but popping an empty
stack raises `IndexError: pop from empty list`.''',
        repro='''from structs.stack import EmptyStackError, Stack

s = Stack()
s.push(1)
print(s.pop())
try:
    s.pop()
except EmptyStackError as exc:
    print("EmptyStackError:", exc)
''',
        why="`pop` forwards to `list.pop`, whose error is `IndexError`. Checking for an empty stack first and raising the module's own exception gives callers the documented error.",
        test_path="tests/test_stack.py",
        test='''import pytest

from structs.stack import EmptyStackError, Stack


def test_lifo():
    s = Stack()
    s.push(1)
    s.push(2)
    assert s.pop() == 2


def test_empty():
    with pytest.raises(EmptyStackError):
        Stack().pop()
''',
    ),
    dict(
        repo="cachekit",
        path="cachekit/lru.py",
        func="LRUCache.get",
        source='''"""A least-recently-used cache."""
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity):
        self.capacity = capacity
        self._data = OrderedDict()

    def get(self, key, default=None):
        return self._data.get(key, default)

    def put(self, key, value):
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.capacity:
            self._data.popitem(last=False)
''',
        old='''    def get(self, key, default=None):
        return self._data.get(key, default)''',
        new='''    def get(self, key, default=None):
        if key not in self._data:
            return default
        # A read makes the key the most recently used one.
        self._data.move_to_end(key)
        return self._data[key]''',
        issue='''LRUCache evicts entries that were just read

```python
c = LRUCache(2)
c.put("a", 1); c.put("b", 2)
c.get("a")
c.put("c", 3)
c.get("a")  # None, but "b" should have been evicted
```''',
        repro='''from cachekit.lru import LRUCache

c = LRUCache(2)
c.put("a", 1)
c.put("b", 2)
c.get("a")
c.put("c", 3)
print(c.get("a"), c.get("b"), c.get("c"))
''',
        why="`get` reads without refreshing the key's position, so a read key is still the oldest one and is evicted first. Moving it to the end on every hit makes reads count as use.",
        test_path="tests/test_lru.py",
        test='''from cachekit.lru import LRUCache


def test_read_refreshes():
    c = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)
    assert c.get("a") == 1
    assert c.get("b") is None
''',
    ),
    dict(
        repo="pathutil",
        path="pathutil/normalize.py",
        func="normalize",
        source='''"""Normalising slash-separated paths without touching the file system."""


def normalize(path):
    parts = []
    for part in path.split("/"):
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)
''',
        old='''    parts = []
    for part in path.split("/"):
        if part == "..":
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)''',
        new='''    absolute = path.startswith("/")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not absolute:
                parts.append(part)
            continue
        parts.append(part)
    result = "/".join(parts)
    return ("/" + result) if absolute else (result or ".")''',
        issue='''normalize mishandles double slashes and leading ..

```
normalize("a//b/../c")  -> 'a//c' (the empty component is kept), expected 'a/c'
normalize("../x")       -> IndexError: pop from empty list
```''',
        repro='''from pathutil.normalize import normalize

for p in ["a//b/../c", "/usr/./lib/", "../x"]:
    print(repr(p), "->", repr(normalize(p)))
''',
        why="Empty components from `//` or a trailing slash are kept, and `..` at the start pops from an empty list. Empty parts must be skipped, a leading `..` kept for relative paths, and the leading slash remembered.",
        test_path="tests/test_normalize.py",
        test='''from pathutil.normalize import normalize


def test_cases():
    assert normalize("a//b/../c") == "a/c"
    assert normalize("/usr/./lib/") == "/usr/lib"
    assert normalize("../x") == "../x"
    assert normalize("a/..") == "."
''',
    ),
    dict(
        repo="phonetics",
        path="phonetics/vowels.py",
        func="count_vowels",
        source='''"""Counting letters."""

VOWELS = "aeiou"


def count_vowels(text):
    return sum(1 for char in text if char in VOWELS)
''',
        old='''    return sum(1 for char in text if char in VOWELS)''',
        new='''    return sum(1 for char in text.lower() if char in VOWELS)''',
        issue='''count_vowels ignores capital letters

`count_vowels("APPLE")` is 0 and `count_vowels("Orange")` is 2.''',
        repro='''from phonetics.vowels import count_vowels

print(count_vowels("APPLE"), count_vowels("Orange"), count_vowels("rhythm"))
''',
        why="Only lowercase vowels are in `VOWELS`. Lowercasing the text before the membership test counts both cases.",
        test_path="tests/test_vowels.py",
        test='''from phonetics.vowels import count_vowels


def test_case_insensitive():
    assert count_vowels("APPLE") == 2
    assert count_vowels("Orange") == 3
''',
    ),
    dict(
        repo="tagging",
        path="tagging/tags.py",
        func="add_tag",
        source='''"""Tag lists for records."""


def add_tag(tag, tags=[]):
    """Return ``tags`` with ``tag`` appended."""
    tags.append(tag)
    return tags
''',
        old='''def add_tag(tag, tags=[]):
    """Return ``tags`` with ``tag`` appended."""
    tags.append(tag)
    return tags''',
        new='''def add_tag(tag, tags=None):
    """Return a new list: ``tags`` with ``tag`` appended."""
    return [*(tags or []), tag]''',
        issue='''Tags leak between records

Each call of `add_tag("x")` without a list returns a list that contains the tags of all
previous calls.''',
        repro='''from tagging.tags import add_tag

print(add_tag("urgent"))
print(add_tag("later"))
''',
        why="The default `tags=[]` is created once, when the function is defined, and every call appends to that same list. Using `None` as the default and building a new list avoids the shared state and no longer mutates the caller's list either.",
        test_path="tests/test_tags.py",
        test='''from tagging.tags import add_tag


def test_fresh_default():
    assert add_tag("a") == ["a"]
    assert add_tag("b") == ["b"]


def test_input_kept():
    base = ["x"]
    assert add_tag("y", base) == ["x", "y"]
    assert base == ["x"]
''',
    ),
    dict(
        repo="dateranges",
        path="dateranges/ranges.py",
        func="date_range",
        source='''"""Ranges of calendar dates."""
from datetime import date, timedelta


def date_range(start, end):
    """All dates from ``start`` to ``end``, both included."""
    days = (end - start).days
    return [start + timedelta(days=i) for i in range(days)]
''',
        old='''    return [start + timedelta(days=i) for i in range(days)]''',
        new='''    return [start + timedelta(days=i) for i in range(days + 1)]''',
        issue='''date_range leaves out the end date

The docstring says both ends are included, but `date_range(date(2024, 1, 1), date(2024, 1, 3))` has only two days, and a one-day range is empty.''',
        repro='''from datetime import date

from dateranges.ranges import date_range

print(date_range(date(2024, 1, 1), date(2024, 1, 3)))
print(date_range(date(2024, 2, 29), date(2024, 2, 29)))
''',
        why="`range(days)` stops before the end date. An inclusive range of dates has `days + 1` elements.",
        test_path="tests/test_ranges.py",
        test='''from datetime import date

from dateranges.ranges import date_range


def test_inclusive():
    assert len(date_range(date(2024, 1, 1), date(2024, 1, 3))) == 3
    assert date_range(date(2024, 2, 29), date(2024, 2, 29)) == [date(2024, 2, 29)]
''',
    ),
    dict(
        repo="semver",
        path="semver/version.py",
        func="is_newer",
        source='''"""Comparing version strings."""


def is_newer(candidate, current):
    """True when version ``candidate`` is later than ``current``."""
    return candidate > current
''',
        old='''    return candidate > current''',
        new='''    return _key(candidate) > _key(current)


def _key(version):
    # Compare numerically, part by part: "1.10" is later than "1.9".
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"invalid version: {version!r}") from None''',
        issue='''Update check says 1.9 is newer than 1.10

`is_newer("1.10.0", "1.9.2")` returns False, so users on 1.9 are never told about 1.10.''',
        repro='''from semver.version import is_newer

print(is_newer("1.10.0", "1.9.2"))
print(is_newer("2.0", "10.0"))
print(is_newer("1.2.3", "1.2.3"))
''',
        why="The strings are compared character by character, so \"1.10\" < \"1.9\". Each dotted part has to be compared as an integer, which tuples of ints do.",
        test_path="tests/test_version.py",
        test='''import pytest

from semver.version import is_newer


def test_numeric():
    assert is_newer("1.10.0", "1.9.2")
    assert not is_newer("2.0", "10.0")


def test_invalid():
    with pytest.raises(ValueError):
        is_newer("1.x", "1.0")
''',
    ),
    dict(
        repo="billing",
        path="billing/invoice.py",
        func="line_total",
        source='''"""Invoice arithmetic."""


def line_total(quantity, unit_price):
    """Total of one invoice line, rounded to cents."""
    return round(quantity * unit_price, 2)


def invoice_total(lines):
    return round(sum(line_total(q, p) for q, p in lines), 2)
''',
        old='''def line_total(quantity, unit_price):
    """Total of one invoice line, rounded to cents."""
    return round(quantity * unit_price, 2)''',
        new='''from decimal import ROUND_HALF_UP, Decimal


def line_total(quantity, unit_price):
    """Total of one invoice line, rounded half up to cents."""
    # Decimal from str: the float 1.005 is really 1.00499999..., so it would round down.
    amount = Decimal(str(quantity)) * Decimal(str(unit_price))
    return float(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))''',
        issue='''Invoice lines round half-cents down

A line of 1 x 1.005 is billed as 1.0 instead of 1.01, and 3 x 0.335 as 1.0 instead of 1.01.
Accounting requires rounding half up.''',
        repro='''from billing.invoice import invoice_total, line_total

print(line_total(1, 1.005))
print(line_total(3, 0.335))
print(invoice_total([(1, 1.005), (2, 2.5)]))
''',
        why="Binary floats cannot hold 1.005 exactly, and `round` uses banker's rounding on top of that. Computing in `Decimal` from the decimal strings and quantizing with `ROUND_HALF_UP` gives the commercial result.",
        test_path="tests/test_invoice.py",
        test='''from billing.invoice import invoice_total, line_total


def test_half_up():
    assert line_total(1, 1.005) == 1.01
    assert line_total(3, 0.335) == 1.01


def test_total():
    assert invoice_total([(1, 1.005), (2, 2.5)]) == 6.01
''',
    ),
    dict(
        repo="resilient",
        path="resilient/retry.py",
        func="retry",
        source='''"""Retrying flaky operations."""


def retry(func, attempts=3):
    """Call ``func`` until it succeeds, at most ``attempts`` times."""
    for _ in range(attempts):
        try:
            return func()
        except Exception:
            pass
''',
        old='''    for _ in range(attempts):
        try:
            return func()
        except Exception:
            pass''',
        new='''    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    for attempt in range(attempts):
        try:
            return func()
        except Exception:
            if attempt == attempts - 1:
                raise''',
        issue='''retry hides the error when every attempt fails

If the operation fails all three times, `retry` returns `None` and the caller carries on
with a missing result. The last exception should propagate.''',
        repro='''from resilient.retry import retry

calls = []


def always_fails():
    calls.append(1)
    raise ConnectionError("server unavailable")


try:
    result = retry(always_fails)
    print("result:", result)
except ConnectionError as exc:
    print("raised:", exc)
print("calls:", len(calls))
''',
        why="The loop swallows every exception and falls off the end, returning `None`. The last failure has to be re-raised so the caller sees it.",
        test_path="tests/test_retry.py",
        test='''import pytest

from resilient.retry import retry


def test_eventually_succeeds():
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] < 2:
            raise OSError("flaky")
        return "ok"

    assert retry(flaky) == "ok"


def test_reraises():
    with pytest.raises(ZeroDivisionError):
        retry(lambda: 1 / 0)
''',
    ),
    dict(
        repo="matrices",
        path="matrices/ops.py",
        func="transpose",
        source='''"""Plain-list matrix operations."""


def transpose(matrix):
    n = len(matrix)
    return [[matrix[j][i] for j in range(n)] for i in range(n)]


def shape(matrix):
    return len(matrix), len(matrix[0]) if matrix else 0
''',
        old='''    n = len(matrix)
    return [[matrix[j][i] for j in range(n)] for i in range(n)]''',
        new='''    return [list(column) for column in zip(*matrix)]''',
        issue='''transpose fails for non-square matrices

`transpose([[1, 2, 3], [4, 5, 6]])` raises `IndexError` (or silently drops a column for a 3x2 input).''',
        repro='''from matrices.ops import transpose

print(transpose([[1, 2], [3, 4]]))
print(transpose([[1, 2, 3], [4, 5, 6]]))
''',
        why="Both dimensions use `len(matrix)`, which is only right for square matrices. `zip(*matrix)` produces the columns for any shape.",
        test_path="tests/test_ops.py",
        test='''from matrices.ops import transpose


def test_rectangular():
    assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]


def test_square():
    assert transpose([[1, 2], [3, 4]]) == [[1, 3], [2, 4]]
''',
    ),
    dict(
        repo="csvlite",
        path="csvlite/rows.py",
        func="parse_row",
        source='''"""Reading CSV rows."""


def parse_row(line):
    return line.rstrip("\\n").split(",")
''',
        old='''def parse_row(line):
    return line.rstrip("\\n").split(",")''',
        new='''import csv


def parse_row(line):
    # The csv module handles quoted fields that contain commas and quotes.
    return next(csv.reader([line.rstrip("\\n")]))''',
        issue='''Quoted fields with commas are split

`parse_row('1,"Smith, John",42')` returns four fields instead of three.''',
        repro='''from csvlite.rows import parse_row

print(parse_row('1,"Smith, John",42'))
print(parse_row('a,b,c'))
''',
        why="Splitting on every comma ignores CSV quoting. The standard `csv` module parses quoted fields correctly.",
        test_path="tests/test_rows.py",
        test='''from csvlite.rows import parse_row


def test_quoted():
    assert parse_row('1,"Smith, John",42') == ["1", "Smith, John", "42"]


def test_plain():
    assert parse_row("a,b\\n") == ["a", "b"]
''',
    ),
    dict(
        repo="units",
        path="units/temperature.py",
        func="fahrenheit_to_celsius",
        source='''"""Temperature conversions."""


def celsius_to_fahrenheit(c):
    return c * 9 / 5 + 32


def fahrenheit_to_celsius(f):
    return f - 32 * 5 / 9
''',
        old='''    return f - 32 * 5 / 9''',
        new='''    return (f - 32) * 5 / 9''',
        issue='''fahrenheit_to_celsius(212) is 194.2

Boiling water should be 100 °C.''',
        repro='''from units.temperature import celsius_to_fahrenheit, fahrenheit_to_celsius

print(fahrenheit_to_celsius(212))
print(fahrenheit_to_celsius(32))
print(fahrenheit_to_celsius(celsius_to_fahrenheit(37)))
''',
        why="Operator precedence: `32 * 5 / 9` is evaluated first. The subtraction must be parenthesised.",
        test_path="tests/test_temperature.py",
        test='''from units.temperature import fahrenheit_to_celsius


def test_fixed_points():
    assert fahrenheit_to_celsius(212) == 100
    assert fahrenheit_to_celsius(32) == 0
''',
    ),
    dict(
        repo="wordfreq",
        path="wordfreq/top.py",
        func="top_words",
        source='''"""Word frequencies."""
from collections import Counter


def top_words(text, n=3):
    """The ``n`` most frequent words; ties in alphabetical order."""
    counts = Counter(text.lower().split())
    return sorted(counts.items(), key=lambda item: item[1], reverse=True)[:n]
''',
        old='''    return sorted(counts.items(), key=lambda item: item[1], reverse=True)[:n]''',
        new='''    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]''',
        issue='''top_words does not break ties alphabetically

For "b a c a b c d" the three words with count 2 come back in order of first appearance (`b, a, c`), but the docstring promises alphabetical order for ties.''',
        repro='''from wordfreq.top import top_words

print(top_words("b a c a b c d"))
print(top_words("x y y", n=2))
''',
        why="The sort key is only the count, and Python's sort is stable, so tied words keep their insertion order. Sorting by `(-count, word)` gives descending counts with alphabetical ties.",
        test_path="tests/test_top.py",
        test='''from wordfreq.top import top_words


def test_ties():
    assert top_words("b a c a b c d") == [("a", 2), ("b", 2), ("c", 2)]
''',
    ),
    dict(
        repo="intervals",
        path="intervals/merge.py",
        func="merge_intervals",
        source='''"""Interval arithmetic."""


def merge_intervals(intervals):
    """Merge overlapping closed intervals [start, end]."""
    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return merged
''',
        old='''    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = end''',
        new='''    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)''',
        issue='''merge_intervals gives wrong results for unsorted or nested input

```python
merge_intervals([[1, 10], [2, 3]])  # [[1, 3]], expected [[1, 10]]
merge_intervals([[5, 6], [1, 2]])   # [[5, 2]], expected [[1, 2], [5, 6]]
```''',
        repro='''from intervals.merge import merge_intervals

print(merge_intervals([[1, 10], [2, 3]]))
print(merge_intervals([[5, 6], [1, 2], [2, 4]]))
''',
        why="Two problems: the input is not sorted by start, and a contained interval overwrites the end with a smaller value. Sorting first and keeping the `max` of the two ends fixes both.",
        test_path="tests/test_merge.py",
        test='''from intervals.merge import merge_intervals


def test_nested():
    assert merge_intervals([[1, 10], [2, 3]]) == [[1, 10]]


def test_unsorted():
    assert merge_intervals([[5, 6], [1, 2], [2, 4]]) == [[1, 4], [5, 6]]
''',
    ),
    dict(
        repo="emailcheck",
        path="emailcheck/validate.py",
        func="is_valid_email",
        source='''"""Light-weight e-mail address checks."""
import re

_PATTERN = re.compile(r"[\\w.+-]+@[\\w-]+\\.[\\w.]+")


def is_valid_email(address):
    return _PATTERN.match(address) is not None
''',
        old='''    return _PATTERN.match(address) is not None''',
        new='''    return _PATTERN.fullmatch(address) is not None''',
        issue='''Addresses with trailing garbage pass validation

`is_valid_email("bob@example.com; DROP TABLE users")` returns True.''',
        repro='''from emailcheck.validate import is_valid_email

for address in ["bob@example.com", "bob@example.com; DROP TABLE users", "not an email"]:
    print(repr(address), is_valid_email(address))
''',
        why="`re.match` anchors only at the start, so anything may follow a valid prefix. `fullmatch` requires the whole string to match the pattern.",
        test_path="tests/test_validate.py",
        test='''from emailcheck.validate import is_valid_email


def test_valid():
    assert is_valid_email("first.last+tag@mail.example.org")


def test_trailing_text():
    assert not is_valid_email("bob@example.com; DROP TABLE users")
''',
    ),
    dict(
        repo="textwrap2",
        path="textwrap2/truncate.py",
        func="truncate",
        source='''"""Shortening text for display."""


def truncate(text, limit, suffix="..."):
    """At most ``limit`` characters, ending with ``suffix`` when cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + suffix
''',
        old='''    return text[:limit] + suffix''',
        new='''    if limit <= len(suffix):
        return suffix[:limit]
    return text[:limit - len(suffix)] + suffix''',
        issue='''truncate returns strings longer than the limit

`truncate("abcdefghij", 5)` returns `'abcde...'`, 8 characters, but the result must fit in 5.''',
        repro='''from textwrap2.truncate import truncate

for limit in (5, 10, 2):
    result = truncate("abcdefghij", limit)
    print(limit, repr(result), len(result))
''',
        why="The suffix is appended after cutting at `limit`, so the result is `len(suffix)` characters too long. The cut must leave room for the suffix, and a limit shorter than the suffix needs its own case.",
        test_path="tests/test_truncate.py",
        test='''from textwrap2.truncate import truncate


def test_fits():
    assert truncate("abcdefghij", 5) == "ab..."
    assert truncate("abc", 5) == "abc"
    assert len(truncate("abcdefghij", 2)) == 2
''',
    ),
    dict(
        repo="scheduler",
        path="scheduler/weekdays.py",
        func="next_weekday",
        source='''"""Scheduling on working days."""
from datetime import timedelta


def next_weekday(day):
    """The next working day (Monday to Friday) after ``day``."""
    day = day + timedelta(days=1)
    if day.weekday() == 5:
        day += timedelta(days=1)
    return day
''',
        old='''    day = day + timedelta(days=1)
    if day.weekday() == 5:
        day += timedelta(days=1)
    return day''',
        new='''    day = day + timedelta(days=1)
    while day.weekday() >= 5:  # 5 = Saturday, 6 = Sunday
        day += timedelta(days=1)
    return day''',
        issue='''next_weekday returns Sunday

For a Friday, `next_weekday` returns the Sunday; for a Saturday it returns the Sunday too.''',
        repro='''from datetime import date

from scheduler.weekdays import next_weekday

for d in [date(2024, 3, 7), date(2024, 3, 8), date(2024, 3, 9)]:
    n = next_weekday(d)
    print(d, d.strftime("%a"), "->", n, n.strftime("%a"))
''',
        why="Only one day is skipped when the next day is a Saturday, which lands on Sunday, and a Sunday itself is never skipped. Advancing while the weekday is 5 or 6 reaches Monday in every case.",
        test_path="tests/test_weekdays.py",
        test='''from datetime import date

from scheduler.weekdays import next_weekday


def test_weekend_skipped():
    assert next_weekday(date(2024, 3, 8)) == date(2024, 3, 11)
    assert next_weekday(date(2024, 3, 9)) == date(2024, 3, 11)
    assert next_weekday(date(2024, 3, 7)) == date(2024, 3, 8)
''',
    ),
    dict(
        repo="geometry",
        path="geometry/polygon.py",
        func="polygon_area",
        source='''"""Areas of simple polygons."""


def polygon_area(points):
    """Area of a simple polygon given as (x, y) vertices in order."""
    total = 0.0
    for i in range(len(points) - 1):
        x1, y1 = points[i]
        x2, y2 = points[i + 1]
        total += x1 * y2 - x2 * y1
    return total / 2
''',
        old='''    total = 0.0
    for i in range(len(points) - 1):
        x1, y1 = points[i]
        x2, y2 = points[i + 1]
        total += x1 * y2 - x2 * y1
    return total / 2''',
        new='''    total = 0.0
    for i in range(len(points)):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % len(points)]  # wrap around to close the polygon
        total += x1 * y2 - x2 * y1
    return abs(total) / 2''',
        issue='''polygon_area is wrong and sometimes negative

The area of the square `[(1, 1), (3, 1), (3, 3), (1, 3)]` comes out as 5.0 instead of 4.0, and
the triangle `[(1, 0), (5, 0), (1, 3)]` gives 7.5 instead of 6.0.''',
        repro='''from geometry.polygon import polygon_area

square = [(1, 1), (3, 1), (3, 3), (1, 3)]
print(polygon_area(square))
print(polygon_area(list(reversed(square))))
print(polygon_area([(1, 0), (5, 0), (1, 3)]))
''',
        why="The shoelace sum skips the edge from the last vertex back to the first, and the sign depends on orientation. Wrapping the index and taking the absolute value fixes both.",
        test_path="tests/test_polygon.py",
        test='''from geometry.polygon import polygon_area


def test_square():
    square = [(1, 1), (3, 1), (3, 3), (1, 3)]
    assert polygon_area(square) == 4.0
    assert polygon_area(square[::-1]) == 4.0


def test_triangle():
    assert polygon_area([(1, 0), (5, 0), (1, 3)]) == 6.0
''',
    ),
]
