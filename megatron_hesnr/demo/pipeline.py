"""The demo, end to end: inputs -> tokenizer -> prepare -> train -> evaluate -> report.

Every stage uses the project's real code path: ``hesnr prepare`` and ``hesnr report``
are run through their own argument parsers (in this process), the evaluation through
the ``HESNREvaluator`` the Megatron-LM hook and the Bridge callback drive
(:mod:`.evaluation`).  Only the model and its training loop are demo-sized.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.memory import MemoryDataset
from ..data.pipeline import load_tokenizer
from ..evaluation import EvalDataset, HESNRConfig
from ..evaluation.eval_pass import plan_set
from ..metric.vocab import padded_vocab_size
from . import bpe, sources
from .evaluation import RECORD_RUN, EvalJob, run_evaluation
from .gpt import GPTConfig, TinyGPT
from .proxy_score import PROXY_DESCRIPTION, PROXY_NAME, PROXY_SCORE_LABEL, greedy_prefix, write_scores_csv
from .training import TrainConfig, train

log = logging.getLogger("megatron_hesnr.demo")


@dataclass(kw_only=True)
class DemoConfig:
    """Sizes of one demo run (the defaults fit in about 3 minutes on 2 cores)."""

    output_dir: Path
    trajectories: list[Path] | None = None
    """The user's trajectory files or directories (default: the bundled set)."""
    tokenizer: Path | None = None
    """The user's tokenizer.json (default: a byte-level BPE trained here)."""
    template: str | None = None
    """``hesnr prepare --template`` (None: prepare's default)."""
    vocab_size: int = 4000
    """BPE vocabulary when training the tokenizer (padded to 4096 for TP=2, as Megatron does)."""
    code_bytes: int = 1_500_000
    """Standard-library source text for the tokenizer and training."""
    seq_length: int = 256
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_stride: int = 192
    eval_batch_size: int = 16
    tp: int = 2
    eval_every: int = 3
    """Every n-th trajectory is held out for evaluation."""
    threads: int | None = None
    """torch threads (None: torch's default, one per core)."""
    bootstrap: int = 2000
    """``hesnr report --bootstrap`` resamples."""
    check_all: bool = False
    """Cross-check the TP evaluation against one process at every checkpoint, not only the last."""
    max_eval_logits: float = 1.5e9
    """CPU budget per checkpoint: evaluated positions x padded vocabulary (whole held-out
    trajectories are dropped from the end beyond it, with a warning)."""
    hf_export: bool = True
    """Also write every checkpoint as a Hugging Face checkpoint under ``<output_dir>/hf/iter_NNNNNNN/``
    (:mod:`.hf_export`), for ``hesnr score --hf`` / ``--vllm``."""

    @classmethod
    def quick(cls, output_dir: Path, **overrides) -> "DemoConfig":
        """The CI smoke-test size: the same stages, tiny sizes (well under a minute)."""
        # One head of 32 (vLLM's CPU attention takes head sizes 32, 64, ...); windows seq_length / 2
        # apart, the default of --hesnr-window-stride and `hesnr score --window-stride`.
        base = dict(output_dir=output_dir, vocab_size=1000, code_bytes=120_000, seq_length=64,
                    hidden_size=32, num_layers=1, num_heads=1, eval_stride=32, eval_batch_size=32,
                    train=TrainConfig(steps=24, batch_size=4, warmup_steps=4, num_checkpoints=3),
                    # One thread: a model this small gains nothing from two, and a busy
                    # CI machine makes OpenMP's spinning threads very slow.
                    threads=1, bootstrap=200, check_all=True, max_eval_logits=3e8)
        base.update(overrides)
        return cls(**base)


class Stages:
    """Numbered progress lines with the time each stage took."""

    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.perf_counter()
        self.timings: dict[str, float] = {}
        self._name, self._start = None, None

    def start(self, name: str, what: str) -> None:
        self._close()
        self.n += 1
        self._name, self._start = name, time.perf_counter()
        log.info("[%d/%d] %s", self.n, self.total, what)

    def _close(self) -> None:
        if self._name is not None:
            dt = time.perf_counter() - self._start
            self.timings[self._name] = dt
            log.info("      done in %.1fs", dt)
            self._name = None

    def finish(self) -> float:
        self._close()
        return time.perf_counter() - self.t0


