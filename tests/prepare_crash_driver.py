"""Forks ``hesnr prepare`` runs on request and kills them (tests/test_prepare_crash_safety.py).

Imports everything once, then reads one JSON request per stdin line and answers one
JSON line: ``{"runs": [{"argv", "stderr", "signal", "delay"}, ...]}`` starts every run
at once in a forked child (``argv`` for ``hesnr``; its stderr goes to the file
``stderr``), sends ``signal`` (SIGINT / SIGKILL / null) ``delay`` seconds after the
start (``crash_at``: the run exits at once, no clean-up, just before its crash_at-th
``os.replace``), and answers ``{"results": [{"status": exit code or -signal, "seconds"}]}``.
Forking after the imports (and the tokenizer load, cached here) keeps each run's cost to
the preparation itself, so the kill moments fall over reading, tokenizing, writing and
committing, not over interpreter start-up.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from megatron_hesnr.cli import main  # noqa: E402
from megatron_hesnr.data import cli_prepare, pipeline, writer  # noqa: E402,F401
# Load each tokenizer once, here: a forked run then spends its time reading, tokenizing,
# writing and committing (where a kill matters), not parsing a 128K-entry tokenizer.json.
pipeline.load_tokenizer = functools.lru_cache(maxsize=4)(pipeline.load_tokenizer)


def _child(argv, stderr_path, crash_at=None) -> None:
    """The forked run (SIGINT / SIGTERM arrive blocked and are unblocked inside ``try``)."""
    rc = 3
    try:
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if crash_at is not None:
            # Die (as SIGKILL would: no clean-up) just before the crash_at-th rename of the run.
            real, calls = os.replace, [0]

            def replace(src, dst, *a, **k):
                calls[0] += 1
                if calls[0] == crash_at:
                    os._exit(9)
                return real(src, dst, *a, **k)

            os.replace = replace
        signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)
        rc = main(argv)
    except BaseException as exc:  # noqa: BLE001 - exit status only
        print(f"driver: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(int(rc))


BLOCKED = {signal.SIGINT, signal.SIGTERM}


def serve() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        started = []
        for run in req["runs"]:
            open(run["stderr"], "w").close()   # exists even if the run dies before opening it
            t0 = time.monotonic()
            signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
            pid = os.fork()
            if pid == 0:
                _child(run["argv"], run["stderr"], run.get("crash_at"))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, BLOCKED)
            started.append((pid, t0, run))
        results = [None] * len(started)
        pending = sorted(range(len(started)), key=lambda i: started[i][2].get("delay") or 0.0)
        for i in pending:
            pid, t0, run = started[i]
            if run.get("signal"):
                time.sleep(max(0.0, t0 + run["delay"] - time.monotonic()))
                try:
                    os.kill(pid, getattr(signal, run["signal"]))
                except ProcessLookupError:
                    pass
        for i, (pid, t0, run) in enumerate(started):
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            results[i] = {"status": code, "seconds": time.monotonic() - t0}
        print(json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    serve()
