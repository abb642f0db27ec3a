"""Writing files a reader trusts: temporary files renamed into place, and one writer at a time.

Every file the package writes for a reader (``hesnr prepare``'s dataset and manifest,
``hesnr report``'s outputs, ``hesnr compare --json``, the evaluation records) goes
through this module:

* :func:`atomic_file` writes one file: into a temporary file beside the target
  (``TARGET.tmp-<pid>-<random>``), flushed to disk, then renamed over the target. A
  reader sees the old file or the new one, whole; a crash leaves the old one.
* :class:`FileSet` does the same for several files that belong together (a prepared
  dataset: four binary files and the manifest). All are written as temporary files
  first; the commit then writes a journal (``JOURNAL``: the renames still to do, in
  order, the manifest last), renames, and removes the journal. A process killed in the
  middle of the renames leaves the journal: :func:`roll_forward` (run by the next
  writer and by readers before they open the files) finishes the renames, so the set on
  disk is always the old one or the new one, never a mix.
* :class:`PathLock` keeps a second writer out: an exclusive ``flock`` on a lock file
  beside the target, holding the holder's pid, host and start time for the refusal
  message. The kernel drops the lock when the holder dies (also on SIGKILL), so a
  killed run never blocks the next one; there is no stale pid file to clean up. On a
  file system without ``flock`` support the lock is skipped with a warning (the
  renames still keep readers safe).
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime
import errno
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"
JOURNAL_VERSION = 1
#: Errors that mean "this file system cannot lock", not "somebody holds the lock".
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


_ACTIVE_SET: contextvars.ContextVar = contextvars.ContextVar("hesnr_file_set", default=None)


class LockedError(RuntimeError):
    """Another live process holds the lock on this target; the message names it and the holder."""


def temp_path(final: str) -> str:
    """A fresh temporary name beside ``final`` (same folder: the rename stays atomic)."""
    return f"{final}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(folder: str) -> None:
    """Make renames and new names in ``folder`` durable (best effort where folders cannot be opened)."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """``with atomic_file(path) as f: f.write(...)``: ``path`` is replaced only when the block
    ends without an exception; otherwise the temporary file is removed and ``path`` kept."""
    final = os.fspath(final)
    binary = "b" in mode
    group = _ACTIVE_SET.get()
    if group is not None and group.holds(final):
        # Inside ``with FileSet(...)``: written now, renamed with the rest of the set.
        tmp = group.stage(final)
        with open(tmp, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as f:
            yield f
        return
    tmp = temp_path(final)
    try:
        with open(tmp, mode, **({} if binary else {"encoding": encoding, "newline": newline})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(final)))


def write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_file(final, "w") as f:
        f.write(text)


# ------------------------------------------------------------------ locking

#: How long a refused locker waits for a holder that has the lock but has not written its line yet.
HOLDER_LINE_WAIT_S = 1.0


def holder_line(info: dict | None) -> str:
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"


def _read_holder(fd: int) -> dict | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        info = json.loads(data.decode("utf-8")) if data.strip() else None
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


class PathLock:
    """Exclusive lock on ``lock_path`` for the life of this object (or of the ``with`` block).

    ``what`` names the protected thing in the refusal message (e.g. ``--output-prefix P``).
    ``wait``: seconds to keep trying before refusing (0: refuse at once).
    ``wait_remote``: seconds to keep trying when the holder is on another host (a node that
    died keeps its network-file-system lock until the server's lease runs out); a holder on
    this host is alive by construction, so it is refused at once.
    """

    def __init__(self, lock_path: str | os.PathLike, what: str, wait: float = 0.0, wait_remote: float = 0.0):
        self.path = os.fspath(lock_path)
        self.what = what
        self.wait = wait
        self.wait_remote = max(wait, wait_remote)
        self.fd: int | None = None
        self.enforced = False

    def acquire(self) -> "PathLock":
        try:
            import fcntl
        except ImportError:   # not POSIX: no flock; the renames still keep readers safe
            log.warning("%s: no file locking on this platform; a second writer would not be detected", self.what)
            return self
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        deadline = None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.enforced = True
                    break
                except OSError as exc:
                    if exc.errno in _NO_LOCKING:
                        log.warning("%s: the file system cannot lock %s (%s); a second writer would not be "
                                    "detected", self.what, self.path, exc.strerror or exc)
                        break
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    info = _read_holder(fd)
                    # The holder writes its line just after it takes the lock: a locker refused in
                    # between waits a moment for the line instead of calling the holder unknown.
                    settle = time.monotonic() + HOLDER_LINE_WAIT_S
                    while info is None and time.monotonic() < settle:
                        time.sleep(0.01)
                        info = _read_holder(fd)
                    remote = bool(info) and info.get("host") != socket.gethostname()
                    patience = self.wait_remote if remote else self.wait
                    if patience > 0:
                        deadline = deadline or time.monotonic() + patience
                        if time.monotonic() < deadline:
                            time.sleep(min(0.2, patience))
                            continue
                    raise LockedError(f"{self.what} is being written by another process ({holder_line(info)}; "
                                      f"lock file {self.path})") from None
            if self.enforced:
                started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            # Closing drops the flock; the lock file stays (removing it would race a waiting locker).
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "PathLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------ file sets

class DeferSignals:
    """Hold SIGINT / SIGTERM back during a commit (main thread only); re-deliver them after."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.pending, self.old = [], {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.old[s] = signal.signal(s, lambda num, _frame: self.pending.append(num))
        return self

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)
        for s in self.pending:
            os.kill(os.getpid(), s)


