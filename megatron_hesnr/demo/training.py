"""Training the demo GPT on CPU and saving Megatron-style checkpoints.

The training data is a mixture of token streams (standard-library code and the
training trajectories); each sample is a random window of ``seq_length + 1`` tokens
from one stream, the stream drawn with fixed weights.  The loss is the plain
next-token cross entropy over the padded vocabulary, as in Megatron.
Checkpoints go to ``<dir>/iter_0000100/model.pt`` with Megatron's
``latest_checkpointed_iteration.txt`` beside them.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .gpt import GPTConfig, TinyGPT

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig:
    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 8
    """Sequences per step (each ``seq_length`` tokens)."""
    lr: float = 3e-3
    """Peak learning rate (linear warm-up, cosine decay to ``min_lr_ratio * lr``)."""
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    num_checkpoints: int = 5
    """Checkpoints saved at evenly spaced steps, the last one at ``steps``."""
    stream_weights: dict = field(default_factory=lambda: {"code": 0.2, "trajectories": 0.8})
    """Probability of drawing a sample from each token stream.  Mostly trajectories: in
    300 steps a small model learns the agent format (what the held-out set measures)
    only if it sees it often; the code is the "general text" of the mixture."""
    seed: int = 1234

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if not 1 <= self.num_checkpoints <= self.steps:
            raise ValueError(f"num_checkpoints must be in [1, steps={self.steps}], got {self.num_checkpoints}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def checkpoint_steps(self) -> list[int]:
        n = self.num_checkpoints
        return sorted({max(1, round(self.steps * (i + 1) / n)) for i in range(n)})


@dataclass
class Checkpoint:
    iteration: int
    consumed_samples: int
    path: Path
    train_loss: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class StreamSampler:
    """Random windows of ``length`` tokens from weighted 1-D token streams."""

    def __init__(self, streams: dict[str, torch.Tensor], weights: dict[str, float], length: int, seed: int):
        self.names = [n for n in streams if weights.get(n, 0) > 0 and streams[n].numel() > 0]
        if not self.names:
            raise ValueError("no training tokens: every stream is empty or has weight 0")
        short = [n for n in self.names if streams[n].numel() < length + 1]
        if short:
            raise ValueError(f"token stream(s) {short} shorter than one sample of {length + 1} tokens")
        self.streams = streams
        w = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        self.probs = w / w.sum()
        self.length = length
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, batch_size: int) -> torch.Tensor:
        which = torch.multinomial(self.probs, batch_size, replacement=True, generator=self.gen)
        rows = []
        for i in which.tolist():
            s = self.streams[self.names[i]]
            start = int(torch.randint(0, s.numel() - self.length, (1,), generator=self.gen))
            rows.append(s[start:start + self.length + 1])
        return torch.stack(rows).long()


def save_checkpoint(model: TinyGPT, directory: Path, iteration: int, consumed: int, loss: float, extra: dict) -> Path:
    path = Path(directory) / f"iter_{iteration:07d}" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "gpt_config": model.cfg.to_dict(), "iteration": iteration,
                "consumed_samples": consumed, "train_loss": loss, **extra}, path)
    (Path(directory) / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    return path


def load_checkpoint(path: Path) -> tuple[TinyGPT, dict]:
    """Rebuild the model from a checkpoint (weights only: no optimizer state)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    for key in ("model", "gpt_config", "iteration"):
        if key not in ckpt:
            raise ValueError(f"checkpoint {path} has no '{key}' entry (not written by hesnr demo?)")
    model = TinyGPT(GPTConfig(**ckpt["gpt_config"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def train(model: TinyGPT, streams: dict[str, torch.Tensor], cfg: TrainConfig, ckpt_dir: Path,
          extra: dict | None = None, progress=None, save_start: bool = False) -> list[Checkpoint]:
    """Train for ``cfg.steps`` steps; returns the checkpoints written, in order.

    ``save_start``: also save the starting weights, before the first step, as iteration 0 (its
    training loss NaN: no step has run), for the evaluation at start (``eval_at_start``).
    ``progress(step, steps, loss, tokens_per_s)`` is called every few steps.
    """
    torch.manual_seed(cfg.seed)
    sampler = StreamSampler(streams, cfg.stream_weights, model.cfg.seq_length, cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    save_at = set(cfg.checkpoint_steps())
    checkpoints: list[Checkpoint] = []
    if save_start:
        path = save_checkpoint(model, ckpt_dir, 0, 0, float("nan"), {"train_config": asdict(cfg), **(extra or {})})
        checkpoints.append(Checkpoint(0, 0, path, float("nan")))
    model.train()
    t0, tokens, ema = time.perf_counter(), 0, None
    every = max(1, cfg.steps // 20)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = sampler.batch(cfg.batch_size)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step + 1}; lower --lr")
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        tokens += batch[:, 1:].numel()
        done = step + 1
        if progress is not None and (done % every == 0 or done == cfg.steps):
            progress(done, cfg.steps, ema, tokens / (time.perf_counter() - t0))
        if done in save_at:
            path = save_checkpoint(model, ckpt_dir, done, done * cfg.batch_size, ema,
                                   {"train_config": asdict(cfg), **(extra or {})})
            checkpoints.append(Checkpoint(done, done * cfg.batch_size, path, ema))
            log.debug("saved %s", path)
    model.eval()
    return checkpoints
