"""A one-node Slurm cluster on localhost for the tests: munge, MariaDB + slurmdbd (so sacct works),
slurmctld and slurmd, everything under one directory with its own ports, four fake GPUs via GRES
(gres.conf naming dummy device files) and a small MaxArraySize so chunking is exercised.

Used by the session fixture ``slurm_cluster`` in conftest.py. Clients need ``SLURM_CONF`` (the
fixture's ``env``); without it they try a DNS SRV lookup and fail. A missing Slurm component fails
the test that asked for the cluster (tests never skip).
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
from typing import Callable, Dict, List

TOOLS = ("munged", "mungekey", "munge", "mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "slurmctld",
         "slurmd", "sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "sacctmgr")
FAKE_GPUS = 4
NODE_CPUS = 8


def missing_tools() -> List[str]:
    return [tool for tool in TOOLS if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"slurm test cluster: timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


@dataclass
class SlurmCluster:
    directory: Path
    max_array_size: int
    env: Dict[str, str] = field(default_factory=dict)
    pidfiles: List[Path] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        # in the cluster's own directory: a job's default slurm-N.out never lands in the checkout
        return subprocess.run(list(argv), env={**os.environ, **self.env}, stdout=subprocess.PIPE, cwd=self.directory,
                              stderr=subprocess.PIPE, text=True, check=check, timeout=timeout)

    def ok(self, *argv: str) -> bool:
        try:
            return self.run(*argv, check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        for pidfile in reversed(self.pidfiles):  # slurmd, slurmctld, slurmdbd, mariadb, munged
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    os.chmod(path, mode)


def start_cluster(directory: Path, max_array_size: int = 5) -> SlurmCluster:
    """Start the cluster under ``directory``; returns once the node is idle and slurmdbd answers."""
    s = directory
    for sub in ("munge", "munge-run", "state", "spool", "log", "dev", "mysql"):
        (s / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(s, 0o755)
    os.chmod(s / "munge-run", 0o755)  # munged: the socket dir must be o+x
    os.chmod(s / "munge", 0o700)  # munged: the key must be private
    msock = s / "munge-run" / "munge.socket.2"
    cluster = SlurmCluster(s, max_array_size, env={"SLURM_CONF": str(s / "slurm.conf")})
    try:
        _start(cluster, s, msock)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_munge(cluster: SlurmCluster, s: Path, msock: Path) -> None:
    """munged with its own key and socket under ``s`` (the cluster stops it with its other daemons)."""
    if not (s / "munge" / "munge.key").exists():
        subprocess.run(["mungekey", "-c", "-k", str(s / "munge" / "munge.key")], check=True)
    subprocess.run(["munged", f"--key-file={s / 'munge' / 'munge.key'}", f"--socket={msock}",
                    f"--pid-file={s / 'munge-run' / 'munged.pid'}", f"--log-file={s / 'log' / 'munged.log'}",
                    f"--seed-file={s / 'munge' / 'munged.seed'}"], check=True)
    cluster.pidfiles.append(s / "munge-run" / "munged.pid")
    _wait(lambda: cluster.ok("munge", "-S", str(msock), "-n"), "munged")


def _start(cluster: SlurmCluster, s: Path, msock: Path) -> None:
    start_munge(cluster, s, msock)

    db_port, dbd_port, ctld_port, slurmd_port = (_free_port() for _ in range(4))
    if not (s / "mysql" / "mysql").is_dir():
        with open(s / "log" / "mysql-install.log", "w") as log:
            subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={s / 'mysql'}", "--user=root",
                            "--skip-test-db"], stdout=log, stderr=subprocess.STDOUT, check=True)
        init = True
    else:
        init = False
    subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={s / 'mysql'}", f"--socket={s / 'mysql.sock'}",
                      f"--pid-file={s / 'mysqld.pid'}", "--bind-address=127.0.0.1", f"--port={db_port}",
                      "--user=root", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                      f"--log-error={s / 'log' / 'mysqld.err'}"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    cluster.pidfiles.append(s / "mysqld.pid")
    sql = ["mariadb", "--no-defaults", "-S", str(s / "mysql.sock"), "-uroot"]
    _wait(lambda: cluster.ok(*sql, "-e", "select 1"), "mariadb")
    if init:
        cluster.run(*sql, "-e", "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; "
                                "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")

    gpus = [s / "dev" / f"gpu{i}" for i in range(FAKE_GPUS)]
    for dev in gpus:  # slurmd wants character devices: each fake GPU is a link to /dev/null
        if not dev.is_symlink():
            dev.symlink_to("/dev/null")
    _write(s / "gres.conf", f"NodeName=localhost Name=gpu File={s / 'dev'}/gpu[0-{FAKE_GPUS - 1}]\n")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = int(int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal"))) / 1024 * 0.5)
    _write(s / "slurm.conf", "\n".join([
        "ClusterName=wftest", "SlurmctldHost=localhost", "SlurmUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={msock}", "CredType=cred/munge", f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0", f"MaxArraySize={cluster.max_array_size}",
        "MinJobAge=10", "KillWait=5", "GresTypes=gpu",
        f"StateSaveLocation={s / 'state'}", f"SlurmdSpoolDir={s / 'spool'}",
        f"SlurmctldPidFile={s / 'slurmctld.pid'}", f"SlurmdPidFile={s / 'slurmd.pid'}",
        f"SlurmctldLogFile={s / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={s / 'log' / 'slurmd.log'}",
        "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
        f"AccountingStoragePort={dbd_port}",
        f"AccountingStoragePass={msock}",  # the munge socket for the slurmdbd connection (AuthInfo is not used)
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageEnforce=associations,limits,qos",  # QOS limits (MaxSubmitJobs) hold, as on real clusters
        "SlurmdParameters=config_overrides",  # more CPUs than the box: array tasks run side by side
        f"NodeName=localhost CPUs={NODE_CPUS} RealMemory={mem} Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    _write(s / "slurmdbd.conf", "\n".join([
        "AuthType=auth/munge", f"AuthInfo=socket={msock}", "DbdHost=localhost", f"DbdPort={dbd_port}",
        "SlurmUser=root", f"LogFile={s / 'log' / 'slurmdbd.log'}", f"PidFile={s / 'slurmdbd.pid'}",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={db_port}",
        "StorageUser=slurm", "StoragePass=slurmpw", "StorageLoc=slurm_acct_db", ""]), 0o600)
    env = {**os.environ, **cluster.env}
    subprocess.run(["slurmdbd"], env=env, check=True)  # finds slurmdbd.conf next to SLURM_CONF
    cluster.pidfiles.append(s / "slurmdbd.pid")
    _wait(lambda: cluster.ok("sacctmgr", "-n", "show", "cluster"), "slurmdbd")
    subprocess.run(["slurmctld"], env=env, check=True)
    cluster.pidfiles.append(s / "slurmctld.pid")
    subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True)  # NodeName=localhost != hostname
    cluster.pidfiles.append(s / "slurmd.pid")
    states: list[str] = []

    def idle() -> bool:
        states[:] = [cluster.run("sinfo", "-h", "-o", "%T %E", check=False).stdout.strip()]
        if states[0].startswith(("down", "drain")) and "Not responding" not in states[0]:
            cluster.run("scontrol", "update", "nodename=localhost", "state=resume", check=False)
        return states[0].split(" ")[0] == "idle"
    try:
        _wait(idle, "an idle node", timeout=180.0)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} (sinfo: {states})") from None
    # enforced associations: root's (made with the cluster's registration) must exist before any job
    _wait(lambda: "root" in cluster.run("sacctmgr", "-n", "-P", "show", "assoc", "user=root", "format=user",
                                        check=False).stdout, "root's association")
