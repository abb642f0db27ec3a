"""HTTP for ``hesnr score --server``: one deadline per request, and every request cancellable at once.

``--timeout`` bounds a whole request (connect, send, headers and body), not each socket read:
a server that drips its answer a byte at a time is cut off at the deadline.  A watchdog thread
shuts down the socket of every request past its deadline, and of every request in flight when
:meth:`Client.cancel` is called (Ctrl-C, or a trajectory that failed for good), so no worker
outlives either by more than ``POLL_S``.  Waits between retries end on :meth:`Client.cancel` too.

Answers are returned as ``(status, headers, body)``; a body with ``Content-Encoding: gzip`` or
``deflate`` is decoded, any other encoding refused.
"""
from __future__ import annotations

import email.utils
import errno
import gzip
import http.client
import os
import selectors
import socket
import threading
import time
import urllib.parse
import zlib

#: How often the watchdog looks at the requests in flight (seconds).
POLL_S = 0.05


class Cancelled(Exception):
    """The run is stopping (Ctrl-C, or another trajectory failed for good): give up at once."""


class DeadlinePassed(Exception):
    """No whole answer within the request's deadline."""


class ConnectFailed(ConnectionError):
    """No connection to the server (refused, unreachable, unresolvable)."""


class UndecodableBody(ValueError):
    """The answer's ``Content-Encoding`` is unknown, or its compressed body is broken."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date); ``None`` when absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return raw
    try:
        if enc in ("gzip", "x-gzip"):
            return gzip.decompress(raw)
        if enc == "deflate":
            try:
                return zlib.decompress(raw)
            except zlib.error:
                return zlib.decompress(raw, -zlib.MAX_WBITS)  # raw deflate, as some servers send it
    except (OSError, EOFError, zlib.error) as exc:
        raise UndecodableBody(f"a broken {enc} body ({exc})") from None
    raise UndecodableBody(f"Content-Encoding {encoding!r}, which hesnr score cannot decode")


class _InFlight:
    __slots__ = ("sock", "deadline", "timed_out", "cancelled")

    def __init__(self, deadline: float):
        self.sock = None
        self.deadline = deadline
        self.timed_out = False
        self.cancelled = False


class Client:
    def __init__(self, base_url: str):
        parts = urllib.parse.urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._live: set[_InFlight] = set()
        self._watchdog: threading.Thread | None = None

    # ------------------------------------------------------------ cancelling
    def cancel(self) -> None:
        """Stop every request in flight and every wait, now and until :meth:`reset`."""
        self.stop.set()
        self._reap(time.monotonic())

    def reset(self) -> None:
        self.stop.clear()

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(max(0.0, seconds)):
            raise Cancelled()

    def _reap(self, now: float) -> None:
        with self._lock:
            live = list(self._live)
        for r in live:
            if self.stop.is_set():
                r.cancelled = True
            elif now >= r.deadline:
                r.timed_out = True
            else:
                continue
            sock = r.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _watch(self) -> None:
        while True:
            time.sleep(POLL_S)
            self._reap(time.monotonic())
            with self._lock:
                if not self._live:
                    self._watchdog = None
                    return

    # ------------------------------------------------------------ a request
    def _connect(self, r: _InFlight) -> socket.socket:
        """A connected socket, polled so that cancel and the deadline stop a connect that hangs."""
        last = None
        try:
            addrs = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectFailed(f"cannot resolve {self.host} ({exc})") from None
        for family, kind, proto, _, addr in addrs:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            r.sock = sock
            try:
                err = sock.connect_ex(addr)
                if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                    raise ConnectFailed(err, os.strerror(err))
                with selectors.DefaultSelector() as sel:
                    sel.register(sock, selectors.EVENT_WRITE)
                    while not sel.select(POLL_S):
                        self._check(r)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise ConnectFailed(err, os.strerror(err))
                sock.setblocking(True)
                return sock
            except (Cancelled, DeadlinePassed):
                sock.close()
                r.sock = None
                raise
            except OSError as exc:
                sock.close()
                r.sock = None
                last = exc
        raise ConnectFailed(str(last or f"cannot resolve {self.host}"))

    def _check(self, r: _InFlight) -> None:
        if self.stop.is_set() or r.cancelled:
            raise Cancelled()
        if r.timed_out or time.monotonic() >= r.deadline:
            raise DeadlinePassed()

    def request(self, method: str, path: str, body: bytes | None, timeout: float) -> tuple[int, dict, bytes]:
        """``(status, headers (lower-case names), decoded body)`` within ``timeout`` seconds in all; raises
        :class:`DeadlinePassed`, :class:`Cancelled`, :class:`UndecodableBody` or what http.client raises."""
        if self.stop.is_set():
            raise Cancelled()
        r = _InFlight(time.monotonic() + timeout)
        with self._lock:
            self._live.add(r)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="hesnr-http-watchdog", daemon=True)
                self._watchdog.start()
        conn_cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = conn_cls(self.host, self.port, timeout=timeout)
        try:
            try:
                sock = self._connect(r)
                sock.settimeout(max(1e-3, r.deadline - time.monotonic()))
                if self.https:
                    import ssl

                    sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
                    r.sock = sock
                conn.sock = sock
                headers = {"Content-Type": "application/json"} if body is not None else {}
                conn.request(method, self.prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status, head = resp.status, {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException, ValueError):
                self._check(r)  # a socket the watchdog shut down: say why
                raise
            if self.stop.is_set():
                raise Cancelled()
            return status, head, decode_body(raw, head.get("content-encoding"))
        finally:
            with self._lock:
                self._live.discard(r)
            conn.close()
