"""A two-node Slurm cluster on this machine, for tests: ``python tests/slurm_cluster.py [--keep]``.

Installs Debian's ``slurmctld slurmd slurm-client munge`` when ``sbatch`` is missing
(needs root and the package index), then starts, in a temporary folder and under
daemons of its own (PIDs recorded, stopped by PID, never by name):

* ``munged`` on a private socket (``AuthInfo=socket=...``), as the ``munge`` user;
* ``slurmctld`` on a free port, ``slurmd -N n1`` and ``slurmd -N n2`` (127.0.0.1, free ports,
  ``CPUs=<this machine's>``); each node declares ``Gres=gpu:8`` (``gres.conf``: eight
  ``File=`` links to ``/dev/null``: gres/gpu drops GPUs without a device file), so the example
  scripts' ``#SBATCH --gpus-per-node=8`` is granted as written; ``gpus_per_node=0`` gives nodes
  without GPUs, where those scripts need ``sbatch --gpus-per-node=0`` on the command line;
* the node names resolve while it runs: one marked line ``127.0.0.1 n1 n2`` is added to
  ``/etc/hosts`` and removed again by :meth:`SlurmCluster.stop` (also on interpreter exit).

``SlurmCluster.env()`` gives the environment for the client commands (``SLURM_CONF``).
Knobs a test may want: ``kill_wait`` (Slurm's ``KillWait``, seconds between the SIGTERM and
the SIGKILL of a cancelled or requeued job).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
HOSTS = Path("/etc/hosts")


class ClusterError(RuntimeError):
    """The cluster could not be installed or started (the message says which step and why)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_slurm(timeout: int = 600) -> None:
    """``apt-get install`` the Slurm and munge packages when ``sbatch`` is missing."""
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterError("Slurm is not installed and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed (exit {p.returncode}): {(p.stdout + p.stderr)[-2000:]}")


