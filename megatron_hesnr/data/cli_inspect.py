"""``hesnr inspect P [--doc N]``: show exactly which tokens of a prepared trajectory are scored.

Without ``--doc`` it prints the manifest summary (tokenizer, template, filters, per-file
status). With ``--doc N`` it decodes document ``N`` and highlights every scored token
(mask > 0): coloured on a terminal, ``⟦...⟧`` markers otherwise (``⟦2:...⟧`` /
``⟦3:...⟧`` for thought / observation). ``--tokens`` lists the tokens one per line.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

_COLORS = {1: "\033[30;42m", 2: "\033[30;43m", 3: "\033[37;44m"}
_RESET = "\033[0m"
_NAMES = {0: "not scored", 1: "action", 2: "thought", 3: "observation"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prefix", metavar="P", help="output prefix given to `hesnr prepare`")
    p.add_argument("--doc", type=int, default=None, help="document (trajectory) index to show")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one named in the manifest)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="highlight with colours (default: on a terminal) or with ⟦...⟧ markers")
    p.add_argument("--tokens", action="store_true", help="one line per token: index, id, mask, text")
    p.add_argument("--max-chars", type=int, default=0, help="show only the last N characters (0: all)")


def _summary(ds) -> str:
    m = ds.manifest
    lines = [f"{ds.prefix}: {len(ds)} documents, {m['num_tokens']} tokens",
             f"tokenizer: {m['tokenizer']['path']} (vocab {m['tokenizer']['vocab_size']})",
             f"template: {m['template']}, tool calls: {m['tool_style']}, filters: "
             + ", ".join(f"{k}={'on' if v else 'off'}" for k, v in m["filters"].items()),
             "counts: " + ", ".join(f"{k}={v}" for k, v in m["counts"].items())]
    rf = m.get("row_filters")
    if rf:
        seed = f" (seed {rf['seed']})" if rf.get("sample") is not None else ""
        lines.append("row filters: " + ", ".join(
            f"{k}{' ' + str(rf[k]) if k in ('limit', 'sample') else ''}{seed if k == 'sample' else ''} dropped {n}"
            for k, n in rf["dropped"].items()))
    for f in m.get("inputs", []):
        extra = f" ({f['reason']})" if f["reason"] else (f" ({len(f['line_errors'])} bad lines)" if f["line_errors"] else "")
        lines.append(f"  {f['status']:7s} {f['documents']:5d} docs {f['tokens']:9d} tok  {f['path']}{extra}")
    return "\n".join(lines)


def _runs(mask: np.ndarray):
    """(start, end, value) runs of equal mask values."""
    if len(mask) == 0:
        return []
    cuts = np.flatnonzero(np.diff(mask.astype(np.int16))) + 1
    bounds = np.concatenate([[0], cuts, [len(mask)]])
    return [(int(s), int(e), int(mask[s])) for s, e in zip(bounds[:-1], bounds[1:])]


def render_doc(tokenizer, ids: np.ndarray, mask: np.ndarray, color: bool) -> str:
    out = []
    for s, e, v in _runs(mask):
        text = tokenizer.decode([int(i) for i in ids[s:e]], skip_special_tokens=False)
        if v == 0:
            out.append(text)
        elif color:
            # Colour line by line so that terminals do not paint the rest of each line.
            out.append("\n".join(f"{_COLORS.get(v, _COLORS[1])}{part}{_RESET}" if part else ""
                                 for part in text.split("\n")))
        else:
            out.append(f"⟦{'' if v == 1 else f'{v}:'}{text}⟧")
    return "".join(out)


def run(args) -> int:
    from .dataset import PreparedDataset, PreparedDatasetError
    from .pipeline import load_tokenizer

    try:
        ds = PreparedDataset(args.prefix, verify="sizes")
    except PreparedDatasetError as exc:
        print(f"hesnr inspect: {exc}", file=sys.stderr)
        return 2
    if args.doc is None:
        print(_summary(ds))
        return 0
    if not -len(ds) <= args.doc < len(ds):
        print(f"hesnr inspect: --doc {args.doc} out of range ({len(ds)} documents)", file=sys.stderr)
        return 2
    tok_path = args.tokenizer or ds.manifest["tokenizer"]["path"]
    try:
        tokenizer = load_tokenizer(tok_path)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hesnr inspect: {exc} (pass --tokenizer)", file=sys.stderr)
        return 2
    if tokenizer.get_vocab_size(with_added_tokens=True) != ds.vocab_size:
        print(f"hesnr inspect: {tok_path} has vocab {tokenizer.get_vocab_size(with_added_tokens=True)}, "
              f"the dataset was made with {ds.vocab_size}", file=sys.stderr)
        return 2
    ids, mask = ds[args.doc]
    doc = ds.manifest.get("documents", [{}] * len(ds))[args.doc]
    counts = np.bincount(mask, minlength=4)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    print(f"# document {args.doc} of {len(ds)}: {doc.get('source', '?')}")
    print("# " + ", ".join(f"{_NAMES[i]}={int(counts[i])}" for i in range(4)) + f" (of {len(ids)} tokens); "
          f"actions with scored tokens: {doc.get('actions_scored', '?')}/{doc.get('num_actions', '?')}")
    print("# scored tokens are " + ("highlighted (green action, yellow thought, blue observation)" if color
                                   else "inside ⟦...⟧ (⟦2:...⟧ thought, ⟦3:...⟧ observation)"))
    if args.tokens:
        for j, (i, v) in enumerate(zip(ids, mask)):
            print(f"{j:7d} {int(i):7d} {int(v)} {tokenizer.id_to_token(int(i))!r}")
        return 0
    text = render_doc(tokenizer, ids, mask, color)
    if args.max_chars > 0:
        text = text[-args.max_chars:]
    try:
        print(text)
    except BrokenPipeError:   # `hesnr inspect ... | head`
        sys.stdout = open(os.devnull, "w")
    return 0
