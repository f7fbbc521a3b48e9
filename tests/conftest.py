"""Shared fixtures: a real OpenSSH sshd on loopback, per-test "pods" (local and over SSH) with their
own directories and tmux socket, a git repo to check out, and a retry-until helper.

Tests need sshd, tmux, rsync and git. A missing one fails the test (never skips): CI installs
them (.ci/run) and a developer machine must have them too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = REPO_ROOT / "infra_scripts" / "workflow.sh"
SSHD = "/usr/sbin/sshd"


def require_tool(path_or_name: str) -> str:
    found = path_or_name if os.path.isabs(path_or_name) and os.access(path_or_name, os.X_OK) else shutil.which(
        path_or_name)
    if not found:
        pytest.fail(f"{path_or_name} is required by this test (install it: apt-get install openssh-server tmux "
                    "rsync git); tests never skip for a missing tool")
    return found


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- sshd


@dataclass
class SSHServer:
    host: str
    port: int
    key: Path  # client private key
    directory: Path
    pid: int
    host_pub: Path

    @property
    def target(self) -> str:
        return f"root@{self.host}:{self.port}"

    def ssh_argv(self, known_hosts: Path) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-p", str(self.port), "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                f"root@{self.host}"]

    def pinned_known_hosts(self, path: Path) -> Path:
        key_type, key = self.host_pub.read_text().split()[:2]
        path.write_text(f"[{self.host}]:{self.port} {key_type} {key}\n")
        return path


def start_sshd(directory: Path, port: int, host: str = "127.0.0.1", extra_config: tuple[str, ...] = ()) -> SSHServer:
    """``extra_config``: more sshd_config lines (e.g. ``SetEnv SLURM_CONF=...`` for a Slurm login node)."""
    require_tool(SSHD)
    require_tool("ssh-keygen")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    for name, comment in (("hostkey", "testhost"), ("id_ed25519", "testclient")):
        if not (directory / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                            str(directory / name)], check=True)
    shutil.copy(directory / "id_ed25519.pub", directory / "authorized_keys")
    os.chmod(directory / "authorized_keys", 0o600)
    config = directory / f"sshd_config.{port}"
    pidfile = directory / f"sshd.{port}.pid"
    config.write_text("\n".join([
        f"Port {port}", f"ListenAddress {host}", f"HostKey {directory / 'hostkey'}", f"PidFile {pidfile}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "UsePAM no", "StrictModes no", "UseDNS no", "MaxStartups 200:30:400", "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server", *extra_config, "",
    ]))
    subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
    cmd = [SSHD, "-f", str(config), "-E", str(directory / f"sshd.{port}.log")]
    bashrc = Path.home() / ".bashrc"
    if os.geteuid() == 0 and bashrc.is_file() and shutil.which("unshare"):
        # bash reads ~/.bashrc even for `ssh host cmd`; root's here runs pyenv init (~130 ms a command).
        # Hide it from this sshd only (a private mount namespace), as on a plain pod.
        empty = directory / "empty_bashrc"
        empty.write_text("")
        script = f"mount --bind {empty} {bashrc} && exec " + " ".join(cmd)
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], check=True)
    else:
        subprocess.run(cmd, check=True)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="sshd pid file")
    wait_until(lambda: _port_open(host, port), 10, what=f"sshd on {host}:{port}")
    return SSHServer(host, port, directory / "id_ed25519", directory, int(pidfile.read_text()),
                     directory / "hostkey.pub")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def ssh_control_dir() -> Iterator[Path]:
    """The tests' shared SSH connections (ControlMaster sockets) live in a directory of this session's
    own (short: a socket path is limited to 107 bytes); every master left is closed at the end."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="wft-ctl-", dir="/tmp"))
    previous = os.environ.get("WORKFLOW_SSH_CONTROL_DIR")
    os.environ["WORKFLOW_SSH_CONTROL_DIR"] = str(base / "ctl")
    yield base / "ctl"
    for sock in (base / "ctl").glob("cm-*"):
        if sock.is_socket():
            try:
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "unused"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15)
            except subprocess.TimeoutExpired:
                pass
    if previous is None:
        os.environ.pop("WORKFLOW_SSH_CONTROL_DIR", None)
    else:
        os.environ["WORKFLOW_SSH_CONTROL_DIR"] = previous
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"), free_port())
    yield server
    with_signal(server.pid, signal.SIGTERM)