def run_subcommand(name: str, argv: list[str]) -> int:
    """Run ``hesnr <name> argv`` in this process, through the subcommand's own parser."""
    from ..cli import COMMANDS

    import importlib

    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        raise RuntimeError(f"`hesnr {name}` is not available in this installation ({exc}); "
                           f"install the package with its extras: pip install 'megatron-hesnr[all]'") from None
    parser = argparse.ArgumentParser(prog=f"hesnr {name}")
    parser.add_argument("-v", "--verbose", action="store_true")
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    log.debug("hesnr %s %s", name, " ".join(argv))
    return int(module.run(args) or 0)


def read_prepared(prefix: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Documents of a prepared dataset: (token ids, mask categories) per trajectory."""
    from ..data import PreparedDataset

    ds = PreparedDataset(str(prefix))
    # Copies: the arrays are views into megatron-core's memory map, which is closed
    # (not just unreferenced) when the dataset object is collected.
    return [(np.array(ids, dtype=np.int64), np.array(mask, dtype=np.int64)) for ids, mask in
            (ds[i] for i in range(len(ds)))]


def prepare(inputs: list[Path], tokenizer: Path, prefix: Path, template: str | None,
            categories: str = "action") -> list:
    """``hesnr prepare INPUT... --tokenizer T --output-prefix P`` and the documents it wrote."""
    argv = [str(p) for p in inputs] + ["--tokenizer", str(tokenizer), "--output-prefix", str(prefix),
                                       "--categories", categories, "--no-progress"]
    if template:
        argv += ["--template", template]
    rc = run_subcommand("prepare", argv)
    if rc != 0:
        raise RuntimeError(f"hesnr prepare failed (exit {rc}) on {', '.join(map(str, inputs))}")
    return read_prepared(prefix)


def action_boundaries(eval_docs: list, inputs: list[Path], tokenizer: Path, prefix: Path, template: str | None) -> list:
    """Masks with thought / observation categories too, to tell one action from the next.

    The records score actions only (mask category 1), as the paper does; the proxy
    score needs to know where each action ends, which the breakdown categories
    show.  Same files, same tokenizer: the token ids must be identical.
    """
    docs = prepare(inputs, tokenizer, prefix, template, categories="action,thought,observation")
    # ``eval_docs`` may be a leading part of the held-out set (the CPU budget).
    docs = docs[:len(eval_docs)] if len(docs) >= len(eval_docs) else docs
    if len(docs) != len(eval_docs) or any(not np.array_equal(a[0], b[0]) for a, b in zip(docs, eval_docs)):
        raise RuntimeError(f"{prefix}: the held-out set prepared with breakdown categories has different tokens")
    if any(not np.array_equal(a[1] == 1, b[1] == 1) for a, b in zip(docs, eval_docs)):
        raise RuntimeError(f"{prefix}: the action mask changed with the breakdown categories")
    return [m for _, m in docs]


def _stream(docs: list[np.ndarray], eod: int) -> torch.Tensor:
    if not docs:
        return torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.concatenate([np.append(np.asarray(d, dtype=np.int64), eod) for d in docs]))


def evaluator_config(cfg: DemoConfig, prefix: Path, records: Path) -> HESNRConfig:
    """The evaluator's settings, as ``--hesnr-*`` flags would give them: the prepared held-out set
    (``heldout=<prefix>``), sliding windows ``eval_stride`` apart, micro-batches of ``eval_batch_size``
    windows, the records appended to ``records``, the starting weights evaluated before the first
    step (``--hesnr-eval-at-start``: a record at iteration 0); the metric's defaults."""
    return HESNRConfig(datasets=(EvalDataset("heldout", str(prefix)),), jsonl=str(records),
                       micro_batch_size=cfg.eval_batch_size, window_stride=cfg.eval_stride, run_name=RECORD_RUN,
                       eval_at_start=True)


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    stages = Stages(7)

    # 1. Inputs.
    stages.start("inputs", "inputs: trajectories (split into train / held-out) and standard-library code")
    traj_inputs = cfg.trajectories or [sources.bundled_trajectories()]
    split = sources.split_trajectories(traj_inputs, work / "trajectories", eval_every=cfg.eval_every)
    if not split.held_out:
        log.warning("only one trajectory: evaluating on the training trajectory (no held-out set)")
    code = sources.stdlib_code(cfg.code_bytes)
    log.info("      %d training and %d held-out trajectories from %s", split.num_train, split.num_eval,
             ", ".join(map(str, traj_inputs)))

    # 2. Tokenizer.
    if cfg.tokenizer:
        stages.start("tokenizer", f"tokenizer: {cfg.tokenizer}")
        tok_path = Path(cfg.tokenizer)
        tok_path = tok_path / "tokenizer.json" if tok_path.is_dir() else tok_path
    else:
        stages.start("tokenizer", f"tokenizer: training a byte-level BPE ({cfg.vocab_size} tokens) on the code and trajectories")
        tok_path = bpe.train_bpe(code + sources.trajectory_strings(split.train), cfg.vocab_size, work / "tokenizer.json")
    tok = load_tokenizer(tok_path)
    vocab = tok.get_vocab_size()
    eod = bpe.eod_token_id(tok)

    # 3. Prepare (the real `hesnr prepare`).
    stages.start("prepare", "hesnr prepare: trajectories -> Megatron indexed dataset + scoring mask")
    train_docs = prepare(split.train, tok_path, work / "data" / "train", cfg.template)
    eval_docs = prepare(split.eval, tok_path, work / "data" / "heldout", cfg.template)
    scored = int(sum((m == 1).sum() for _, m in eval_docs))
    if scored == 0:
        raise RuntimeError("the held-out trajectories have no scored (action) tokens: nothing to evaluate")
    code_ids = [e.ids for e in tok.encode_batch(code)]
    streams = {"code": _stream(code_ids, eod), "trajectories": _stream([t for t, _ in train_docs], eod)}
    log.info("      training tokens: %d code + %d trajectory; held-out: %d tokens, %d scored action tokens",
             streams["code"].numel(), streams["trajectories"].numel(), sum(len(t) for t, _ in eval_docs), scored)

    # 4. Train.
    gcfg = GPTConfig(vocab_size=vocab, padded_vocab_size=padded_vocab_size(vocab, tp_size=max(1, cfg.tp), divisible_by=128),
                     seq_length=cfg.seq_length, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                     num_heads=cfg.num_heads)
    torch.manual_seed(cfg.train.seed)
    model = TinyGPT(gcfg)
    records_path = out / "records.jsonl"
    hcfg = evaluator_config(cfg, work / "data" / "heldout", records_path)
    # --hesnr-eval-at-start: the starting weights are saved before the first step (iteration 0).
    saved_at = ([0] if hcfg.eval_at_start else []) + cfg.train.checkpoint_steps()
    stages.start("train", f"train: GPT with {model.num_parameters() / 1e6:.2f}M parameters, {cfg.train.steps} steps "
                          f"of {cfg.train.batch_size}x{cfg.seq_length} tokens on CPU, checkpoints at {saved_at}"
                          f"{' (0: the starting weights)' if hcfg.eval_at_start else ''}")

    def progress(step, steps, loss, rate):
        log.info("      step %4d/%d  loss %.3f  %5.0f tokens/s", step, steps, loss, rate)

    checkpoints = train(model, streams, cfg.train, work / "checkpoints",
                        extra={"tokenizer": str(tok_path)}, progress=progress, save_start=hcfg.eval_at_start)
    hf_dirs = export_hf(checkpoints, tok_path, out / "hf", eod, stages) if cfg.hf_export else []

    # 5. Evaluate every checkpoint.
    stages.start("evaluate", f"evaluate: HE-SNR, HE-PPL, PPL and the H_k histogram at {len(checkpoints)} checkpoints")
    # The evaluator's own window plan, to keep the CPU budget.
    windows = plan_set("heldout", MemoryDataset(eval_docs, vocab), cfg.seq_length, hcfg.long_policy, cfg.eval_stride,
                       skip_empty=hcfg.skip_empty_windows).windows
    budget_windows = max(1, int(cfg.max_eval_logits // (cfg.seq_length * gcfg.padded_vocab_size)))
    keep = None
    if len(windows) > budget_windows:
        # A large vocabulary (e.g. a user's 128K tokenizer) makes every evaluated token
        # cost that many logits on the CPU: keep whole documents up to the budget.
        per_doc = np.bincount([i for i, _ in windows], minlength=len(eval_docs))
        keep = max(1, int(np.searchsorted(np.cumsum(per_doc), budget_windows, side="right")))
        log.warning("      %d windows x %d tokens x %d vocabulary exceed the CPU budget of %.1e logits: "
                    "evaluating the first %d of %d held-out trajectories", len(windows), cfg.seq_length,
                    gcfg.padded_vocab_size, cfg.max_eval_logits, keep, len(eval_docs))
        eval_docs = eval_docs[:keep]
    job = EvalJob(
        checkpoints=[{"iteration": c.iteration, "consumed_samples": c.consumed_samples, "path": str(c.path),
                      "name": str(c.path.parent)} for c in checkpoints],
        config=hcfg, extras_path=str(work / "eval_extras.json"), seq_length=cfg.seq_length,
        padded_vocab_size=gcfg.padded_vocab_size, num_documents=keep, tp=cfg.tp,
        log_level=log.getEffectiveLevel(), check_all=cfg.check_all, work_dir=str(work),
    )
    extras = run_evaluation(job)
    log.info("      path taken: %s", extras["path"])
    for c in extras["checkpoints"]:
        if c["checked"]:
            ce = c["max_abs_diff_nll_vs_megatron_ce"]
            log.info("      iter %d: evaluator (TP=%d) vs one process without it: metrics differ by <= %.1e "
                     "(relative)%s", c["iteration"], extras["tp"], c["max_rel_diff_vs_single"],
                     "" if math.isnan(ce) else f"; per-token NLL vs Megatron's vocab_parallel_cross_entropy: <= {ce:.1e}")
    records = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
    evaluated = [c["iteration"] for c in extras["checkpoints"]]
    if [r["iteration"] for r in records] != evaluated:   # run_evaluation starts the records afresh
        raise RuntimeError(f"{records_path}: records of iterations {[r['iteration'] for r in records]}, "
                           f"but iterations {evaluated} were evaluated (another writer?)")

    # 6. Proxy score.
    stages.start("proxy", f"score: {PROXY_NAME} ({PROXY_DESCRIPTION})")
    doc_masks = action_boundaries(eval_docs, split.eval, tok_path, work / "data" / "heldout_categories", cfg.template)
    proxy_rows = []
    for rec, c in zip(records, extras["checkpoints"]):
        proxy = greedy_prefix(doc_masks, [np.asarray(f, dtype=bool) for f in c["top1"]])
        proxy_rows.append((rec["checkpoint"], proxy["score"]))
        rec["_proxy"] = proxy
    scores_csv = write_scores_csv(out / "proxy_scores.csv", proxy_rows)
    log.info("      %d held-out actions; scores written to %s", proxy["actions"], scores_csv)

    # 7. Report (the real `hesnr report`).
    stages.start("report", "hesnr report: Markdown report, JSON summary, figures")
    report_dir = out / "report"
    rc = run_subcommand("report", [str(records_path), "--scores", str(scores_csv), "--output-dir", str(report_dir),
                                    "--category", "action", "--bootstrap", str(cfg.bootstrap),
                                    "--score-label", PROXY_SCORE_LABEL])
    if rc != 0:
        raise RuntimeError(f"hesnr report failed (exit {rc})")
    total = stages.finish()

    summary = {
        "output_dir": str(out),
        "records": str(records_path),
        "report_dir": str(report_dir),
        "eval_path": extras["path"],
        "tp": extras["tp"],
        "proxy_score": {"name": PROXY_NAME, "csv": str(scores_csv), "description": PROXY_DESCRIPTION},
        "timings_s": stages.timings,
        "hf_checkpoints": [str(d) for d in hf_dirs],
        "total_s": total,
        "checkpoints": [
            {"iteration": r["iteration"], "train_loss": c.train_loss, "proxy": r["_proxy"]["score"],
             "proxy_exact_match": r["_proxy"]["exact_match"],
             **{k: r["metrics"][k] for k in ("hesnr", "hesnr_topk", "he_ppl", "ppl", "top1_acc",
                                             "num_high_entropy", "num_tokens", "high_entropy_fraction",
                                             "num_documents", "hesnr_stderr", "he_ppl_stderr", "ppl_stderr")}}
            for r, c in zip(records, checkpoints)
        ],
        "last_histogram": _histogram_of(records[-1]) if records else None,
    }
    with open(out / "demo_summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, allow_nan=True)
    return summary


def export_hf(checkpoints: list, tokenizer: Path, out: Path, eod: int, stages: Stages) -> list[Path]:
    """Every checkpoint as a Hugging Face checkpoint ``out/iter_NNNNNNN`` (timed as ``hf_export``)."""
    from .hf_export import export_checkpoint

    t0 = time.perf_counter()
    dirs = [export_checkpoint(c.path, tokenizer, out / c.path.parent.name, eod) for c in checkpoints]
    stages.timings["hf_export"] = time.perf_counter() - t0
    log.info("      Hugging Face checkpoints (GPT2LMHeadModel) in %s, %.1fs: hesnr score --hf %s", out,
             stages.timings["hf_export"], dirs[-1] if dirs else out)
    return dirs


def _histogram_of(record: dict) -> dict:
    from ..metric.accumulator import HESNRAccumulator

    acc = HESNRAccumulator.from_state_dict(record["state"])
    h = acc.histogram("action" if "action" in acc.config.category_names else None)
    return {"edges": h["edges"], "count": h["count"]}


# --------------------------------------------------------------------------- terminal output
def format_table(summary: dict) -> str:
    """One row per checkpoint; ``± SE`` is the trajectory-clustered standard error."""
    head = (f"{'iteration':>9}  {'train loss':>10}  {'HE-SNR':>8}  {'± SE':>7}  {'HE-PPL':>8}  {'PPL':>8}  "
            f"{'top-1':>6}  {'|HE|/|M|':>13}  {'proxy':>6}  {'EM':>5}")
    lines = [head, "-" * len(head)]
    for c in summary["checkpoints"]:
        he = f"{c['num_high_entropy']}/{c['num_tokens']}"
        lines.append(f"{c['iteration']:>9}  {c['train_loss']:>10.3f}  {_f(c['hesnr'], 4):>8}  "
                     f"{_f(c.get('hesnr_stderr'), 4):>7}  {_f(c['he_ppl'], 2):>8}  "
                     f"{_f(c['ppl'], 2):>8}  {_f(c['top1_acc'], 3):>6}  {he:>13}  {_f(c['proxy'], 3):>6}  {_f(c['proxy_exact_match'], 3):>5}")
    return "\n".join(lines)


def format_histogram(hist: dict, k: int = 10, width: int = 50, rows: int = 20) -> str:
    """The H_k histogram of the last checkpoint, coarsened to ``rows`` bars, ln 1 .. ln k marked."""
    edges = np.asarray(hist["edges"])
    counts = np.asarray(hist["count"])
    rows = min(rows, len(counts))
    cuts = np.linspace(0, len(counts), rows + 1).round().astype(int)
    coarse = np.array([counts[a:b].sum() for a, b in zip(cuts[:-1], cuts[1:])])
    top = coarse.max() if coarse.max() > 0 else 1
    lines = []
    for i in range(rows):
        lo, hi = edges[cuts[i]], edges[cuts[i + 1]]
        last = i == rows - 1
        label = " ".join(f"ln {j}" for j in range(1, k + 1)
                         if lo <= math.log(j) < hi or (last and math.log(j) <= hi + 1e-12 and math.log(j) >= lo))
        lines.append(f"  {lo:5.2f}-{hi:5.2f} {'#' * int(round(width * coarse[i] / top)):<{width}} {int(coarse[i]):>6} {label}")
    return "\n".join(lines)


def _f(x, digits: int) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"
