"""Rendered text -> token ids + per-token category mask, through the offset mapping.

Mask values (:class:`~.segments.Category`): 0 not scored, 1 action, 2 thought,
3 observation (2 and 3 only when asked for, for breakdowns).

``mask[j]`` is the category of token ``j`` itself: token ``j`` is scored as a
*prediction target* (the logits at position ``j-1`` are scored against it).

Straddle rule (tokens whose characters fall in different regions): token ``j`` with
character offsets ``[s, e)`` gets category ``c > 0`` iff

1. *every* character in ``[s, e)`` lies in a region of category ``c`` (so a token that
   touches markup, thought, a template marker or another kind is never scored, and
   the text of a scored action token always lies inside action content), and
2. at least one of its characters is *kept* by the filters (so a token made only of
   comment or whitespace characters is not scored, while ``" foo"`` is).

Tokens with empty offsets (special tokens such as BOS) are not scored. Byte-level
tokens that split one character share its offsets and follow the same rule.
"""
from __future__ import annotations

import itertools
import logging
import re

import numpy as np

from .filters import FilterConfig, action_drop_ranges
from .render import Rendered
from .segments import Category, Kind

log = logging.getLogger(__name__)

#: Lone UTF-16 surrogates: valid JSON escapes (``"\\ud83d"``, common in tool output)
#: that are not Unicode text, so the tokenizer refuses the whole batch.
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str, source: str = "") -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (one code point for one,
    so every character offset, and therefore the mask, stays where it was)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        fixed, n = _SURROGATE.subn("\ufffd", text)
        log.warning("%s: %d lone surrogate escape(s) replaced by U+FFFD before tokenizing", source or "text", n)
        return fixed


#: Category per span kind, before the category switches are applied.
_KIND_CATEGORY = {
    Kind.ACTION_CONTENT: Category.ACTION,
    Kind.THOUGHT: Category.THOUGHT,
    Kind.OBSERVATION: Category.OBSERVATION,
}


def char_categories(rendered: Rendered, filters: FilterConfig, categories=(Category.ACTION,)):
    """-> (category uint8[N], kept bool[N], action index int32[N] (-1 outside actions))."""
    n = len(rendered.text)
    cat = np.zeros(n, dtype=np.uint8)
    kept = np.ones(n, dtype=bool)
    action = np.full(n, -1, dtype=np.int32)
    wanted = {int(c) for c in categories}
    for sp in rendered.spans:
        if sp.kind is Kind.ACTION_MARKUP:
            if not filters.markup and Category.ACTION in wanted:
                cat[sp.start:sp.end] = Category.ACTION
            continue
        c = _KIND_CATEGORY.get(sp.kind)
        if c is None or int(c) not in wanted:
            continue
        cat[sp.start:sp.end] = c
        if sp.kind is not Kind.ACTION_CONTENT:
            continue
        action[sp.start:sp.end] = sp.action
        raw = rendered.text[sp.start:sp.end] if sp.raw is None else sp.raw
        for s, e in action_drop_ranges(raw, sp.lang, filters):
            if sp.index_map is not None:
                s, e = int(sp.index_map[s]), int(sp.index_map[e])
            kept[sp.start + s:sp.start + e] = False
        if sp.escapes and filters.markup:
            for s, e in sp.escapes:   # JSON escapes are markup: a token touching them is not scored
                cat[sp.start + s:sp.start + e] = Category.NOT_SCORED
    return cat, kept, action


def token_mask(offsets: np.ndarray, cat: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Apply the straddle rule; ``offsets`` int [T, 2] character offsets."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    length = ends - starts
    mask = np.zeros(len(offsets), dtype=np.uint8)
    if len(offsets) == 0:
        return mask
    kept_pref = np.concatenate([[0], np.cumsum(kept & (cat > 0), dtype=np.int64)])
    has_kept = (kept_pref[ends] - kept_pref[starts]) > 0
    ok = has_kept & (length > 0)
    for c in np.unique(cat):
        if c == 0:
            continue
        pref = np.concatenate([[0], np.cumsum(cat == c, dtype=np.int64)])
        full = (pref[ends] - pref[starts]) == length
        mask[ok & full] = c
    return mask


def encode_and_mask(tokenizer, rendered: list[Rendered], filters: FilterConfig,
                    categories=(Category.ACTION,), add_special_tokens: bool = True):
    """-> list of (ids int64[T], mask uint8[T], actions_scored int) per rendered text.

    ``actions_scored`` counts the trajectory's actions with at least one scored token.
    """
    if not rendered:
        return []
    texts = [encodable(r.text, r.source) for r in rendered]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
    out = []
    for r, enc in zip(rendered, encodings):
        cat, kept, action = char_categories(r, filters, categories)
        n = len(enc.ids)
        # fromiter over the flattened pairs is ~3x faster than asarray on a list of tuples.
        offsets = np.fromiter(itertools.chain.from_iterable(enc.offsets), dtype=np.int64,
                              count=2 * n).reshape(n, 2)
        mask = token_mask(offsets, cat, kept)
        ids = np.array(enc.ids, dtype=np.int64)
        scored_actions = action[offsets[mask == Category.ACTION, 0]] if len(ids) else np.zeros(0, np.int32)
        n_scored = int(len(np.unique(scored_actions[scored_actions >= 0])))
        out.append((ids, mask, n_scored))
    return out
