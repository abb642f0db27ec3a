"""A small stand-in for vLLM's OpenAI-compatible server on 127.0.0.1, for the ``hesnr score --server`` tests.

``/v1/models`` lists one model; ``/v1/completions`` answers ``prompt_logprobs`` the way vLLM does (position 0
``None``, then the top k plus the prompt's token with its true rank, ids as string keys).  The
log-probabilities come from ``logits_fn(prompt) -> [len(prompt), V] tensor`` (the logits at each position,
predicting the next token); :func:`synthetic_logits` is a deterministic, model-free choice.  ``faults`` maps
a request number (1-based, over ``/v1/completions``) to what goes wrong with it: ``"500"``, ``"sleep"``
(answer after ``sleep_s``), ``"truncate"`` (half the body), ``"no_logprobs"`` (an OpenAI-style answer
without them), ``"die"`` (the server closes the connection and stops listening).
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

VOCAB = 129280


_BASE = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0))


def synthetic_logits(prompt: list[int]) -> torch.Tensor:
    """Logits at each position of ``prompt`` from its token and position alone: deterministic, cheap, with a
    mix of peaked and flat rows and the next token often near the top."""
    n = len(prompt)
    out = _BASE.repeat(n, 1)
    for i, tok in enumerate(prompt):
        out[i] *= 0.5 + tok % 5
        out[i, (tok * 31 + i % 7) % VOCAB] += 2.0 + tok % 3
        if i + 1 < n and (tok + i) % 3:
            out[i, prompt[i + 1]] += 8.0 + (tok % 4)
    return out


def prompt_logprobs(prompt: list[int], logits: torch.Tensor, k: int) -> list:
    """vLLM's answer for ``prompt``: rank = how many tokens are at least as likely as the prompt's (vLLM's rule)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    out = [None]
    for j in range(1, len(prompt)):
        row = lp[j - 1]
        y = prompt[j]
        vals, ids = row.topk(k)
        d = {str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": ""}
             for r, (v, t) in enumerate(zip(vals.tolist(), ids.tolist()))}
        rank = int((row >= row[y]).sum())
        d[str(y)] = {"logprob": float(row[y]), "rank": rank, "decoded_token": ""}
        out.append(d)
    return out


class FakeServer:
    def __init__(self, logits_fn=synthetic_logits, *, faults: dict | None = None, sleep_s: float = 3.0,
                 delay_s: float = 0.0, model: str = "tiny", max_model_len: int = 1024):
        """``delay_s``: every completion waits this long (a slow server)."""
        self.logits_fn, self.faults, self.sleep_s, self.delay_s = logits_fn, dict(faults or {}), sleep_s, delay_s
        self.model, self.max_model_len = model, max_model_len
        self.requests = 0
        self.prompts: list[list[int]] = []
        """Prompts answered in full."""
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, obj, *, truncate: bool = False):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "max_model_len": server.max_model_len}]})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/completions":
                    return self._send(404, {"error": "not found"})
                with server._lock:
                    server.requests += 1
                    fault = server.faults.get(server.requests)
                if fault == "die":
                    self.close_connection = True
                    threading.Thread(target=server.stop, daemon=True).start()
                    return
                if fault == "500":
                    return self._send(500, {"error": "internal error"})
                if fault == "sleep":
                    time.sleep(server.sleep_s)
                time.sleep(server.delay_s)
                prompt = [int(t) for t in body["prompt"]]
                choice = {"index": 0, "text": "x", "finish_reason": "length"}
                if fault != "no_logprobs":
                    k = int(body["prompt_logprobs"])
                    choice["prompt_logprobs"] = prompt_logprobs(prompt, server.logits_fn(prompt), k)
                if fault is None:
                    with server._lock:
                        server.prompts.append(prompt)
                self._send(200, {"id": "cmpl", "object": "text_completion", "model": server.model,
                                 "choices": [choice]}, truncate=fault == "truncate")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
