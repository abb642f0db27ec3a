"""A small stand-in for vLLM's OpenAI-compatible server on 127.0.0.1, for the ``hesnr score --server`` tests.

``/v1/models`` lists one model; ``/v1/completions`` answers ``prompt_logprobs`` the way vLLM does (position 0
``None``, then the top k plus the prompt's token with its true rank, ids as string keys).  The
log-probabilities come from ``logits_fn(prompt) -> [len(prompt), V] tensor`` (the logits at each position,
predicting the next token); :func:`synthetic_logits` is a deterministic, model-free choice.  ``faults`` maps
a request number (1-based, over ``/v1/completions``) to what goes wrong with it: ``"500"``, ``"sleep"``
(answer after ``sleep_s``), ``"truncate"`` (half the body), ``"no_logprobs"`` (an OpenAI-style answer
without them), ``"die"`` (the server closes the connection and stops listening), ``"429"`` / ``"503"``
(with ``Retry-After: retry_after`` when given; a callable is asked at each answer), ``"drip"`` (the answer one byte every ``drip_s``).

Hostile answers: ``mutate(positions, request_no)`` rewrites every completion's ``prompt_logprobs``;
``gzip`` sends every body gzip-encoded; ``models_entry`` replaces fields of the ``/v1/models`` entry
(``None`` removes one); ``tokenize(body) -> answer`` serves ``/tokenize`` (404 without it).

Bounded: it listens on 127.0.0.1 only, stops by itself ``lifetime_s`` after it started or after
``max_requests`` requests of any kind, and a waiting or dripping answer ends when it stops.
"""
from __future__ import annotations

import gzip as gzip_module
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


class FastLogprobs:
    """:func:`prompt_logprobs` of :func:`synthetic_logits`'s model in ``O(k)`` a position instead of ``O(V)``: a
    row is ``scale * _BASE`` plus at most two raised ids, so its log-sum-exp, top k and the target's rank follow
    from ``_BASE`` sorted once per scale.  Same model, float64 throughout (for the tests that score many runs)."""

    def __init__(self, k_max: int = 64):
        import numpy as np

        self.np = np
        base = _BASE.double().numpy()
        self.base = base
        self.scaled = {}
        for s in range(5):
            v = base * (0.5 + s)
            order = np.argsort(-v, kind="stable")[:k_max + 2]
            m = v.max()
            self.scaled[s] = (np.sort(v), order, m + np.log(np.exp(v - m).sum()))

    def __call__(self, prompt: list[int], k: int) -> list:
        np = self.np
        out = [None]
        for j in range(1, len(prompt)):
            i, tok = j - 1, prompt[j - 1]
            scale = tok % 5
            asc, order, lse0 = self.scaled[scale]
            bumps: dict[int, float] = {}
            b1 = (tok * 31 + i % 7) % VOCAB
            bumps[b1] = bumps.get(b1, 0.0) + 2.0 + tok % 3
            if (tok + i) % 3:
                bumps[prompt[j]] = bumps.get(prompt[j], 0.0) + 8.0 + tok % 4
            raw = lambda x: float(self.base[x] * (0.5 + scale))  # noqa: E731
            value = lambda x: raw(x) + bumps.get(x, 0.0)  # noqa: E731
            lse = np.logaddexp.reduce([lse0] + [value(x) for x in bumps]) if bumps else lse0
            fix = sum(np.exp(raw(x) - lse) for x in bumps)
            lse = lse + np.log1p(-fix) if bumps else lse  # the raised ids' old terms leave the sum
            cands = sorted(set(int(x) for x in order[:k + 2]) | set(bumps), key=lambda x: -value(x))[:k]
            d = {str(x): {"logprob": value(x) - lse, "rank": r + 1, "decoded_token": ""} for r, x in enumerate(cands)}
            y = prompt[j]
            if y not in cands:
                v = value(y)
                rank = len(asc) - int(np.searchsorted(asc, v, side="left"))
                for x in bumps:
                    rank += (value(x) >= v) - (raw(x) >= v)
                d[str(y)] = {"logprob": v - lse, "rank": rank, "decoded_token": ""}
            out.append(d)
        return out


