"""A two-node Slurm cluster on this one machine, for rows with ``nodes`` > 1 (tests/test_slurm_nodes.py).

slurmctld and munged run in the root network namespace on a bridge of their own (10.X.Y.1); each node,
NodeName ``n1`` and ``n2``, is one slurmd in its own network namespace (a veth on that bridge, 10.X.Y.11/.12),
with its own hostname (``node1``/``node2``: UTS namespace; NodeHostname, NodeAddr the IP) and its own
/etc/hosts (a bind mount in its own mount namespace; the real file is untouched) naming the controller and
both nodes' hostnames, as the nodes of a real cluster resolve each other. The NodeNames resolve nowhere:
only Slurm knows them, as on clusters whose NodeNames are aliases.
The filesystem is the host's (the shared filesystem of a cluster). No accounting (sacct falls back to
squeue plus the run files): the cluster starts in a few seconds. No default route and ip_forward untouched:
nothing leaves the bridge's /24. Names (namespaces, bridge, directory) and ports are unique per start,
so it runs beside the one-node cluster of tests/slurm_cluster.py and beside another session's.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from slurm_cluster import SlurmCluster, _free_port, _wait, _write, start_munge

TOOLS = ("munged", "mungekey", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo",
         "srun", "ip", "unshare", "nsenter")
NODES = ("n1", "n2")  # Slurm's NodeNames; the nodes' hostnames are HOSTNAMES (NodeHostname), as on
HOSTNAMES = {"n1": "node1", "n2": "node2"}  # clusters whose NodeNames are aliases: only Slurm knows them
NODE_CPUS = 2


def missing_tools() -> List[str]:
    return [tool for tool in TOOLS if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK))]


@dataclass
class NodesCluster(SlurmCluster):
    """SlurmCluster (env, run, ok) plus the network it made; stop() also removes the namespaces and bridge."""

    bridge: str = ""
    netns: List[str] = field(default_factory=list)
    addresses: dict = field(default_factory=dict)  # node -> its IP on the bridge

    def stop(self) -> None:
        super().stop()  # slurmd n2, slurmd n1, slurmctld, munged (reverse start order)
        for ns in self.netns:  # anything left in a node (a step, a trainer) ends with it
            for sig in (signal.SIGTERM, signal.SIGKILL):
                pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), sig)
                    except (ProcessLookupError, ValueError):
                        pass
                if pids and sig == signal.SIGTERM:
                    try:
                        _wait(lambda ns=ns: not subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE,
                                                               text=True).stdout.split(), f"{ns} to empty", 10.0)
                    except RuntimeError:
                        pass  # what is left gets SIGKILL
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], stderr=subprocess.DEVNULL)


def _subnet() -> str:
    """A 10.X.Y prefix no interface of this machine uses."""
    used = subprocess.run(["ip", "-br", "addr"], stdout=subprocess.PIPE, text=True, check=True).stdout
    while True:
        prefix = f"10.{random.randint(201, 250)}.{random.randint(0, 255)}"
        if f" {prefix}." not in used:
            return prefix


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True)


def start_nodes_cluster() -> NodesCluster:
    """Start it under a fresh /tmp directory; returns once both nodes are idle."""
    tag = uuid.uuid4().hex[:6]
    s = Path(f"/tmp/wfmn-{tag}")  # short: the munge socket path has a length limit
    for sub in ("munge", "munge-run", "state", "spool", "log"):
        (s / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(s, 0o755)
    os.chmod(s / "munge-run", 0o755)
    os.chmod(s / "munge", 0o700)
    cluster = NodesCluster(s, 1001, env={"SLURM_CONF": str(s / "slurm.conf")}, bridge=f"wfmnbr{tag}")
    try:
        _start(cluster, s, tag)
    except BaseException:
        cluster.stop()
        shutil.rmtree(s, ignore_errors=True)
        raise
    return cluster


def _network(cluster: NodesCluster, s: Path, tag: str) -> str:
    prefix = _subnet()
    _ip("link", "add", cluster.bridge, "type", "bridge")
    _ip("addr", "add", f"{prefix}.1/24", "dev", cluster.bridge)
    _ip("link", "set", cluster.bridge, "up")
    cluster.addresses = {node: f"{prefix}.{11 + i}" for i, node in enumerate(NODES)}
    hosts = ["127.0.0.1 localhost", f"{prefix}.1 {socket.gethostname()}",
             *(f"{ip} {HOSTNAMES[node]}" for node, ip in cluster.addresses.items())]
    _write(s / "hosts", "\n".join(hosts) + "\n")
    for node, address in cluster.addresses.items():
        ns, veth = f"wfmn{tag}{node}", f"wfmv{tag}{node}"
        _ip("netns", "add", ns)
        cluster.netns.append(ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", cluster.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", "eth0", "up")
    return prefix


def _start(cluster: NodesCluster, s: Path, tag: str) -> None:
    msock = s / "munge-run" / "munge.socket.2"
    start_munge(cluster, s, msock)
    prefix = _network(cluster, s, tag)
    ctld_port, slurmd_port = _free_port(), _free_port()
    nodes = [f"NodeName={node} NodeAddr={ip} NodeHostname={HOSTNAMES[node]} CPUs={NODE_CPUS} RealMemory=1024 "
             "State=UNKNOWN" for node, ip in cluster.addresses.items()]
    _write(s / "slurm.conf", "\n".join([
        f"ClusterName=wfmn{tag}", f"SlurmctldHost={socket.gethostname()}({prefix}.1)",  # slurmctld: its hostname
        "SlurmUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={msock}", "CredType=cred/munge", f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0", "MinJobAge=10", "KillWait=5",
        f"StateSaveLocation={s / 'state'}", f"SlurmdSpoolDir={s / 'spool'}/%n",
        f"SlurmctldPidFile={s / 'slurmctld.pid'}", f"SlurmdPidFile={s / 'slurmd'}.%n.pid",
        f"SlurmctldLogFile={s / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={s / 'log'}/slurmd.%n.log",
        "AccountingStorageType=accounting_storage/none", "JobAcctGatherType=jobacct_gather/none",
        "SlurmdParameters=config_overrides",  # slurmd trusts the CPUs below
        *nodes, "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, **cluster.env}
    subprocess.run(["slurmctld"], env=env, check=True)
    cluster.pidfiles.append(s / "slurmctld.pid")
    for node, ns in zip(NODES, cluster.netns):
        (s / "spool" / node).mkdir(exist_ok=True)
        # the node's own hostname and /etc/hosts, then slurmd (it daemonizes; its pid file is slurmd.<node>.pid)
        script = (f"hostname {HOSTNAMES[node]} && mount --bind {shlex.quote(str(s / 'hosts'))} /etc/hosts && "
                  f"exec slurmd -N {node}")
        # nsenter, not `ip netns exec`: that mounts a fresh /sys without /sys/fs/cgroup, which slurmd needs
        subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "unshare", "--uts", "--mount", "--propagation",
                        "private", "sh", "-c", script], env=env, check=True)
        cluster.pidfiles.append(s / f"slurmd.{node}.pid")
    states: List[str] = []

    def idle() -> bool:
        states[:] = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
        return sum(line.split(" ")[-1] == "idle" for line in states) == len(NODES)
    try:
        _wait(idle, "two idle nodes", timeout=120.0)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc} (sinfo: {states})") from None
