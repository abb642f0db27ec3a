"""``hesnr score --server`` against a server that lies, drips, throttles or encodes (issue 30, section 2: items 1,
7, 8 and 11's server cases): an impossible answer is one line naming the server, the position and the field;
``--timeout`` bounds a whole request; Ctrl-C stops at once and exits 130 keeping whole trajectories; a failure
for good starts no queued trajectory; ``Retry-After`` is honoured; the stand-in server itself is bounded.

The stand-in answers with :class:`~fake_vllm_server.FastLogprobs` (``fast=True``), so each run takes seconds."""
from __future__ import annotations

import email.utils
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from fake_vllm_server import FakeServer
from score_helpers import prepare_set
from test_score import _records, _windows_per_trajectory, assert_records_agree, cli

from megatron_hesnr.scoring.engine_logprobs import MalformedLogprobs, json_positions, stats_from_prompt_logprobs

FLAGS = ("--seq-length", 256, "--concurrency", 1, "--timeout", 60, "--backoff", 0.01)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, trajectories_dir, deepseek_tokenizer_json) -> Path:
    return prepare_set(trajectories_dir, tmp_path_factory.mktemp("set") / "traj")


def _score(small_set, url, out, *extra):
    return cli("score", small_set, "--server", url, "--jsonl", out, *FLAGS, *extra)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("hesnr score:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(small_set, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    with FakeServer(fast=True, lifetime_s=300) as srv:
        r = _score(small_set, srv.url, out)
    assert r.returncode == 0, r.stderr
    (rec,) = _records(out)
    assert rec["metrics"]["num_documents"] == 4 and rec["config"]["data"]["num_windows"] > 4
    return rec


@pytest.fixture(scope="module")
def windows(small_set) -> dict[int, int]:
    """Windows (requests) of each trajectory; with --concurrency 1 trajectory 1's first is request 2 + windows[0]."""
    return _windows_per_trajectory(small_set)


# ------------------------------------------------------------------ item 1: answers that cannot be true
K = 3
HONEST_OUTSIDE = [(1, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -3.0, 5)]  # target 7 outside the top 3
HONEST_INSIDE = [(1, -1.0, 1), (7, -2.0, 2), (3, -2.5, 3)]


def _stats(rows):
    return stats_from_prompt_logprobs(np.array([0, 7]), [None, rows], K, 4096)


def test_honest_answers_pass_and_an_exact_tie_counts_inside():
    assert not bool(_stats(HONEST_OUTSIDE).in_topk[0]) and bool(_stats(HONEST_INSIDE).in_topk[0])
    tie = [(1, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -2.5, 4)]  # tied with the 3rd, not picked
    assert bool(_stats(tie).in_topk[0])


@pytest.mark.parametrize("rows, match", [
    # k-1 entries plus the target with its true rank: the target is outside the top k, one entry is missing
    ([(1, -1.0, 1), (2, -2.0, 2), (7, -3.0, 5)], r"'rank' is 5 > k=3, yet it is listed"),
    # k+1 entries with one id written twice
    ([(1, -1.0, 1), (1, -1.0, 1), (2, -2.0, 2), (7, -3.0, 5)], r"token id 1 is listed twice"),
    ([(1, 0.5, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -3.0, 5)], r"'logprob' is 0.5, above 0"),
    ([(1, -0.01, 1), (2, -0.02, 2), (3, -0.03, 3), (7, -3.0, 5)], r"'logprob'.*add up to 2.9"),
    ([(1, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -3.0, 4.5)], r"'rank' is 4.5, not a positive integer"),
    ([(1, -1.0, 1), (7, -2.0, True), (3, -2.5, 3)], r"'rank' is True, not a positive integer"),
    ([(1, -1.0, 1), (7, -2.0, "one"), (3, -2.5, 3)], r"'rank' is 'one', not a positive integer"),
    ([(1, -1.0, 1), (7, -2.0, 0), (3, -2.5, 3)], r"'rank' is 0, not a positive integer"),
    ([(1, -1.0, 1), (7, -2.0, 1), (3, -2.5, 3)], r"'rank' is 1 but 1 listed tokens are more likely"),
    ([(1, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -2.5, 3)], r"'rank' is 3 <= k=3, yet it comes beside"),
    ([(1, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -1.5, 5)], r"'logprob' -1.5 exceeds a listed"),
    ([(-1, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -3.0, 5)], r"token id -1 is outside the vocabulary"),
    ([(10**9, -1.0, 1), (2, -2.0, 2), (3, -2.5, 3), (7, -3.0, 5)], r"token id 1000000000 is outside the vocab"),
], ids=["k-1+target", "id-twice", "positive-logprob", "probabilities-sum-2.9", "fractional-rank", "rank-true",
        "rank-string", "rank-0", "rank-1-below-others", "rank-inside-beside-k", "target-above-listed",
        "negative-id", "id-beyond-vocab"])
def test_impossible_answer_is_refused_naming_position_and_field(rows, match):
    with pytest.raises(MalformedLogprobs, match=r"position 1 .*" + match):
        _stats(rows)


def test_json_duplicate_keys_and_non_numbers_are_refused():
    """JSON keeps only the last of two equal keys: the client keeps both and refuses the answer."""
    from megatron_hesnr.scoring.server import _keep_duplicate_keys

    raw = ('[null, {"1": {"logprob": -1.0, "rank": 1}, "2": {"logprob": -2.0, "rank": 2}, '
           '"2": {"logprob": -2.0, "rank": 2}, "7": {"logprob": -3.0, "rank": 5}}]')
    with pytest.raises(MalformedLogprobs, match="token id 2 is listed twice"):
        _stats(json_positions(json.loads(raw, object_pairs_hook=_keep_duplicate_keys))[1])
    with pytest.raises(MalformedLogprobs, match="'logprob' is True, not a number"):
        json_positions([None, {"7": {"logprob": True, "rank": 1}}])


def _drop_weakest_of_topk(positions, number):
    """The honest answer less its weakest top-k entry wherever the target is outside the top k."""
    if number != 3:
        return positions
    for d in positions[1:]:
        if len(d) == 11:  # k=10 plus the target
            target = max(d, key=lambda t: d[t]["rank"])
            weakest = min((t for t in d if t != target), key=lambda t: d[t]["logprob"])
            del d[weakest]
    return positions


def _rank_one_at_5(positions, number):
    if number == 3:
        for v in positions[5].values():
            v["rank"] = "one"
    return positions


@pytest.mark.parametrize("mutate, match", [
    (_drop_weakest_of_topk, r"position \d+ token \d+: field 'rank' is \d+ > k=10, yet it is listed"),
    (_rank_one_at_5, r"position 5 token \d+: field 'rank' is 'one', not a positive integer"),
])
def test_hostile_server_is_one_line_naming_server_set_trajectory_and_field(mutate, match, small_set, tmp_path):
    out = tmp_path / "out.jsonl"
    with FakeServer(fast=True, mutate=mutate, lifetime_s=120) as srv:
        r = _score(small_set, srv.url, out)
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert f"--server {srv.url}" in line and "set 'traj'" in line and "impossible answer" in line, line
    assert re.search(r"trajectory \d+, window \d+ of \d+: prompt_logprobs " + match, line), line
    assert not out.exists()  # nothing counted, no record


# ------------------------------------------------------------------ item 7: deadlines, Ctrl-C, failure for good
def test_timeout_bounds_the_whole_request_of_a_dripping_server(small_set, tmp_path):
    """An answer dripped a byte every 0.2 s never lets a socket read time out; --timeout 3 still ends it."""
    out = tmp_path / "out.jsonl"
    with FakeServer(fast=True, faults={2: "drip"}, drip_s=0.2, lifetime_s=40) as srv:
        t0 = time.monotonic()
        r = _score(small_set, srv.url, out, "--timeout", 3, "--retries", 0)
        elapsed = time.monotonic() - t0
    assert r.returncode == 2 and "no answer within --timeout 3 s" in _one_line(r.stderr), r.stderr
    assert elapsed < 15, elapsed


def test_no_queued_trajectory_starts_after_one_failed_for_good(small_set, tmp_path, windows):
    out = tmp_path / "out.jsonl"
    first = 2 + windows[0]  # 1: the probe, then trajectory 0's windows: trajectory 1's first request fails
    with FakeServer(fast=True, faults={first: "500"}, lifetime_s=120) as srv:
        r = _score(small_set, srv.url, out, "--retries", 0)
        time.sleep(0.5)
        assert r.returncode == 2 and "HTTP 500" in _one_line(r.stderr), r.stderr
        assert srv.requests == first, f"{srv.requests - first} requests after the failure"
    done = json.loads(Path(str(out) + ".progress.json").read_text())["sets"]["traj"]["done"]
    assert done == [0]


def test_a_failure_for_good_cancels_the_other_trajectories_in_flight(small_set, tmp_path):
    """--concurrency 2: request 4 fails for good while another trajectory's request is in flight (each answer
    takes 0.2 s): that one is cut short, and neither its next windows nor a queued trajectory are sent."""
    out = tmp_path / "out.jsonl"
    with FakeServer(fast=True, faults={4: "500"}, delay_s=0.2, lifetime_s=120) as srv:
        t0 = time.monotonic()
        r = _score(small_set, srv.url, out, "--retries", 0, "--concurrency", 2)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        assert r.returncode == 2 and "HTTP 500" in _one_line(r.stderr), r.stderr
        assert srv.requests <= 5, f"{srv.requests - 4} requests after the failure"
    assert elapsed < 20, elapsed


def test_ctrl_c_stops_at_once_exits_130_and_the_rerun_gives_the_uninterrupted_record(small_set, tmp_path,
                                                                                     reference, windows):
    out = tmp_path / "out.jsonl"
    progress = Path(str(out) + ".progress.json")
    # trajectory 0 answers; trajectory 1's first request hangs 60 s (and its retries would too)
    first = 2 + windows[0]
    with FakeServer(fast=True, faults={n: "sleep" for n in range(first, first + 6)}, sleep_s=60,
                    lifetime_s=240) as srv:
        cmd = [sys.executable, "-m", "megatron_hesnr.cli", "score", str(small_set), "--server", srv.url,
               "--jsonl", str(out), *map(str, FLAGS)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            deadline = time.monotonic() + 180
            while srv.requests < first and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert srv.requests >= first, "the run never reached the hanging request"
            time.sleep(0.5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=90)
            stopped = time.monotonic() - t0
            print(f"Ctrl-C: the run stopped {stopped:.2f} s after SIGINT")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err[-2000:]
    line = _one_line(err)
    assert "interrupted" in line and "1 scored trajectories are kept" in line and "rerun" in line, line
    assert stopped < 5, f"Ctrl-C took {stopped:.1f} s"
    assert json.loads(progress.read_text())["sets"]["traj"]["done"] == [0]
    with FakeServer(fast=True, lifetime_s=120) as srv:
        r = _score(small_set, srv.url, out)
        assert r.returncode == 0, r.stderr
        assert len([p for p in srv.prompts if p != [1, 2]]) == sum(windows.values()) - windows[0]
    (rec,) = _records(out)
    assert_records_agree(rec, reference, rel=1e-9)
    assert rec["metrics"]["num_tokens"] == reference["metrics"]["num_tokens"]


# ------------------------------------------------------------------ item 8: server conventions
def _http_date_in_2_s():
    return email.utils.formatdate(time.time() + 2, usegmt=True)


@pytest.mark.parametrize("fault, retry_after, low, high", [
    ("429", "1", 0.9, 10),
    ("503", _http_date_in_2_s, 0.9, 10),
    ("429", "3600", 2.5, 15),  # capped by --timeout 3
])
def test_retry_after_is_honoured_and_capped(fault, retry_after, low, high, small_set, tmp_path, reference):
    out = tmp_path / "out.jsonl"
    with FakeServer(fast=True, faults={2: fault}, retry_after=retry_after, lifetime_s=120) as srv:
        r = _score(small_set, srv.url, out, "--timeout", 3 if retry_after == "3600" else 60)
        assert r.returncode == 0, r.stderr
        gap = srv.times[2] - srv.times[1]  # request 2 throttled, request 3 its retry
    assert low <= gap <= high, gap
    (rec,) = _records(out)
    assert_records_agree(rec, reference, rel=1e-12)


def test_retry_after_forms_and_body_encodings():
    from megatron_hesnr.scoring.http_client import UndecodableBody, decode_body, parse_retry_after

    now = 1_000_000_000.0
    assert parse_retry_after("7", now) == 7 and parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None
    import gzip
    import zlib

    assert decode_body(gzip.compress(b'{"a": 1}'), "gzip") == b'{"a": 1}'
    assert decode_body(zlib.compress(b"x"), "deflate") == b"x" and decode_body(b"x", None) == b"x"
    with pytest.raises(UndecodableBody, match="Content-Encoding 'br'"):
        decode_body(b"x", "br")
    with pytest.raises(UndecodableBody, match="a broken gzip body"):
        decode_body(gzip.compress(b"x" * 100)[:20], "gzip")


def test_no_max_model_len_is_accepted_with_seq_length(small_set, tmp_path, reference):
    out = tmp_path / "out.jsonl"
    with FakeServer(fast=True, models_entry={"max_model_len": None}, lifetime_s=120) as srv:
        r = _score(small_set, srv.url, out)
        assert r.returncode == 0, r.stderr
        r2 = cli("score", small_set, "--server", srv.url, "--jsonl", tmp_path / "o2.jsonl")
    (rec,) = _records(out)
    assert_records_agree(rec, reference, rel=1e-12)
    assert r2.returncode == 2 and "gives no max_model_len for 'tiny'; pass --seq-length" in _one_line(r2.stderr)


def test_max_model_len_not_a_number_is_named(small_set, tmp_path):
    with FakeServer(fast=True, models_entry={"max_model_len": "lots"}, lifetime_s=60) as srv:
        r = _score(small_set, srv.url, tmp_path / "out.jsonl")
    line = _one_line(r.stderr)
    assert r.returncode == 2 and f"--server {srv.url}: /v1/models gives max_model_len 'lots'" in line, line


def test_tokenize_without_tokens_is_refused(small_set, tmp_path):
    with FakeServer(fast=True, tokenize=lambda body: {"count": 3, "max_model_len": 1024}, lifetime_s=60) as srv:
        r = _score(small_set, srv.url, tmp_path / "out.jsonl")
    line = _one_line(r.stderr)
    assert r.returncode == 2 and f"--server {srv.url}: /tokenize answered 200 with no 'tokens'" in line, line


def test_gzip_bodies_are_decoded_and_a_matching_tokenize_passes(small_set, tmp_path, reference,
                                                                 deepseek_tokenizer_json):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(deepseek_tokenizer_json))
    out = tmp_path / "out.jsonl"
    with FakeServer(fast=True, gzip=True, lifetime_s=120,
                    tokenize=lambda b: {"tokens": tok.encode(b["prompt"], add_special_tokens=False).ids}) as srv:
        r = _score(small_set, srv.url, out)
    assert r.returncode == 0, r.stderr
    (rec,) = _records(out)
    assert_records_agree(rec, reference, rel=1e-12)


def test_negative_backoff_is_refused_up_front(small_set, tmp_path):
    r = cli("score", small_set, "--server", "http://127.0.0.1:9", "--backoff", -1, "--jsonl", tmp_path / "o.jsonl")
    assert r.returncode == 2 and "--backoff: must be a number of seconds >= 0, got -1" in _one_line(r.stderr)


# ------------------------------------------------------------------ the stand-in server is bounded
def _get(url: str):
    return urllib.request.urlopen(url + "/v1/models", timeout=5).status


def test_fake_server_listens_on_loopback_only_and_stops_by_itself():
    with FakeServer(fast=True, max_requests=2) as srv:
        assert srv.httpd.server_address[0] == "127.0.0.1"
        assert _get(srv.url) == 200 and _get(srv.url) == 200
        with pytest.raises(OSError):
            _get(srv.url)  # the third request: the server closes and stops
        assert srv.stopped.wait(5)
    t0 = time.monotonic()
    with FakeServer(fast=True, lifetime_s=0.5, faults={1: "sleep"}, sleep_s=3600) as srv:
        assert srv.stopped.wait(5) and time.monotonic() - t0 < 5
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])), timeout=2).close()
