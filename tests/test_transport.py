"""The SSH transport against the real loopback sshd: host keys (accept-new, then pinned), the agent
upload (once, named by its content hash), the pod env file, ssh_config aliases and host forms,
never prompting, bounded connect time; and the one quoting boundary (remote_command_string),
checked through a real remote shell."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    WORKFLOW,
    Pod,
    SSHServer,
    cleanup_pod,
    free_port,
    make_pod,
    one_line_error,
    start_sshd,
    with_signal,
)

from helpers.agent import POD_PACKAGE, build_bundle, bundle_hash
from helpers.endpoint import SSHEndpoint
from helpers.paramiko_ssh import SSHTransport
from helpers.transport import parse_host, remote_command_string

DEBUG_LINE = re.compile(r"debug: transport ssh: (\d+) connection\(s\), (\d+) remote command\(s\), "
                        r"(\d+) agent upload\(s\)")


@pytest.fixture(params=["openssh", "paramiko"])
def ssh_pod(request: pytest.FixtureRequest, tmp_path: Path, source_repo: Path, sshd: SSHServer) -> Iterator[Pod]:
    """Every transport test runs over both SSH clients (SSH_CLIENT)."""
    made = make_pod("ssh", tmp_path, source_repo, sshd)
    made.set(SSH_CLIENT=request.param)
    made.extra_env["SSH_CLIENT"] = request.param  # only a marker for the tests: config keys come from the file
    yield made
    cleanup_pod(made)


def debug_counts(result: subprocess.CompletedProcess[str]) -> tuple[int, int, int]:
    """(connections, remote commands, agent uploads) from a --debug run."""
    assert result.returncode == 0, result.stderr
    found = DEBUG_LINE.findall(result.stderr)
    assert len(found) == 1, result.stderr
    return tuple(int(n) for n in found[0])  # type: ignore[return-value]


def known_hosts_of(pod: Pod) -> Path:
    return pod.env_file.parent / "known_hosts"


def host_key_line(server: SSHServer, port: int | None = None) -> str:
    key_type, key = server.host_pub.read_text().split()[:2]
    return f"[{server.host}]:{port or server.port} {key_type} {key}"


# ----------------------------------------------------------------------------- host keys


def test_first_connection_pins_the_host_key_once(ssh_pod: Pod, sshd: SSHServer):
    known_hosts = known_hosts_of(ssh_pod)
    assert not known_hosts.exists()
    assert ssh_pod.wf("fsm-status").returncode == 0
    pinned = known_hosts.read_text()
    assert pinned.splitlines() == [host_key_line(sshd)]
    assert pinned.startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    for args in (("fsm-status",), ("pod-status",), ("bootstrap",), ("fsm-status", "--json")):
        assert ssh_pod.wf(*args).returncode == 0, args
    assert known_hosts.read_text() == pinned  # no second line, nothing rewritten
    # OpenSSH itself accepts the pinned line with StrictHostKeyChecking=yes
    probe = subprocess.run([*sshd.ssh_argv(known_hosts), "true"], stdin=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


@pytest.fixture
def second_sshd(tmp_path: Path) -> Iterator[SSHServer]:
    """Another sshd with its own host key (and its own client key) on another port."""
    server = start_sshd(tmp_path / "sshd2", free_port())
    yield server
    with_signal(server.pid, signal.SIGTERM)


def test_changed_host_key_is_refused_even_when_pinned(ssh_pod: Pod, sshd: SSHServer, second_sshd: SSHServer):
    assert second_sshd.host_pub.read_text().split()[1] != sshd.host_pub.read_text().split()[1]
    known_hosts = known_hosts_of(ssh_pod)
    assert ssh_pod.wf("fsm-status").returncode == 0  # pins the first sshd's key (accept-new)
    # the key pinned for port 2 is the first server's: a different machine now answers there
    with known_hosts.open("a") as handle:
        handle.write(host_key_line(sshd, second_sshd.port) + "\n")
    pinned = known_hosts.read_text()
    ssh_pod.set(OPS_DEFAULT_HOST=second_sshd.target, OPS_SSH_KEY=str(second_sshd.key),
                OPS_REMOTE_OUTPUTS_DIR=str(ssh_pod.root / "outputs2"))
    for args in (("fsm-status",), ("bootstrap",)):
        refused = ssh_pod.wf(*args)
        assert refused.returncode == 3, refused.stderr
        line = one_line_error(refused)
        assert f"host key of root@127.0.0.1:{second_sshd.port} does not match the one pinned in {known_hosts}" in line
        remove = f"ssh-keygen -R '[127.0.0.1]:{second_sshd.port}' -f {known_hosts}"
        assert remove in line
    assert known_hosts.read_text() == pinned  # never replaced by the new key
    assert not (ssh_pod.root / "outputs2").exists()  # nothing ran on the impostor
    # following the advice in the message works: the new key is then accepted and pinned
    subprocess.run(shlex.split(remove), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert ssh_pod.wf("fsm-status").returncode == 0
    assert known_hosts.read_text().splitlines() == [host_key_line(sshd), host_key_line(second_sshd)]


# ----------------------------------------------------------------------------- the agent


def test_agent_uploaded_once_then_one_round_trip(ssh_pod: Pod):
    connections, _, uploads = debug_counts(ssh_pod.wf("fsm-status", "--debug"))
    assert (connections, uploads) == (1, 1)
    # the steady state: one remote command, no upload; OpenSSH rides the shared connection (no new one)
    warm = 0 if ssh_pod.extra_env.get("SSH_CLIENT") == "openssh" else 1
    assert debug_counts(ssh_pod.wf("fsm-status", "--debug")) == (warm, 1, 0)
    assert debug_counts(ssh_pod.wf("pod-status", "--debug")) == (warm, 1, 0)
    assert "1 remote command(s), 0 agent upload(s)" in ssh_pod.wf("pod-status", "--json", "--debug").stderr


def test_agent_file_is_named_by_the_hash_of_its_sources(ssh_pod: Pod):
    assert ssh_pod.wf("fsm-status").returncode == 0
    control = ssh_pod.outputs / "_control"
    agents = sorted(p.name for p in control.glob("agent-*.pyz"))
    assert agents == [f"agent-{bundle_hash()}.pyz"]
    assert re.fullmatch(r"agent-[0-9a-f]{16}\.pyz", agents[0])
    assert (control / agents[0]).read_bytes() == build_bundle()  # byte-for-byte the local build
    # the name follows the sources: any edit to a pod module names (and so uploads) a new file
    sources = [(f"pod/{p.relative_to(POD_PACKAGE).as_posix()}", p.read_bytes())
               for p in sorted(POD_PACKAGE.rglob("*.py"))]
    assert bundle_hash(sources) == bundle_hash()
    edited = [(name, data + b"\n# edited\n" if name == "pod/fsm.py" else data) for name, data in sources]
    renamed = [("pod/fsm2.py" if name == "pod/fsm.py" else name, data) for name, data in sources]
    assert len({bundle_hash(), bundle_hash(edited), bundle_hash(renamed)}) == 3
    # an agent of another version lying there is not used; a missing one is uploaded again
    (control / "agent-0123456789abcdef.pyz").write_bytes(b"#!/usr/bin/env python3\nraise SystemExit(9)\n")
    (control / agents[0]).unlink()
    shutil.rmtree(control / agents[0].replace(".pyz", ".d"))  # the unpacked copy it runs from
    assert debug_counts(ssh_pod.wf("fsm-status", "--debug"))[2] == 1
    assert (control / agents[0]).read_bytes() == build_bundle()
    assert debug_counts(ssh_pod.wf("fsm-status", "--debug"))[1:] == (1, 0)


# ----------------------------------------------------------------------------- the pod env file


def test_pod_env_file_is_0600_and_rewritten_only_when_the_config_changes(ssh_pod: Pod):
    env_file = ssh_pod.root / "project.env"
    assert ssh_pod.wf("bootstrap").returncode == 0
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    assert text.startswith("# written by workflow.sh") and "\nRUN_RETRIES=2\n" in text
    first = env_file.stat().st_mtime_ns
    for args in (("bootstrap",), ("fsm-status",)):
        assert ssh_pod.wf(*args).returncode == 0
        assert env_file.stat().st_mtime_ns == first, args
    assert ssh_pod.wf("--set", "RUN_RETRIES=5", "bootstrap").returncode == 0
    changed = env_file.stat().st_mtime_ns
    assert changed != first and "\nRUN_RETRIES=5\n" in env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert ssh_pod.wf("--set", "RUN_RETRIES=5", "bootstrap").returncode == 0
    assert env_file.stat().st_mtime_ns == changed  # same config again: left alone
    assert ssh_pod.wf("bootstrap").returncode == 0  # back to the file's value: rewritten
    assert env_file.read_text() == text and stat.S_IMODE(env_file.stat().st_mode) == 0o600


# ----------------------------------------------------------------------------- where the pod is


def test_ssh_config_alias(ssh_pod: Pod, sshd: SSHServer):
    ssh_config = ssh_pod.env_file.parent / "ssh_config"  # the pod's OPS_SSH_CONFIG
    ssh_config.write_text(f"Host mypod\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
                          f"  IdentityFile {sshd.key}\n")
    ssh_pod.set(OPS_DEFAULT_HOST="mypod", OPS_SSH_KEY="")  # the key comes from ssh_config only
    result = ssh_pod.wf("pod-status", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["target"] == f"root@127.0.0.1:{sshd.port}" and data["workflow"]["state"] == "INIT"
    assert known_hosts_of(ssh_pod).read_text().splitlines() == [host_key_line(sshd)]
    # an alias without a key anywhere cannot log in, and says so (no prompt, exit 3)
    ssh_config.write_text(f"Host mypod\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
                          f"  IdentityFile {ssh_pod.root / 'no-such-key'}\n")
    failed = ssh_pod.wf("pod-status")
    assert failed.returncode == 3, failed.stderr


@pytest.mark.parametrize("form", ["root@127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_host_forms(ssh_pod: Pod, sshd: SSHServer, form: str):
    result = ssh_pod.wf("--set", f"OPS_DEFAULT_HOST={form.format(port=sshd.port)}", "fsm-status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "INIT"


# ----------------------------------------------------------------------------- never prompts, never hangs


def run_without_terminal(pod: Pod, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """workflow.sh with stdin closed and no controlling terminal: a prompt could only fail or hang."""
    env = {**os.environ, "WORKFLOW_VENV": sys.prefix}
    env.pop("WORKFLOW_PROFILE", None)
    env.pop("SSH_AUTH_SOCK", None)
    command = 'exec 0<&-; exec "$@"'
    started = time.monotonic()
    result = subprocess.run(["bash", "-c", command, "bash", str(WORKFLOW), "--env", str(pod.env_file), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True, timeout=timeout)
    return result, time.monotonic() - started


def test_missing_key_file_fails_fast_without_prompting(ssh_pod: Pod):
    ssh_pod.set(OPS_SSH_KEY=str(ssh_pod.root / "no-such-key"), SSH_CONNECT_TIMEOUT_SECS="30")
    result, elapsed = run_without_terminal(ssh_pod, "fsm-status")
    assert result.returncode == 3, result.stderr
    one_line_error(result)
    assert elapsed < 15, elapsed
    assert not ssh_pod.outputs.exists()


def test_missing_key_file_message_names_the_key(ssh_pod: Pod):
    missing = ssh_pod.root / "no-such-key"
    ssh_pod.set(OPS_SSH_KEY=str(missing))
    result, _ = run_without_terminal(ssh_pod, "fsm-status")
    assert result.returncode == 3
    line = one_line_error(result)
    assert str(missing) in line and "cannot reach" not in line


def test_passphrase_protected_key_is_refused_without_prompting(ssh_pod: Pod):
    key = ssh_pod.root / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(key)], check=True)
    ssh_pod.set(OPS_SSH_KEY=str(key), SSH_CONNECT_TIMEOUT_SECS="30")
    result, elapsed = run_without_terminal(ssh_pod, "pod-status")
    assert result.returncode == 3, result.stderr
    line = one_line_error(result)
    assert "cannot log in" in line and "encrypted" in line
    assert elapsed < 15, elapsed


class SilentServer:
    """A TCP listener that accepts connections and holds them open, silent or after a banner line (or
    closes them after the banner)."""

    def __init__(self, banner: bytes, close_after_banner: bool = False) -> None:
        self.banner = banner
        self.close_after_banner = close_after_banner
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.accepted.append(conn)
            if self.banner:
                conn.sendall(self.banner)
            if self.close_after_banner:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.parametrize("banner", [b"", b"SSH-2.0-OpenSSH_9.2\r\n"], ids=["no-banner", "banner-then-silence"])
def test_connect_is_bounded_by_the_connect_timeout(ssh_pod: Pod, banner: bytes):
    server = SilentServer(banner)
    try:
        timeout = 3
        ssh_pod.set(OPS_DEFAULT_HOST=f"root@127.0.0.1:{server.port}", SSH_CONNECT_TIMEOUT_SECS=str(timeout))
        result, elapsed = run_without_terminal(ssh_pod, "fsm-status", timeout=120)
        assert server.accepted, "workflow.sh never connected"
    finally:
        server.close()
    assert result.returncode == 3, result.stderr
    # exactly one error line from workflow.sh (paramiko's thread may add its own traceback around it,
    # depending on timing: test_non_ssh_service_gives_one_line pins that bug down deterministically)
    lines = [line for line in result.stderr.splitlines() if line.startswith("workflow.sh")]
    assert len(lines) == 1, result.stderr
    assert f"cannot reach root@127.0.0.1:{server.port}" in lines[0] and f"waited at most {timeout}s" in lines[0]
    assert elapsed < timeout + 10, elapsed


def test_non_ssh_service_gives_one_line(ssh_pod: Pod):
    """OPS_DEFAULT_HOST pointing at a port where something else (here: an HTTP-ish reply) answers."""
    server = SilentServer(b"HTTP/1.0 400 Bad Request\r\n\r\n", close_after_banner=True)
    try:
        ssh_pod.set(OPS_DEFAULT_HOST=f"root@127.0.0.1:{server.port}")
        result, elapsed = run_without_terminal(ssh_pod, "fsm-status")
    finally:
        server.close()
    assert result.returncode == 3 and elapsed < 15
    assert f"cannot reach root@127.0.0.1:{server.port}" in one_line_error(result)


# ----------------------------------------------------------------------------- quoting: one boundary

CANARY_TOKEN = "@CANARY@"
HOSTILE = [
    "plain", "two words", "", " ", "$(touch @CANARY@)", "`touch @CANARY@`", "; touch @CANARY@",
    "&& touch @CANARY@", "|| touch @CANARY@", "| touch @CANARY@", "> @CANARY@", "'", '"', "'\"'\"'",
    "it's", 'say "hi"', "back\\slash\\", "$HOME", "${HOME}", "$((1+1))", "*", "?", "[a-z]*", "{a,b}", "~", "~root",
    "x~/y", "-n", "--", "-e", "%s", "#not a comment", "tab\there", "caf\u00e9 \u2603", "!!", "a=b", "\\n",
]
MULTILINE = ["new\nline", "trailing\n", "\n", "echo a\ntouch @CANARY@\n"]


def with_canary(args: list[str], canary: Path) -> list[str]:
    return [a.replace(CANARY_TOKEN, str(canary)) for a in args]


def test_remote_command_string_quotes_every_word():
    argv = ["printf", "%s\n", "$(rm -rf /)", "; rm -rf /", "`reboot`", *HOSTILE, *MULTILINE]
    line = remote_command_string(argv)
    assert shlex.split(line) == argv  # pure: nothing here is executed
    assert remote_command_string(["ls", "~/a dir/x"]) == "ls ~/'a dir/x'"
    assert remote_command_string(["~/bin/tool", "~/"]) == "~/bin/tool ~/''"
    assert remote_command_string(["echo", "~", "~root", "x~/y"]) == "echo '~' '~root' 'x~/y'"
    assert remote_command_string(["echo", "~/$(id)"]) == "echo ~/'$(id)'"
    assert remote_command_string([]) == ""


@pytest.fixture
def pinned(sshd: SSHServer, tmp_path: Path) -> Path:
    return sshd.pinned_known_hosts(tmp_path / "known_hosts_pinned")


def ssh_run(sshd: SSHServer, known_hosts: Path, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*sshd.ssh_argv(known_hosts), remote_command_string(argv)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def test_hostile_args_arrive_literally_through_openssh(sshd: SSHServer, pinned: Path, tmp_path: Path):
    canary = tmp_path / "canary"
    args = with_canary(HOSTILE, canary)
    result = ssh_run(sshd, pinned, ["printf", "%s\n", *args])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\n")[:-1] == args
    exact = ssh_run(sshd, pinned, ["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))",
                                   *args, *with_canary(MULTILINE, canary)])
    assert exact.returncode == 0, exact.stderr
    assert json.loads(exact.stdout) == args + with_canary(MULTILINE, canary)
    assert not canary.exists()


def test_tilde_slash_expands_to_the_remote_home(sshd: SSHServer, pinned: Path):
    home = ssh_run(sshd, pinned, ["sh", "-c", 'printf %s "$HOME"']).stdout.decode()
    assert home.startswith("/")
    result = ssh_run(sshd, pinned, ["printf", "%s\n", "~/a b", "~/", "~/$(id)", "~", "x~/y", "~root"])
    assert result.stdout.decode().splitlines() == [f"{home}/a b", f"{home}/", f"{home}/$(id)", "~", "x~/y", "~root"]


def test_ssh_transport_runs_argv_literally(sshd: SSHServer, pinned: Path, tmp_path: Path):
    canary = tmp_path / "canary"
    args = with_canary(HOSTILE + MULTILINE, canary)
    endpoint = SSHEndpoint(host=sshd.host, port=sshd.port, user="root", key_filename=str(sshd.key),
                           known_hosts=str(pinned))
    transport = SSHTransport(endpoint, connect_timeout=10, keepalive=5)
    try:
        result = transport.run(["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args],
                               timeout=60)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout) == args
        echoed = transport.run(["cat"], stdin=b"line one\n$(touch x)\n", timeout=60)
        assert echoed.stdout == b"line one\n$(touch x)\n"
        failed = transport.run(["sh", "-c", "exit 7"], timeout=60)
        assert failed.exit_code == 7
        assert transport.connections == 1 and transport.commands_run == 3
    finally:
        transport.close()
    assert not canary.exists()


@pytest.mark.parametrize("spec,expected", [
    ("root@10.0.0.5:2200", ("root", "10.0.0.5", 2200)),
    ("gpu-box", (None, "gpu-box", None)),
    ("ubuntu@gpu-box", ("ubuntu", "gpu-box", None)),
    ("gpu-box.example.com:22", (None, "gpu-box.example.com", 22)),
    ("[::1]:2222", (None, "::1", 2222)),
    ("root@[fe80::1]", ("root", "fe80::1", None)),
    ("root@[::1]:2222", ("root", "::1", 2222)),
    ("::1", (None, "::1", None)),
    ("127.0.0.1", (None, "127.0.0.1", None)),
])
def test_parse_host(spec: str, expected: tuple[str | None, str, int | None]):
    assert parse_host(spec) == expected
