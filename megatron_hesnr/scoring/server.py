"""``hesnr score --server``: a running OpenAI-compatible vLLM server.

Each window is one ``POST /v1/completions`` with the prompt as token ids, ``max_tokens: 1`` and
``prompt_logprobs: k`` (vLLM's extension; ``echo`` + ``logprobs`` gives strings without ids or
ranks and cannot be used).  Trajectories run ``concurrency`` at a time; a request that fails
(connection refused or reset, a timeout, a 5xx or 429, a truncated or malformed body) is retried
``retries`` times with exponential backoff, then the run stops with one line (the progress file
keeps what was done).  A server whose answer has no ``prompt_logprobs`` is refused at once.
"""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import socket
import time
import urllib.error
import urllib.request

from .engine_logprobs import MalformedLogprobs, json_positions, stats_from_prompt_logprobs
from .sets import ScoreError


class NoPromptLogprobs(ScoreError):
    pass


class ServerEngine:
    kind = "server"

    def __init__(self, url: str, *, model: str | None = None, concurrency: int = 8, timeout: float = 300.0,
                 retries: int = 4, backoff: float = 1.0, context_length: int | None = None):
        if not url.startswith(("http://", "https://")):
            raise ScoreError(f"--server {url}: give an http:// or https:// URL")
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.where = f"--server {self.url}"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, int(concurrency))
        models = self._models()
        ids = [m.get("id") for m in models]
        if model is None:
            if len(ids) != 1:
                raise ScoreError(f"--server {self.url} serves {len(ids)} models ({', '.join(map(str, ids))}): "
                                 "choose one with --model")
            model = ids[0]
        elif model not in ids:
            raise ScoreError(f"--model {model!r}: not served by {self.url} (it serves {', '.join(map(str, ids))})")
        self.model = model
        entry = models[ids.index(model)]
        self.context_length = int(context_length or entry.get("max_model_len") or 0)
        if self.context_length < 3:
            raise ScoreError(f"--server {self.url}: /v1/models gives no max_model_len for {model!r}; pass --seq-length")
        self.checkpoint = model  # vLLM's served name: the model path unless --served-model-name

    # ------------------------------------------------------------------ HTTP
    def _request(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            raw = resp.read()
        return json.loads(raw)

    def _call(self, path: str, body: dict | None, check=None):
        """The decoded answer, retried on transient failures; ``check(answer)`` may raise
        :class:`MalformedLogprobs` (retried) or :class:`ScoreError` (final)."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            try:
                answer = self._request(path, body)
                return check(answer) if check else answer
            except urllib.error.HTTPError as exc:
                text = " ".join(exc.read().decode(errors="replace").split())[:200]
                if exc.code >= 500 or exc.code == 429:
                    last = f"HTTP {exc.code} {text}"
                    continue
                raise ScoreError(f"{self.where}: {path} answered HTTP {exc.code}: {text}") from None
            except (socket.timeout, TimeoutError):
                last = f"no answer within --timeout {self.timeout:g} s"
            except ConnectionError as exc:  # refused, reset, or closed without an answer
                last = f"connection lost ({exc or type(exc).__name__})"
            except http.client.IncompleteRead as exc:
                last = f"truncated answer ({len(exc.partial)} bytes of {len(exc.partial) + (exc.expected or 0)})"
            except http.client.HTTPException as exc:
                last = f"broken HTTP answer ({type(exc).__name__}: {exc})"
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, (socket.timeout, TimeoutError)):
                    last = f"no answer within --timeout {self.timeout:g} s"
                else:
                    last = f"cannot connect ({reason})"
            except (ConnectionError, OSError) as exc:
                last = f"connection lost ({exc})"
            except json.JSONDecodeError as exc:
                last = f"truncated or non-JSON answer ({exc})"
            except MalformedLogprobs as exc:
                last = f"truncated answer ({exc})"
        raise ScoreError(f"{self.where}: {path} failed {self.retries + 1} times, last: {last}")

    def _models(self) -> list[dict]:
        answer = self._call("/v1/models", None)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data:
            raise ScoreError(f"--server {self.url}: /v1/models lists no model")
        return data

    def tokenize(self, text: str):
        """The server's ids for ``text`` (vLLM's ``/tokenize``); ``None`` without that endpoint."""
        try:
            answer = self._call("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        except ScoreError as exc:
            if "HTTP 404" in str(exc) or "HTTP 405" in str(exc):
                return None
            raise
        return answer.get("tokens") if isinstance(answer, dict) else None

    def _window(self, prompt, k: int):
        def check(answer):
            positions = self._prompt_logprobs(answer)
            return stats_from_prompt_logprobs(prompt, json_positions(positions), k)

        body = {"model": self.model, "prompt": [int(t) for t in prompt], "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": k}
        return self._call("/v1/completions", body, check)

    def probe(self, k: int) -> None:
        """Refuse a server without prompt_logprobs before any work (a 2-token request)."""
        self._call("/v1/completions", {"model": self.model, "prompt": [1, 2], "max_tokens": 1, "temperature": 0.0,
                                       "prompt_logprobs": k}, self._prompt_logprobs)

    def _prompt_logprobs(self, answer):
        """``choices[0].prompt_logprobs`` of an answer; refuses a server that gives none."""
        try:
            choice = answer["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise MalformedLogprobs("no choices in the answer") from None
        if choice.get("prompt_logprobs") is None:
            raise NoPromptLogprobs(
                f"{self.where}: the answer has no prompt_logprobs: the server is not vLLM's OpenAI-compatible "
                "server (or too old); hesnr score needs prompt_logprobs with token ids and ranks")
        positions = choice["prompt_logprobs"]
        if not isinstance(positions, list):
            raise MalformedLogprobs(f"prompt_logprobs is {type(positions).__name__}, not a list")
        return positions

    # ------------------------------------------------------------------ jobs
    def score(self, jobs, k: int):
        jobs = iter(jobs)
        with cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="hesnr-score") as pool:
            pending: dict[cf.Future, int] = {}

            def fill():
                while len(pending) < 2 * self.concurrency:
                    job = next(jobs, None)
                    if job is None:
                        return
                    doc, prompts = job
                    pending[pool.submit(lambda ps: [self._window(p, k) for p in ps], prompts)] = doc

            try:
                fill()
                while pending:
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        doc = pending.pop(fut)
                        try:
                            stats = fut.result()
                        except MalformedLogprobs as exc:
                            raise ScoreError(f"{self.where}: trajectory {doc}: {exc}") from None
                        yield doc, stats
                    fill()
            finally:
                for fut in pending:
                    fut.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
