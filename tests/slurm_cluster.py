"""A throw-away single-node Slurm cluster on localhost, for the tests of ``slurm/``.

Everything lives under one directory: the munge key and socket, ``slurm.conf``, the state and
spool directories, the logs and the pid files; ports are picked free at start, so a second
cluster (another developer's test session) on the same machine does not collide, and the
machine's own ``/etc/slurm`` and ``/etc/munge`` are never read or written. Clients reach this
cluster through ``SLURM_CONF`` (see :attr:`SlurmCluster.env`).

Needs root (``SlurmUser=root``; slurmd launches jobs as the submitting user) and Debian's
``slurm-wlm`` and ``munge`` packages (``.ci/system-deps`` installs them). When something is
missing, :func:`start_cluster` raises :class:`SlurmUnavailable` with the reason, and the
daemons it did start are stopped again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REQUIRED_PROGRAMS = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why (missing package, not root, daemon failed)."""


def _free_ports(count: int) -> list[int]:
    """Distinct TCP ports free right now on localhost (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _memory_mb() -> int:
    """Total memory in MB, as /proc/meminfo reports it."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("/proc/meminfo has no MemTotal line")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not written)"


@dataclass
class SlurmCluster:
    """A running single-node cluster; :meth:`stop` ends its daemons by their pid files.

    ``startup_s``: seconds from the first daemon start until ``sinfo`` shows the node idle.
    """

    root: Path
    node: str
    startup_s: float = 0.0
    pid_files: list[Path] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm clients (sbatch, squeue, ...) to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster (text output, never raises on rc)."""
        return subprocess.run(argv, env={**self.env, **(env or {})}, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    def jobcomp(self) -> str:
        """The job-completion log: one line per finished job with its JobState and ExitCode."""
        return (self.root / "jobcomp.txt").read_text() if (self.root / "jobcomp.txt").exists() else ""

    def diagnostics(self) -> str:
        """The daemons' last log lines, for error messages."""
        return "\n".join(f"--- {name}\n{_tail(self.root / 'log' / name)}"
                         for name in ("munged.log", "slurmctld.log", "slurmd.log"))

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop slurmd, slurmctld and munged by their pid files."""
        if (self.root / "slurm.conf").exists() and shutil.which("scancel"):
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=self.env,
                           capture_output=True, timeout=30)
        pids = []
        for pid_file in self.pid_files:
            try:
                pids.append(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        _terminate(pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM to each of ``pids`` (only these), then SIGKILL to those still there after ``grace_s``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _check_prerequisites() -> None:
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        raise SlurmUnavailable(f"Slurm/munge programs missing: {', '.join(missing)} "
                               "(install them with `bash .ci/system-deps` as root: Debian slurm-wlm, munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local Slurm cluster needs root (SlurmUser=root, slurmd starts jobs as their user)")


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def slurm_conf(root: Path, node: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
    """The minimal slurm.conf of a one-node cluster under ``root`` (no accounting, no cgroups)."""
    socket_path = root / "munge" / "munge.socket"
    return "\n".join([
        "ClusterName=ttt-checks-test",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={socket_path}",
        "SlurmUser=root",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'jobcomp.txt'}",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "KillWait=10",
        "MinJobAge=600",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def start_cluster(root: Path, timeout_s: float = 60.0) -> SlurmCluster:
    """Start munged, slurmctld and slurmd under ``root``; return once the node is idle.

    Raises :class:`SlurmUnavailable` (after stopping whatever it started) when a daemon does
    not come up; the message carries the daemons' last log lines.
    """
    _check_prerequisites()
    t0 = time.perf_counter()
    root = Path(root).resolve()
    for sub in ("munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o700)
    node = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(root=root, node=node)

    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_pid = root / "run" / "munged.pid"
    socket_path = root / "munge" / "munge.socket"
    cluster.pid_files.append(munge_pid)
    try:
        started = subprocess.run(
            [_program("munged"), "--force", f"--socket={socket_path}", f"--key-file={key}",
             f"--pid-file={munge_pid}", f"--log-file={root / 'log' / 'munged.log'}",
             f"--seed-file={root / 'munge' / 'munged.seed'}"],
            capture_output=True, text=True, timeout=30)
        if started.returncode != 0:
            raise SlurmUnavailable(f"munged did not start: {started.stderr.strip() or started.stdout.strip()}")
        cred = subprocess.run([_program("munge"), "-n", f"--socket={socket_path}"], capture_output=True, timeout=10)
        check = subprocess.run([_program("unmunge"), f"--socket={socket_path}"], input=cred.stdout,
                               capture_output=True, timeout=10)
        if b"STATUS:          Success" not in check.stdout and b"Success" not in check.stdout:
            raise SlurmUnavailable(f"munge -n | unmunge failed: {check.stdout.decode()} {check.stderr.decode()}")

        ctld_port, slurmd_port = _free_ports(2)
        cluster.conf.write_text(slurm_conf(root, node, os.cpu_count() or 1, int(_memory_mb() * 0.9),
                                           ctld_port, slurmd_port))
        cluster.pid_files.append(root / "run" / "slurmctld.pid")
        ctld = subprocess.run([_program("slurmctld"), "-c", "-f", str(cluster.conf)], env=cluster.env,
                              capture_output=True, text=True, timeout=30)
        if ctld.returncode != 0:
            raise SlurmUnavailable(f"slurmctld did not start (rc {ctld.returncode}): {ctld.stderr.strip()}")
        cluster.pid_files.append(root / "run" / "slurmd.pid")
        slurmd = subprocess.run([_program("slurmd"), "-f", str(cluster.conf), "-N", node], env=cluster.env,
                                capture_output=True, text=True, timeout=30)
        if slurmd.returncode != 0:
            raise SlurmUnavailable(f"slurmd did not start (rc {slurmd.returncode}): {slurmd.stderr.strip()}")

        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            info = cluster.run(["sinfo", "--noheader", "--Node", "--format=%T"], timeout=15)
            state = info.stdout.strip()
            if info.returncode == 0 and state in ("idle", "mixed", "allocated"):
                cluster.startup_s = time.perf_counter() - t0
                return cluster
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node did not become idle within {timeout_s:.0f} s (sinfo says {state!r})\n"
                               + cluster.diagnostics())
    except SlurmUnavailable as exc:
        cluster.stop()
        raise SlurmUnavailable(f"{exc}\n{cluster.diagnostics()}" if "---" not in str(exc) else str(exc)) from None
    except BaseException:
        cluster.stop()
        raise


TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                   "BOOT_FAIL", "DEADLINE"}


def parse_scontrol_records(text: str) -> list[dict[str, str]]:
    """``scontrol -o show job`` output (one job per line, ``Key=Value`` pairs) as dicts."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = {}
        for item in line.split():
            key, sep, value = item.partition("=")
            if sep:
                record[key] = value
        records.append(record)
    return records


def wait_for_jobs(cluster: SlurmCluster, job_id: str, timeout_s: float = 600.0) -> list[dict[str, str]]:
    """Poll ``scontrol show job`` until the job (every task of an array) is finished; return its records.

    Faster than ``sbatch --wait``, whose polling interval grows to 10 s. Records are kept for
    ``MinJobAge`` seconds after the end, so the final state and ExitCode are still there.
    """
    deadline = time.monotonic() + timeout_s
    records: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        shown = cluster.run(["scontrol", "--oneliner", "show", "job", str(job_id)], timeout=30)
        if shown.returncode == 0:
            records = parse_scontrol_records(shown.stdout)
            if records and all(r.get("JobState") in TERMINAL_STATES for r in records):
                return records
        time.sleep(0.5)
    states = [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in records]
    raise TimeoutError(f"job {job_id} not finished within {timeout_s:.0f} s: {states}\n{cluster.diagnostics()}")
