"""``hesnr score --server``: a running OpenAI-compatible vLLM server.

Each window is one ``POST /v1/completions`` with the prompt as token ids, ``max_tokens: 1`` and
``prompt_logprobs: k`` (vLLM's extension; ``echo`` + ``logprobs`` gives strings without ids or
ranks and cannot be used).  Trajectories run ``concurrency`` at a time; a request that fails
(connection refused or reset, no whole answer within ``timeout`` seconds, a 5xx or 429, a
truncated or malformed body) is retried ``retries`` times with exponential backoff (longer when
a 429/503 says ``Retry-After``), then the run stops with one line (the progress file keeps what
was done).  A server whose answer has no ``prompt_logprobs`` is refused at once, and so is an
answer that cannot be true (:mod:`.answer_checks`), naming the position.  Once one trajectory
has failed for good, or on Ctrl-C, every request in flight and every wait is cancelled and no
queued trajectory starts (:mod:`.http_client`).
"""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import logging
import math

from .answer_checks import ImpossibleAnswer, id_bound
from .engine_logprobs import MalformedLogprobs, json_positions, stats_from_prompt_logprobs
from .http_client import Cancelled, Client, ConnectFailed, DeadlinePassed, UndecodableBody, parse_retry_after
from .sets import ScoreError

log = logging.getLogger(__name__)

#: The longest wait a ``Retry-After`` gets (seconds; never more than ``--timeout`` either).
RETRY_AFTER_MAX_S = 60.0
#: The longest exponential backoff between two attempts (seconds).
BACKOFF_MAX_S = 30.0


class NoPromptLogprobs(ScoreError):
    pass


class _HTTPStatus(Exception):
    def __init__(self, code: int, text: str, retry_after: float | None):
        super().__init__(code)
        self.code, self.text, self.retry_after = code, text, retry_after