class FakeServer:
    def __init__(self, logits_fn=synthetic_logits, *, faults: dict | None = None, sleep_s: float = 3.0,
                 delay_s: float = 0.0, model: str = "tiny", max_model_len: int = 1024, mutate=None,
                 gzip: bool = False, models_entry: dict | None = None, tokenize=None, retry_after: str | None = None,
                 drip_s: float = 0.2, lifetime_s: float = 900.0, max_requests: int = 20000, fast: bool = False):
        """``delay_s``: every completion waits this long (a slow server); ``fast``: :class:`FastLogprobs`
        instead of ``logits_fn`` (the same answers as the default ``synthetic_logits``, in a fraction of the time)."""
        self.fast = FastLogprobs() if fast else None
        self.logits_fn, self.faults, self.sleep_s, self.delay_s = logits_fn, dict(faults or {}), sleep_s, delay_s
        self.model, self.max_model_len = model, max_model_len
        self.mutate, self.gzip, self.models_entry, self.tokenize = mutate, gzip, dict(models_entry or {}), tokenize
        self.retry_after, self.drip_s, self.max_requests = retry_after, drip_s, max_requests
        self.requests = 0
        """Completion requests received."""
        self.all_requests = 0
        self.times: list[float] = []
        """``time.monotonic()`` of each completion request's arrival."""
        self.prompts: list[list[int]] = []
        """Prompts answered in full."""
        self.stopped = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # a client that stalls does not hold a handler thread longer

            def log_message(self, *a):
                pass

            def _send(self, code: int, obj, *, truncate: bool = False, drip: bool = False, headers=()):
                body = json.dumps(obj).encode()
                if server.gzip:
                    body = gzip_module.compress(body)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                if server.gzip:
                    self.send_header("Content-Encoding", "gzip")
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drip:
                    for i in range(len(body)):
                        if server._wake.wait(server.drip_s):
                            return
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                    return
                self.wfile.write(body[: len(body) // 2] if truncate else body)

            def _count(self) -> bool:
                with server._lock:
                    server.all_requests += 1
                    over = server.all_requests > server.max_requests
                if over:
                    threading.Thread(target=server.stop, daemon=True).start()
                    self.close_connection = True
                return not over

            def do_GET(self):
                if not self._count():
                    return
                if self.path == "/v1/models":
                    entry = {"id": server.model, "object": "model", "max_model_len": server.max_model_len}
                    entry.update(server.models_entry)
                    entry = {k: v for k, v in entry.items() if v is not None}
                    return self._send(200, {"object": "list", "data": [entry]})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                if not self._count():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize" and server.tokenize is not None:
                    return self._send(200, server.tokenize(body))
                if self.path != "/v1/completions":
                    return self._send(404, {"error": "not found"})
                with server._lock:
                    server.requests += 1
                    number = server.requests
                    server.times.append(time.monotonic())
                    fault = server.faults.get(number)
                if fault == "die":
                    self.close_connection = True
                    threading.Thread(target=server.stop, daemon=True).start()
                    return
                if fault == "500":
                    return self._send(500, {"error": "internal error"})
                if fault in ("429", "503"):
                    value = server.retry_after() if callable(server.retry_after) else server.retry_after
                    extra = () if value is None else (("Retry-After", value),)
                    return self._send(int(fault), {"error": "busy"}, headers=extra)
                if fault == "sleep":
                    server._wake.wait(server.sleep_s)
                if server.delay_s:
                    server._wake.wait(server.delay_s)
                if server._wake.is_set():
                    self.close_connection = True
                    return
                prompt = [int(t) for t in body["prompt"]]
                choice = {"index": 0, "text": "x", "finish_reason": "length"}
                if fault != "no_logprobs":
                    k = int(body["prompt_logprobs"])
                    positions = server.fast(prompt, k) if server.fast else \
                        prompt_logprobs(prompt, server.logits_fn(prompt), k)
                    if server.mutate is not None:
                        positions = server.mutate(positions, number)
                    choice["prompt_logprobs"] = positions
                if fault is None:
                    with server._lock:
                        server.prompts.append(prompt)
                self._send(200, {"id": "cmpl", "object": "text_completion", "model": server.model,
                                 "choices": [choice]}, truncate=fault == "truncate", drip=fault == "drip")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        """Stops serving, wakes every waiting or dripping answer, closes the port; ``stopped`` is set after."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._wake.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.stopped.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