class SlurmCluster:
    def __init__(self, root: str | Path | None = None, nodes: tuple[str, ...] = ("n1", "n2"),
                 kill_wait: int = 30, gpus_per_node: int = 8):
        self._own_root = root is None   # a folder it made is removed by stop()
        self.root = Path(root or tempfile.mkdtemp(prefix="hesnr-slurm-"))
        self.nodes, self.kill_wait, self.gpus_per_node = nodes, kill_wait, gpus_per_node
        self.conf = self.root / "slurm.conf"
        # munged (the munge user) must reach its socket folder: a folder of its own in the
        # system temp dir, whatever the permissions of the folders above ``root``
        self.munge_dir = Path(tempfile.mkdtemp(prefix="hesnr-munge-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self._munged_pid: int | None = None
        self._hosts_line = f"127.0.0.1 {' '.join(nodes)}  # hesnr-test-slurm {os.getpid()}"
        self.start_seconds: float | None = None

    # ------------------------------------------------------------------ config
    def _write_config(self) -> None:
        cpus = os.cpu_count() or 1
        state = self.root / "state"
        state.mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=hesnrtest", "SlurmctldHost=localhost", f"SlurmctldPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_dir / 'munge.socket'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "ReturnToService=2", "MailProg=/bin/true", "SchedulerType=sched/backfill",
            f"KillWait={self.kill_wait}", "MinJobAge=600", "SlurmdTimeout=30", "InactiveLimit=0",
            "JobRequeue=1", "MpiDefault=none", "GresTypes=gpu",
            f"StateSaveLocation={state}", f"SlurmdSpoolDir={self.root / 'spool-%n'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'slurmd-%n.log'}",
            "SlurmctldDebug=info", f"SlurmdDebug={os.environ.get('HESNR_SLURMD_DEBUG', 'info')}",
        ]
        for i, n in enumerate(self.nodes):
            gres = f" Gres=gpu:{self.gpus_per_node}" if self.gpus_per_node else ""
            lines.append(f"NodeName={n} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
                         f"Port={_free_port()} CPUs={cpus}{gres} State=UNKNOWN")
        lines.append(f"PartitionName=test Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")
        # gres/gpu drops count-only (file-less) GPUs: each node's "devices" are links to /dev/null
        # (no cgroups here, so nothing is constrained by them).
        dev = self.root / "dev"
        dev.mkdir(exist_ok=True)
        last = self.gpus_per_node - 1
        gres = ["AutoDetect=off"]
        for n in self.nodes if self.gpus_per_node else ():
            for i in range(self.gpus_per_node):
                f = dev / f"{n}-gpu{i}"
                if not f.is_symlink():
                    f.symlink_to("/dev/null")  # a character device, as gres/gpu checks
            gres.append(f"NodeName={n} Name=gpu File={dev}/{n}-gpu[0-{last}]")
        (self.root / "gres.conf").write_text("\n".join(gres) + "\n")
        for n in self.nodes:
            (self.root / f"spool-{n}").mkdir(exist_ok=True)

    def env(self) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stdout}{p.stderr}")
        return p

    def run_env(self, env: dict, *cmd: str, timeout: int = 60) -> subprocess.CompletedProcess:
        """A client command with ``env`` (plus this cluster's ``SLURM_CONF``); fails loudly."""
        p = subprocess.run(cmd, env=dict(env, SLURM_CONF=str(self.conf)), capture_output=True, text=True,
                           timeout=timeout)
        if p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stdout}{p.stderr}")
        return p

    def set_kill_wait(self, seconds: int) -> None:
        """Change ``KillWait`` (seconds from a job's SIGTERM to its SIGKILL) and reconfigure."""
        text = self.conf.read_text()
        self.conf.write_text(text.replace(f"KillWait={self.kill_wait}\n", f"KillWait={seconds}\n"))
        self.kill_wait = seconds
        self.run("scontrol", "reconfigure")
        for _ in range(50):
            if f"KillWait                = {seconds} sec" in self.run("scontrol", "show", "config").stdout:
                return
            time.sleep(0.2)
        raise ClusterError(f"KillWait did not become {seconds} s after scontrol reconfigure")

    # ------------------------------------------------------------------ hosts
    def _add_hosts(self) -> None:
        text = HOSTS.read_text()
        if self._hosts_line not in text:
            # in place: /etc/hosts is often a bind mount that cannot be replaced by a rename
            with open(HOSTS, "a") as f:
                f.write(("" if text.endswith("\n") or not text else "\n") + self._hosts_line + "\n")

    def _remove_hosts(self) -> None:
        try:
            lines = HOSTS.read_text().splitlines(keepends=True)
        except OSError:
            return
        kept = [x for x in lines if x.rstrip("\n") != self._hosts_line]
        if len(kept) != len(lines):
            with open(HOSTS, "w") as f:
                f.write("".join(kept))

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.stdout", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _start_munged(self) -> None:
        d = self.munge_dir
        d.chmod(0o755)  # the socket folder must be searchable by all (munged checks)
        shutil.chown(d, "munge", "munge")
        pidfile = d / "munged.pid"
        cmd = ["runuser", "-u", "munge", "--", shutil.which("munged") or "/usr/sbin/munged",
               f"--socket={d / 'munge.socket'}", f"--pid-file={pidfile}", f"--log-file={d / 'munged.log'}",
               f"--seed-file={d / 'munged.seed'}"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise ClusterError(f"munged did not start: {p.stdout}{p.stderr}")
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                self._munged_pid = int(pidfile.read_text().strip())
                return
            time.sleep(0.05)
        raise ClusterError(f"munged wrote no pid file {pidfile}")

    def _logs_tail(self) -> str:
        out = []
        for f in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.stdout")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-1500:])
        return "\n".join(out)

    def start(self, timeout: float = 60) -> "SlurmCluster":
        t0 = time.monotonic()
        install_slurm()
        self._write_config()
        atexit.register(self.stop)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # a SIGTERM (a CI timeout) unwinds like Ctrl-C: finalizers stop the daemons and fix /etc/hosts
            signal.signal(signal.SIGTERM, signal.default_int_handler)
        self._add_hosts()
        try:
            self._start_munged()
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            for n in self.nodes:
                self._spawn(f"slurmd-{n}", ["slurmd", "-D", "-N", n, "-f", str(self.conf)])
            deadline = time.monotonic() + timeout
            while True:
                for name, p in self.procs.items():
                    if p.poll() is not None:
                        raise ClusterError(f"{name} exited with {p.returncode}\n{self._logs_tail()}")
                q = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False, timeout=10)
                states = dict(x.split() for x in q.stdout.splitlines() if x.strip())
                if q.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes):
                    break
                bad = {n: s for n, s in states.items() if s.startswith(("inval", "drain", "down"))}
                if bad or time.monotonic() > deadline:
                    raise ClusterError(f"nodes not idle after {timeout} s: {q.stdout}{q.stderr}\n{self._logs_tail()}")
                time.sleep(0.3)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def kill_node(self, node: str) -> None:
        """The node is lost: its slurmd is SIGKILLed (with the job processes it started, see
        :meth:`node_pids`) by the caller's choice; here only the daemon."""
        p = self.procs.get(f"slurmd-{node}")
        if p and p.poll() is None:
            p.kill()
            p.wait(10)

    def restart_node(self, node: str) -> None:
        self.kill_node(node)
        self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])

    def _cancel_jobs(self) -> None:
        """Cancel this cluster's jobs (their step daemons outlive slurmd) and wait until they are gone."""
        ctld = self.procs.get("slurmctld")
        if ctld is None or ctld.poll() is not None:
            return
        q = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
        ids = q.stdout.split()
        if not ids:
            return
        self.run("scancel", *ids, check=False, timeout=10)
        deadline = time.monotonic() + self.kill_wait + 15
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every daemon this object started, by PID (TERM, then KILL), and restore /etc/hosts."""
        try:
            self._cancel_jobs()
            for name, p in reversed(list(self.procs.items())):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for name, p in self.procs.items():
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            if self._munged_pid:
                try:
                    os.kill(self._munged_pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                self._munged_pid = None
        finally:
            self._remove_hosts()
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    c = SlurmCluster()
    try:
        c.start()
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cluster up in {c.start_seconds:.1f} s: export SLURM_CONF={c.conf}")
    print(c.run("sinfo").stdout)
    if "--keep" in argv:
        print("Ctrl-C stops it")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