def _keep_duplicate_keys(pairs):
    """``json`` keeps the last of two equal keys; an object with duplicates keeps them all (its
    ``items()`` gives every pair), so a top-k list with one id written twice is seen and refused."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) == len(keys):
        return dict(pairs)
    return _PairsDict(pairs)


class _PairsDict(dict):
    def __init__(self, pairs):
        super().__init__(pairs)
        self._pairs = list(pairs)

    def items(self):
        return list(self._pairs)


def _positive_int(value) -> int | None:
    return value if type(value) is int and value > 0 else None


class ServerEngine:
    kind = "server"

    def __init__(self, url: str, *, model: str | None = None, concurrency: int = 8, timeout: float = 300.0,
                 retries: int = 4, backoff: float = 1.0, context_length: int | None = None,
                 seq_length: int | None = None, vocab_size: int | None = None):
        """``seq_length``: the run's ``--seq-length``, which stands for the context when ``/v1/models``
        gives no ``max_model_len``; ``vocab_size``: the sets' tokenizer (bounds the ids an answer may hold)."""
        if not url.startswith(("http://", "https://")):
            raise ScoreError(f"--server {url}: give an http:// or https:// URL")
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.where = f"--server {self.url}"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.concurrency = max(1, int(concurrency))
        self.id_bound = None if vocab_size is None else id_bound(vocab_size)
        self._client = Client(self.url)
        models = self._models()
        ids = [m.get("id") if isinstance(m, dict) else None for m in models]
        if model is None:
            if len(ids) != 1:
                raise ScoreError(f"--server {self.url} serves {len(ids)} models ({', '.join(map(str, ids))}): "
                                 "choose one with --model")
            model = ids[0]
        elif model not in ids:
            raise ScoreError(f"--model {model!r}: not served by {self.url} (it serves {', '.join(map(str, ids))})")
        self.model = model
        entry = models[ids.index(model)]
        served = entry.get("max_model_len")
        if served is not None and _positive_int(served) is None:
            raise ScoreError(f"--server {self.url}: /v1/models gives max_model_len {served!r} for {model!r}, "
                             "not a positive integer")
        if context_length:
            self.context_length = int(context_length)
        elif served is not None:
            self.context_length = served
        elif seq_length:
            log.info("%s: /v1/models gives no max_model_len for %r; trusting --seq-length %d to fit",
                     self.where, model, seq_length)
            self.context_length = seq_length + 2
        else:
            raise ScoreError(f"--server {self.url}: /v1/models gives no max_model_len for {model!r}; pass --seq-length")
        if self.context_length < 3:
            raise ScoreError(f"--server {self.url}: /v1/models gives max_model_len {self.context_length} for "
                             f"{model!r}: too small for a window")
        self.checkpoint = model  # vLLM's served name: the model path unless --served-model-name

    # ------------------------------------------------------------------ HTTP
    def _request(self, path: str, body: dict | None):
        data = None if body is None else json.dumps(body).encode()
        status, headers, raw = self._client.request("GET" if data is None else "POST", path, data, self.timeout)
        if status >= 400:
            text = " ".join(raw.decode(errors="replace").split())[:200]
            retry_after = parse_retry_after(headers.get("retry-after")) if status in (429, 503) else None
            raise _HTTPStatus(status, text, retry_after)
        return json.loads(raw, object_pairs_hook=_keep_duplicate_keys)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before ``attempt`` (1-based): exponential backoff, or the server's ``Retry-After``
        when longer, capped at :data:`RETRY_AFTER_MAX_S` and ``--timeout``."""
        delay = min(self.backoff * 2 ** (attempt - 1), BACKOFF_MAX_S)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_MAX_S, self.timeout))
        return delay

    def _call(self, path: str, body: dict | None, check=None):
        """The decoded answer, retried on transient failures; ``check(answer)`` may raise
        :class:`MalformedLogprobs` (retried), :class:`ImpossibleAnswer` or :class:`ScoreError` (final)."""
        last, retry_after = None, None
        for attempt in range(self.retries + 1):
            if attempt:
                self._client.sleep(self._delay(attempt, retry_after))
            retry_after = None
            try:
                answer = self._request(path, body)
                return check(answer) if check else answer
            except (Cancelled, ImpossibleAnswer, ScoreError):
                raise
            except _HTTPStatus as exc:
                if exc.code >= 500 or exc.code == 429:
                    last, retry_after = f"HTTP {exc.code} {exc.text}", exc.retry_after
                    continue
                raise ScoreError(f"{self.where}: {path} answered HTTP {exc.code}: {exc.text}") from None
            except DeadlinePassed:
                last = f"no answer within --timeout {self.timeout:g} s (for the whole request)"
            except ConnectFailed as exc:
                last = f"cannot connect ({exc})"
            except UndecodableBody as exc:
                raise ScoreError(f"{self.where}: {path} answered with {exc}") from None
            except http.client.IncompleteRead as exc:
                last = f"truncated answer ({len(exc.partial)} bytes of {len(exc.partial) + (exc.expected or 0)})"
            except TimeoutError:
                last = f"no answer within --timeout {self.timeout:g} s (for the whole request)"
            except ConnectionError as exc:  # reset, or closed without an answer
                last = f"connection lost ({exc or type(exc).__name__})"
            except http.client.HTTPException as exc:
                last = f"broken HTTP answer ({type(exc).__name__}: {exc})"
            except OSError as exc:
                last = f"connection lost ({exc})"
            except MalformedLogprobs as exc:
                last = f"truncated answer ({exc})"
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                last = f"truncated or non-JSON answer ({exc})"
        raise ScoreError(f"{self.where}: {path} failed {self.retries + 1} times, last: {last}")

    def _models(self) -> list[dict]:
        answer = self._call("/v1/models", None)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data or not all(isinstance(m, dict) for m in data):
            raise ScoreError(f"--server {self.url}: /v1/models lists no model")
        return data

    def tokenize(self, text: str):
        """The server's ids for ``text`` (vLLM's ``/tokenize``); ``None`` without that endpoint (404/405).
        An answer without a list of token ids is refused: the tokenizer check cannot be made."""
        path = "/tokenize"
        try:
            answer = self._call(path, {"model": self.model, "prompt": text, "add_special_tokens": False})
        except ScoreError as exc:
            if "HTTP 404" in str(exc) or "HTTP 405" in str(exc):
                return None
            raise
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(type(t) is int and t >= 0 for t in tokens):
            got = "no 'tokens'" if not isinstance(answer, dict) or "tokens" not in answer else \
                f"'tokens' {str(tokens)[:60]}"
            raise ScoreError(f"{self.where}: {path} answered 200 with {got}, not a list of token ids: the served "
                             "tokenizer cannot be checked against the sets' (a server without /tokenize, "
                             "answering 404, is not checked)")
        return tokens

    def _window(self, prompt, k: int):
        def check(answer):
            positions = self._prompt_logprobs(answer)
            return stats_from_prompt_logprobs(prompt, json_positions(positions), k, self.id_bound)

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
    def _trajectory(self, doc: int, prompts, k: int):
        """Every window of one trajectory; the first failure for good cancels the whole run's requests."""
        try:
            out = []
            for i, p in enumerate(prompts):
                if self._client.stop.is_set():
                    raise Cancelled()
                try:
                    out.append(self._window(p, k))
                except ImpossibleAnswer as exc:
                    raise ScoreError(f"{self.where}: impossible answer for trajectory {doc}, window {i + 1} of "
                                     f"{len(prompts)}: {exc}") from None
                except MalformedLogprobs as exc:
                    raise ScoreError(f"{self.where}: trajectory {doc}, window {i + 1} of {len(prompts)}: "
                                     f"{exc}") from None
            return out
        except Cancelled:
            raise
        except BaseException:
            self._client.cancel()  # no queued trajectory starts, none in flight goes on
            raise

    def score(self, jobs, k: int):
        jobs = iter(jobs)
        self._client.reset()
        finished = False
        pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="hesnr-score")
        pending: dict[cf.Future, int] = {}

        def fill():
            while len(pending) < 2 * self.concurrency and not self._client.stop.is_set():
                job = next(jobs, None)
                if job is None:
                    return
                doc, prompts = job
                pending[pool.submit(self._trajectory, doc, prompts, k)] = doc

        try:
            fill()
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                failure = None
                for fut in done:
                    doc = pending.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        yield doc, fut.result()  # whole trajectories that made it are kept
                    elif not isinstance(exc, Cancelled) and failure is None:
                        failure = exc
                if failure is not None:
                    raise failure
                fill()
            finished = True
        finally:
            if not finished:  # Ctrl-C, a failure, or the caller stopped early: cut everything short
                self._client.cancel()
                for fut in pending:
                    fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