def with_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------- a git repo to check out


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, stdout=subprocess.PIPE,
                          text=True).stdout.strip()


@pytest.fixture(scope="session")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo (REPO_URL) holding this checkout's examples/ and test trainer scripts, committed."""
    require_tool("git")
    repo = tmp_path_factory.mktemp("source") / "project"
    repo.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "out", "*.bin", "*.pt")
    shutil.copytree(REPO_ROOT / "examples", repo / "examples", ignore=ignore)
    if (REPO_ROOT / "tests" / "sweep_fixture").exists():
        shutil.copytree(REPO_ROOT / "tests" / "sweep_fixture", repo / "tests" / "sweep_fixture", ignore=ignore)
    (repo / "README.md").write_text("fixture project for workflow.sh tests\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "fixture")
    return repo


def git(repo: Path, *args: str) -> str:
    return _git(repo, *args)


# ----------------------------------------------------------------------------- pods


@dataclass
class Pod:
    """One test "pod": its own directories and tmux socket, reached locally or over the test sshd."""

    kind: str
    root: Path  # everything the pod side writes lives under here
    env_file: Path
    socket: str
    sshd: SSHServer | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def wf(self, *args: str, timeout: float = 180, env: dict[str, str] | None = None,
           input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run infra_scripts/workflow.sh with this pod's config file."""
        full_env = {**os.environ, "WORKFLOW_VENV": sys.prefix, **self.extra_env, **(env or {})}
        full_env.pop("WORKFLOW_PROFILE", None)
        return subprocess.run([str(WORKFLOW), "--env", str(self.env_file), *args], env=full_env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                              input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)

    def set(self, **values: str) -> None:
        """Append KEY=VALUE lines to this pod's config file."""
        with self.env_file.open("a") as handle:
            for key, value in values.items():
                handle.write(f"{key}={value}\n")

    def snapshot(self) -> dict[str, tuple[int, float]]:
        """Every file under the pod root with its size and mtime (to assert that nothing changed)."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and "/_control/agent-" not in str(path):
                stat = path.stat()
                found[str(path.relative_to(self.root))] = (stat.st_size, stat.st_mtime)
        return found

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)


def make_pod(kind: str, base: Path, source: Path | None, server: SSHServer | None) -> Pod:
    require_tool("tmux")
    require_tool("rsync")
    root = base / "pod"
    root.mkdir(parents=True)
    socket_name = f"wft-{uuid.uuid4().hex[:10]}"
    lines = {
        "OPS_REMOTE_OUTPUTS_DIR": str(root / "outputs"), "OPS_REMOTE_REPO": str(root / "repo"),
        "REMOTE_ENV_PATH": str(root / "project.env"), "DATA_DIR": str(root / "data"),
        "TMUX_SOCKET": socket_name, "REQUIRE_CUDA": "0", "DATA_BUILD_OFFLINE": "0", "CHECK_DATA": "0",
        "PIP_INSTALL_ARGS": "none", "REMOTE_PYTHON_BIN": sys.executable, "TASK_KILL_GRACE_SECS": "2",
        "LOCAL_ARTIFACTS_DIR": str(base / "artifacts"), "OPS_KNOWN_HOSTS": str(base / "known_hosts"),
        "OPS_SSH_CONFIG": str(base / "ssh_config"), "SSH_CONNECT_TIMEOUT_SECS": "5",
    }
    if source is not None:
        lines["REPO_URL"] = str(source)
    if kind == "ssh":
        assert server is not None
        lines["OPS_DEFAULT_HOST"] = server.target
        lines["OPS_SSH_KEY"] = str(server.key)
    env_file = base / "workflow.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return Pod(kind, root, env_file, socket_name, server)


def cleanup_pod(pod: Pod) -> None:
    if pod.kind == "ssh":  # the shared SSH connection (ControlPersist) would outlive the test
        pod.wf("disconnect", timeout=60)
    pod.tmux("kill-server")  # supervisors get SIGHUP and stop their process trees
    time.sleep(0.2)


def slurm_login(base: Path, source_repo: Path, cluster: Any, settings: dict[str, str],
                server: SSHServer | None = None) -> Iterator[Pod]:
    """A module's Slurm login node: the local target with the cluster's environment (or over SSH through
    ``server``, an sshd that gives its sessions that environment), bootstrapped and checked out with
    SWEEP_EXECUTOR=slurm; afterwards every campaign of it is stopped (nothing of ours left queued)."""
    login = make_pod("ssh" if server else "local", base, source_repo, server)
    if server is None:  # over SSH the login node's own environment must carry SLURM_CONF, not ours
        login.extra_env.update(cluster.env)
    login.set(**{**settings, "SWEEP_EXECUTOR": "slurm", "RUN_RETRIES": "0"})
    try:
        for command in ("bootstrap", "checkout"):
            result = login.wf(command, timeout=600)
            assert result.returncode == 0, f"{command}: {result.stderr}"
        yield login
    finally:
        campaigns = login.outputs / "_campaigns"
        for campaign in sorted(os.listdir(campaigns)) if campaigns.is_dir() else []:
            login.wf("sweep-stop", "--campaign", campaign, timeout=120)
        cleanup_pod(login)


def squeue(cluster: Any, campaign: str) -> list[str]:
    """The campaign's array tasks in the queue, one `jobid|STATE` line each."""
    out = cluster.run("squeue", "-h", "-r", f"--name={campaign}", "--format=%i|%T").stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(params=["local", "ssh"])
def pod(request: pytest.FixtureRequest, tmp_path: Path, source_repo: Path) -> Iterator[Pod]:
    server = request.getfixturevalue("sshd") if request.param == "ssh" else None
    made = make_pod(request.param, tmp_path, source_repo, server)
    yield made
    cleanup_pod(made)


@pytest.fixture
def local_pod(tmp_path: Path, source_repo: Path) -> Iterator[Pod]:
    made = make_pod("local", tmp_path, source_repo, None)
    yield made
    cleanup_pod(made)


@pytest.fixture
def ssh_pod(tmp_path: Path, source_repo: Path, sshd: SSHServer) -> Iterator[Pod]:
    made = make_pod("ssh", tmp_path, source_repo, sshd)
    yield made
    cleanup_pod(made)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The failure message: exactly one line on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    return lines[0]


# ----------------------------------------------------------------------------- slurm


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One-node Slurm cluster (munge, slurmdbd + MariaDB, slurmctld, slurmd, 4 fake GPUs) for the session.
    MaxArraySize comes from WF_TEST_SLURM_MAX_ARRAY (default 5). A missing component fails, never skips."""
    import slurm_cluster as cluster_mod

    missing = cluster_mod.missing_tools()
    if missing:
        pytest.fail(f"Slurm is required by this test: missing {', '.join(missing)} (apt-get install slurmctld slurmd "
                    "slurm-client munge slurmdbd mariadb-server); tests never skip for a missing tool")
    directory = Path(f"/tmp/wfslurm-{uuid.uuid4().hex[:8]}")  # short: the munge socket path has a length limit
    cluster = cluster_mod.start_cluster(directory, int(os.environ.get("WF_TEST_SLURM_MAX_ARRAY", "5")))
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_nodes_cluster() -> Iterator[Any]:
    """Two-node Slurm cluster (slurmctld in the root network namespace, slurmd n1 and n2 each in a network
    namespace of its own on one bridge; tests/slurm_nodes_cluster.py) for the session. Root only (CI runs as
    root); a missing component fails, never skips."""
    import slurm_nodes_cluster as nodes_mod

    missing = nodes_mod.missing_tools()
    if missing:
        pytest.fail(f"Slurm is required by this test: missing {', '.join(missing)} (apt-get install slurmctld slurmd "
                    "slurm-client munge iproute2 util-linux); tests never skip for a missing tool")
    if os.geteuid() != 0:
        pytest.fail("the two-node Slurm cluster needs root (network namespaces); run the tests as root, as CI does")
    cluster = nodes_mod.start_nodes_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


# ----------------------------------------------------------------------------- mlflow


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `mlflow server` (sqlite backend, served artifacts) on a free loopback port for the session;
    a test may stop() and start() it again on the same port. A missing mlflow fails, never skips."""
    import mlflow_server as server_mod

    if server_mod.mlflow_bin() is None:
        pytest.fail("mlflow is required by this test (pip install -e '.[test]' installs it); tests never skip for "
                    "a missing tool")
    server = server_mod.start_server(tmp_path_factory.mktemp("mlflow"), free_port())
    try:
        yield server
    finally:
        server.stop()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem is full."""
    with open(path, "wb", buffering=0) as handle:  # unbuffered: closing it has nothing left to write
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
