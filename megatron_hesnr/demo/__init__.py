"""``hesnr demo``: the whole idea, end to end, on a laptop CPU in a few minutes.

Bundled bug-fix trajectories and Python's own standard-library sources ->
a byte-level BPE tokenizer -> ``hesnr prepare`` -> a small GPT trained on CPU with
several checkpoints -> HE-SNR, HE-PPL, PPL and the H_k histogram of every
checkpoint through the ``HESNREvaluator`` a Megatron run uses (tensor parallel over two
gloo processes, megatron-core's schedule when it is installed) -> ``hesnr report``.

Modules: ``sources`` (inputs), ``bpe`` (tokenizer), ``gpt`` (model), ``training``
(loop and checkpoints), ``eval_model`` (the model behind ``GPTModel``'s forward, its
output layer split over TP), ``schedule`` (megatron-core's forward-only schedule or the
demo's stand-in), ``evaluation`` (the evaluator run and its cross-checks),
``proxy_score`` (the labelled stand-in for a downstream score), ``pipeline`` (the
stages and the terminal output).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("megatron_hesnr.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, default=Path("hesnr-demo"),
                        help="where the records, checkpoints and report go (default: ./hesnr-demo)")
    parser.add_argument("--trajectories", type=Path, nargs="+", metavar="PATH",
                        help="your own trajectory files or directories (any format `hesnr prepare` reads); "
                             "every 3rd trajectory is held out for evaluation (default: the bundled set)")
    parser.add_argument("--tokenizer", type=Path, metavar="PATH",
                        help="your own HF tokenizer.json (default: train a 4000-token byte-level BPE)")
    parser.add_argument("--template", help="rendering template passed to `hesnr prepare --template`")
    parser.add_argument("--steps", type=int, help="training steps (default 300; --quick: 24)")
    parser.add_argument("--checkpoints", type=int,
                        help="checkpoints to save and evaluate during training (default 5; --quick: 3), besides "
                             "the starting weights (iteration 0, evaluated at start)")
    parser.add_argument("--tp", type=int, choices=(1, 2), default=2,
                        help="evaluate with the output layer split over 2 gloo processes (2, default) or in one (1)")
    parser.add_argument("--threads", type=int, help="torch threads for training (default: torch's choice)")
    parser.add_argument("--no-hf-export", dest="hf_export", action="store_false",
                        help="do not write the checkpoints as Hugging Face checkpoints under OUTPUT_DIR/hf/ "
                             "(written by default, for `hesnr score --hf`)")
    parser.add_argument("--quick", action="store_true",
                        help="the CI smoke test: same stages, tiny sizes, well under a minute")


def run(args: argparse.Namespace) -> int:
    from .pipeline import DemoConfig, format_histogram, format_table, run_demo

    overrides = {"trajectories": args.trajectories, "tokenizer": args.tokenizer, "template": args.template,
                 "tp": args.tp, "threads": args.threads, "hf_export": args.hf_export}
    cfg = DemoConfig.quick(args.output_dir, **overrides) if args.quick else DemoConfig(output_dir=args.output_dir, **overrides)
    if args.steps is not None or args.checkpoints is not None:
        from dataclasses import replace

        steps = args.steps if args.steps is not None else cfg.train.steps
        ckpts = args.checkpoints if args.checkpoints is not None else min(cfg.train.num_checkpoints, steps)
        try:
            cfg.train = replace(cfg.train, steps=steps, num_checkpoints=ckpts,
                                warmup_steps=min(cfg.train.warmup_steps, max(1, steps // 10)))
        except ValueError as exc:
            log.error("hesnr demo: %s", exc)
            return 2
    # megatron-core logs every dataset it opens at INFO; the demo has its own progress lines.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        summary = run_demo(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error("hesnr demo: %s", exc)
        return 1
    print()
    print(f"HE-SNR over training ({summary['eval_path']}):")
    print(format_table(summary))
    n_docs = summary["checkpoints"][0].get("num_documents") if summary["checkpoints"] else None
    if n_docs:
        print(f"± SE: standard error of HE-SNR over the {n_docs} held-out trajectories (trajectory-clustered; "
              "`hesnr compare` tests a difference between two checkpoints)")
    if summary.get("last_histogram"):
        print()
        print(f"H_k histogram of the scored action tokens at iteration {summary['checkpoints'][-1]['iteration']}:")
        print(format_histogram(summary["last_histogram"]))
    print()
    print(f"proxy = {summary['proxy_score']['name']}: {summary['proxy_score']['description']}; "
          f"EM = the fraction of those actions reproduced exactly.")
    print(f"records: {summary['records']}")
    if summary.get("hf_checkpoints"):
        print(f"HF:      {summary['hf_checkpoints'][-1]} (and the other checkpoints beside it; `hesnr score --hf`)")
    print(f"report:  {summary['report_dir']}")
    print(f"total:   {time.perf_counter() - t0:.0f}s")
    return 0
