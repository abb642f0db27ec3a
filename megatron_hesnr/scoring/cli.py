"""``hesnr score``: HE-SNR of a Hugging Face checkpoint or a served model on prepared sets.

    hesnr score [NAME=]PREFIX... (--hf MODEL_DIR | --vllm MODEL_DIR | --server URL [--model NAME])
                --jsonl OUT [--run-name NAME] [--step N] [--seq-length N] ...

Appends one record per set to OUT, of the kind the Megatron hook writes, so ``hesnr report``
and ``hesnr compare`` read both, and ends with one line per set and the records' path.

The flags and MODEL_DIR are checked before torch, the sets or the weights load (:mod:`.model_dir`):
those modules are imported only once the checks pass.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

from ..metric.defaults import DEFAULT_CATEGORY_NAMES, DEFAULT_K, DEFAULT_NUM_BINS, DEFAULT_THRESHOLD
from .errors import ScoreError, ScoreInterrupted
from .model_dir import check_hf_dtype, check_model_dir, check_transformers_config


def add_arguments(p) -> None:
    p.add_argument("prefixes", nargs="+", metavar="[NAME=]PREFIX", help="prepared sets (hesnr prepare output)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", metavar="MODEL_DIR", help="Hugging Face checkpoint, scored with transformers (reference)")
    src.add_argument("--vllm", metavar="MODEL_DIR", help="checkpoint scored with vLLM's offline engine")
    src.add_argument("--server", metavar="URL", help="running vLLM OpenAI-compatible server (http://host:port)")
    p.add_argument("--model", help="--server: the served model's name (default: the only one)")
    p.add_argument("--jsonl", required=True, metavar="OUT", help="append one record per set here")
    p.add_argument("--run-name", help="records' run (default: the model directory's or served model's name and "
                                      "a hash of its full path or name, e.g. model-1a2b3c4d)")
    p.add_argument("--step", type=int, default=0, help="records' iteration (e.g. the checkpoint's training step)")
    p.add_argument("--seq-length", type=int,
                   help="inputs per window, as the Megatron run's --seq-length (default: model context - 2)")
    p.add_argument("--long-policy", choices=("window", "truncate"), default="window",
                   help="trajectories longer than --seq-length (as --hesnr-long-policy)")
    p.add_argument("--window-stride", type=int, help="as --hesnr-window-stride (default seq-length / 2)")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="top-k candidate set (as --hesnr-k)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="as --hesnr-threshold")
    p.add_argument("--num-bins", type=int, default=DEFAULT_NUM_BINS, help="as --hesnr-num-bins")
    p.add_argument("--category-names", nargs="+", default=list(DEFAULT_CATEGORY_NAMES),
                   help="as --hesnr-category-names")
    p.add_argument("--dtype", default="float32", help="--hf / --vllm: weights' dtype (float32, bfloat16, ...)")
    p.add_argument("--device", default="cpu", help="--hf: torch device")
    p.add_argument("--max-model-len", type=int, help="--vllm: the engine's context")
    p.add_argument("--tensor-parallel-size", type=int, help="--vllm: tensor parallelism")
    p.add_argument("--pipeline-parallel-size", type=int, help="--vllm: pipeline parallelism")
    p.add_argument("--gpu-memory-utilization", type=float, help="--vllm: GPU memory share")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="--vllm: any other vllm.LLM option (VALUE read as JSON when it parses)")
    p.add_argument("--concurrency", type=int, default=8, help="--server: trajectories in flight")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="--server: seconds for a whole request (connect, send, the whole answer)")
    p.add_argument("--retries", type=int, default=4, help="--server: retries of a failed request")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="--server: first retry delay (doubles; a 429/503's Retry-After when longer)")


def _engine_args(args) -> dict:
    out = {}
    for name in ("max_model_len", "tensor_parallel_size", "pipeline_parallel_size", "gpu_memory_utilization"):
        if getattr(args, name) is not None:
            out[name] = getattr(args, name)
    out["dtype"] = args.dtype
    for item in args.engine_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ScoreError(f"--engine-arg {item!r}: write KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _config(args):
    from ..metric.accumulator import AccumulatorConfig, AccumulatorConfigError
    from ..evaluation.config import HESNRConfig, HESNRConfigError, parse_data_specs

    try:
        metric = AccumulatorConfig(k=args.k, threshold=args.threshold, num_bins=args.num_bins,
                                   category_names=tuple(args.category_names))
    except AccumulatorConfigError as exc:
        raise ScoreError(f"--{exc.field.replace('_', '-')}: {exc.message}") from None
    try:
        return HESNRConfig(datasets=parse_data_specs(args.prefixes), metric=metric, long_policy=args.long_policy,
                           window_stride=args.window_stride, run_name=args.run_name, jsonl=args.jsonl,
                           report_categories=())
    except HESNRConfigError as exc:
        raise ScoreError(str(exc).replace("--hesnr-data-path", "PREFIX").replace("--hesnr-", "--")) from None


def _check_flags(args) -> None:
    if args.model and not args.server:
        raise ScoreError("--model: only with --server")
    if args.seq_length is not None and args.seq_length < 1:
        raise ScoreError(f"--seq-length: must be >= 1, got {args.seq_length}")
    if args.step < 0:
        raise ScoreError(f"--step: must be >= 0, got {args.step}")
    for name in ("concurrency", "retries"):
        if getattr(args, name) < (1 if name == "concurrency" else 0):
            raise ScoreError(f"--{name}: must be >= {1 if name == 'concurrency' else 0}")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise ScoreError(f"--timeout: must be a positive number of seconds, got {args.timeout}")
    if not (args.backoff >= 0 and math.isfinite(args.backoff)):
        raise ScoreError(f"--backoff: must be a number of seconds >= 0, got {args.backoff}")
    if args.hf:
        check_hf_dtype(args.dtype)


def build_engine(args, sets_vocab: int):
    if args.hf:
        from .hf import HFEngine

        return HFEngine(args.hf, vocab_size=sets_vocab, dtype=args.dtype, device=args.device)
    if args.vllm:
        from .vllm_offline import VLLMEngine

        return VLLMEngine(args.vllm, engine_args=_engine_args(args))
    from .server import ServerEngine

    return ServerEngine(args.server, model=args.model, concurrency=args.concurrency, timeout=args.timeout,
                        retries=args.retries, backoff=args.backoff, seq_length=args.seq_length, vocab_size=sets_vocab)


#: Files of a model directory whose size and time stand for its weights (read whole: only config.json).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def model_fingerprint(model_dir: str) -> str:
    """Stands for a model directory's weights in the resume check: its ``config.json`` and the name, size
    and modification time of every weight file (re-saved weights under the same path differ)."""
    h = hashlib.sha256()
    try:
        names = sorted(os.listdir(model_dir))
    except OSError:
        return ""
    for name in names:
        path = os.path.join(model_dir, name)
        if name == "config.json":
            with open(path, "rb") as f:
                h.update(b"config.json\0" + f.read())
        elif name.endswith(WEIGHT_SUFFIXES):
            st = os.stat(path)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def default_run_name(checkpoint: str) -> str:
    """``<last part>-<8 hex of the full path or served name>``: two models never share a default run
    name (``/a/model`` and ``/b/model`` differ), and the same model always gets the same one."""
    full = checkpoint.rstrip("/") or checkpoint
    tag = hashlib.sha256(full.encode("utf-8")).hexdigest()[:8]
    return f"{os.path.basename(full) or full}-{tag}"


def resume_settings(args, run_name: str) -> dict:
    """The settings of this front end that change a number or a label of the records (the resume
    check's, beside the metric, window and set settings); a server's URL is not one (a restarted server
    may listen elsewhere)."""
    out = {"--step": args.step, "--run-name": run_name}
    if args.hf:
        out.update({"--dtype": args.dtype, "--device": args.device, "model files": model_fingerprint(args.hf)})
    elif args.vllm:
        out.update({"engine options": _engine_args(args), "model files": model_fingerprint(args.vllm)})
    return out


def run(args) -> int:
    import sys

    from ..cli import EXIT_INTERRUPTED

    try:
        return _run(args)
    except ScoreError as exc:
        print(f"hesnr score: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(exc, ScoreInterrupted) else 2


def _run(args) -> int:
    _check_flags(args)
    if args.hf or args.vllm:
        model_cfg = check_model_dir(args.hf or args.vllm, "--hf" if args.hf else "--vllm")
    if args.hf:
        check_transformers_config(args.hf, "--hf", model_cfg)
    from .driver import default_seq_length, score_sets
    from .sets import check_model_tokenizer, check_server_tokenizer, open_sets
    from .summary import summary_lines

    config = _config(args)
    # Sets first (cheap, fails fast on a bad prefix), planned once the engine's context is known.
    probe_sets = open_sets(config)
    vocab = max(s.vocab_size for s in probe_sets)
    if args.hf or args.vllm:
        model_dir = args.hf or args.vllm
        check_model_tokenizer(probe_sets, model_dir, "--hf" if args.hf else "--vllm", model_vocab=None)
    engine = build_engine(args, vocab)
    if args.server:
        engine.probe(config.metric.k)
        check_server_tokenizer(probe_sets, engine.tokenize, engine.where)
    elif args.hf:
        check_model_tokenizer(probe_sets, args.hf, "--hf", model_vocab=engine.model_vocab)
    seq_length = args.seq_length or default_seq_length(engine)
    if seq_length + 2 > engine.context_length and not args.hf:
        raise ScoreError(f"--seq-length {seq_length}: a window of {seq_length} inputs needs a context of "
                         f"{seq_length + 2} tokens; the engine has {engine.context_length}")
    if args.hf and seq_length > engine.context_length:
        raise ScoreError(f"--seq-length {seq_length}: exceeds the model's {engine.context_length} positions")
    sets = [s.plan(config, seq_length) for s in probe_sets]
    run_name = args.run_name or default_run_name(engine.checkpoint)
    engine_config = {"engine_args": _engine_args(args)} if args.vllm else {}
    if args.server:
        engine_config = {"url": engine.url, "model": engine.model}
    records = score_sets(engine, sets, config, seq_length=seq_length, out=args.jsonl, run=run_name,
                         step=args.step, engine_config=engine_config, settings=resume_settings(args, run_name))
    print("\n".join(summary_lines(records, args.jsonl)))
    return 0