def _journal_renames(journal: str) -> list[tuple[str, str]]:
    folder = os.path.dirname(os.path.abspath(journal))
    with open(journal, encoding="utf-8") as f:
        d = json.load(f)
    if not isinstance(d, dict) or d.get("version") != JOURNAL_VERSION or not isinstance(d.get("renames"), list):
        raise ValueError(f"{journal}: not a version-{JOURNAL_VERSION} commit journal")
    out = []
    for pair in d["renames"]:
        if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair)
                or any(os.path.basename(p) != p for p in pair)):
            raise ValueError(f"{journal}: malformed rename entry {pair!r}")
        out.append((os.path.join(folder, pair[0]), os.path.join(folder, pair[1])))
    return out


def roll_forward(journal: str) -> bool:
    """Finish the renames an interrupted commit left in ``journal`` (the caller holds the lock).
    Returns whether there was anything to finish."""
    if not os.path.exists(journal):
        return False
    renames = _journal_renames(journal)
    for tmp, final in renames:
        if os.path.exists(tmp):
            os.replace(tmp, final)
        elif not os.path.exists(final):
            raise ValueError(f"{journal}: cannot finish the interrupted commit: {tmp} and {final} are both missing")
    fsync_dir(os.path.dirname(os.path.abspath(journal)))
    os.unlink(journal)
    fsync_dir(os.path.dirname(os.path.abspath(journal)))
    log.warning("finished the commit an interrupted writer left in %s", journal)
    return True


def remove_orphans(finals: list[str]) -> int:
    """Remove temporary files of ``finals`` left by killed writers (the caller holds the lock
    and has rolled any journal forward). Returns how many were removed."""
    n = 0
    for final in finals:
        folder, base = os.path.split(os.path.abspath(final))
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(base + TMP_MARK):
                _unlink_quietly(os.path.join(folder, name))
                n += 1
    return n


class FileSet:
    """Files written together and renamed into place together, in the order staged (put the
    file readers check first -- a manifest -- last). The caller holds the lock.

    ``with FileSet(journal):`` makes every :func:`atomic_file` / :func:`write_text` into the
    journal's folder part of the set; the set is committed when the block ends normally
    and dropped when it raises."""

    def __init__(self, journal: str | os.PathLike):
        self.journal = os.fspath(journal)
        self.staged: list[tuple[str, str]] = []   # (tmp, final)
        self._token = None

    def holds(self, final: str) -> bool:
        return os.path.dirname(os.path.abspath(final)) == os.path.dirname(os.path.abspath(self.journal))

    def __enter__(self) -> "FileSet":
        self._token = _ACTIVE_SET.set(self)
        return self

    def __exit__(self, exc_type, *_):
        _ACTIVE_SET.reset(self._token)
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def stage(self, final: str | os.PathLike) -> str:
        """The temporary path to write ``final``'s content to."""
        final = os.fspath(final)
        if not self.holds(final):
            raise ValueError(f"{final}: a file set lives in one folder ({os.path.dirname(self.journal)})")
        tmp = temp_path(final)
        self.staged.append((tmp, final))
        return tmp

    def temp_of(self, final: str | os.PathLike) -> str:
        final = os.fspath(final)
        return next(t for t, f in self.staged if f == final)

    def commit(self) -> None:
        """Flush every staged file, then rename them all (journalled, signals held back)."""
        for tmp, _ in self.staged:
            fsync_file(tmp)
        folder = os.path.dirname(os.path.abspath(self.journal))
        fsync_dir(folder)
        body = {"version": JOURNAL_VERSION,
                "renames": [[os.path.basename(t), os.path.basename(f)] for t, f in self.staged]}
        for _, final in self.staged:
            if os.path.isdir(final):   # would fail the rename; refuse before anything is replaced
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way", final)
        with DeferSignals():
            write_text(self.journal, json.dumps(body) + "\n")
            done = 0
            try:
                for tmp, final in self.staged:
                    os.replace(tmp, final)
                    done += 1
            except OSError as exc:
                if done == 0:   # nothing replaced yet: the old files stand, drop the journal
                    _unlink_quietly(self.journal)
                    raise
                # Some files are replaced: the journal and the rest stay for roll_forward.
                self.staged = []
                raise OSError(exc.errno, f"interrupted after {done} of {len(body['renames'])} renames "
                                         f"({exc.strerror}); the next writer or reader finishes them from "
                                         f"{self.journal}", exc.filename) from exc
            fsync_dir(folder)
            os.unlink(self.journal)
            fsync_dir(folder)
        self.staged = []

    def abort(self) -> None:
        """Remove the staged files (the targets are untouched)."""
        for tmp, _ in self.staged:
            _unlink_quietly(tmp)
        self.staged = []
