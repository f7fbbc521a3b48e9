"""Run argv lists on "the pod": the Transport interface, the `local` target, and what both SSH
clients share (the host spec, OpenSSH's argv, remote quoting).

The SSH targets live beside it: helpers/openssh.py (OpenSSH's client, one shared connection
across invocations) and helpers/paramiko_ssh.py (paramiko, one connection per invocation).
Either never prompts (no passwords, no passphrase prompts), bounds connect time, sends
keepalives, accepts a host key on first use and pins it after that (a changed key is refused,
exit 3). Remote commands are argv lists quoted at one boundary (`remote_command_string`).
"""

from __future__ import annotations

import os
import selectors
import shlex
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from helpers.errors import ExitCode, WorkflowError

Sink = Callable[[bytes], None]

# a small constant script: create the parent directory, write stdin to a temp file, rename
_PUT_SCRIPT = ('umask 077; mkdir -p "$(dirname "$1")" && cat > "$1.tmp.$$" && chmod "$2" "$1.tmp.$$" '
              '&& mv -f "$1.tmp.$$" "$1"')


class ConnectionLost(WorkflowError):
    """The SSH connection dropped, or the pod cannot be reached right now (exit 3): worth a reconnect,
    unlike a refused host key or login, which are plain WorkflowErrors with exit 3."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.TRANSPORT)


class CommandResult:
    """One remote command's outcome (a plain class: no dataclasses on the read-only path)."""

    __slots__ = ("exit_code", "stdout", "stderr")

    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommandResult) and (self.exit_code, self.stdout, self.stderr) == (
            other.exit_code, other.stdout, other.stderr)

    def __repr__(self) -> str:
        return f"CommandResult(exit_code={self.exit_code!r}, stdout={self.stdout!r}, stderr={self.stderr!r})"


def remote_command_string(argv: Sequence[str]) -> str:
    """The one place an argv becomes a shell string. A leading ``~/`` stays expandable."""
    words = []
    for arg in argv:
        if arg.startswith("~/"):
            words.append("~/" + shlex.quote(arg[2:]))
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


class Transport(ABC):
    kind: str = ""
    description: str = ""
    commands_run: int = 0  # remote commands (SSH exec channels) this invocation used; --debug prints it

    @abstractmethod
    def run(self, argv: Sequence[str], stdin: bytes = b"", timeout: float | None = None,
            on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> CommandResult:
        """Run ``argv`` on the pod; ``on_*`` receive output as it arrives (else it is collected)."""

    def put(self, data: bytes, path: str, mode: int = 0o644) -> None:
        """Write ``data`` to ``path`` on the pod atomically (parent created)."""
        result = self.run(["sh", "-c", _PUT_SCRIPT, "sh", path, f"{mode:o}"], stdin=data, timeout=120)
        if result.exit_code != 0:
            raise WorkflowError(f"cannot write {path} on {self.description}: "
                                f"{result.stderr.decode(errors='replace').strip()[:200]}", ExitCode.FAILED)

    @property
    @abstractmethod
    def agent_python(self) -> str:
        """The python3 that runs the pod agent."""

    def rsync_shell(self) -> list[str] | None:
        """argv of the ssh command rsync should use (-e), None on the local target."""
        return None

    def rsync_host(self) -> str | None:
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


# ----------------------------------------------------------------------------- local


class LocalTransport(Transport):
    """The `local` target: this machine stands in for the pod; no SSH."""

    kind = "local"
    description = "this machine (local target)"

    @property
    def agent_python(self) -> str:
        return sys.executable

    def run(self, argv: Sequence[str], stdin: bytes = b"", timeout: float | None = None,
            on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> CommandResult:
        self.commands_run += 1
        args = [os.path.expanduser(a) if a.startswith("~/") else a for a in argv]
        import subprocess  # here: the SSH targets' warm path spawns without it (helpers/openssh.py run)

        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError:
            return CommandResult(127, b"", f"{args[0]}: command not found\n".encode())
        assert proc.stdin and proc.stdout and proc.stderr
        if stdin:
            try:
                proc.stdin.write(stdin)
            except BrokenPipeError:
                pass
        proc.stdin.close()
        out, err = _pump([(proc.stdout, on_stdout), (proc.stderr, on_stderr)], timeout,
                         lambda: proc.kill())
        return CommandResult(proc.wait(), out, err)


def _pump(streams: list[tuple[Any, Sink | None]], timeout: float | None,
          on_timeout: Callable[[], None]) -> tuple[bytes, bytes]:
    """Read pipes until EOF, forwarding to sinks or collecting; enforce ``timeout``."""
    collected = [bytearray(), bytearray()]
    selector = selectors.DefaultSelector()
    for index, (stream, _) in enumerate(streams):
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ, index)
    deadline = None if timeout is None else time.monotonic() + timeout
    open_count = len(streams)
    while open_count:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            on_timeout()
            raise WorkflowError(f"command on the pod did not finish within {timeout:.0f}s", ExitCode.FAILED)
        for key, _ in selector.select(wait):
            chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            index = key.data
            if not chunk:
                selector.unregister(key.fileobj)
                open_count -= 1
                continue
            sink = streams[index][1]
            if sink is not None:
                sink(chunk)
            else:
                collected[index] += chunk
    return bytes(collected[0]), bytes(collected[1])


# ----------------------------------------------------------------------------- ssh


def parse_host(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` -> (user, host, port)."""
    user = None
    if "@" in spec:
        user, spec = spec.split("@", 1)
    port = None
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = int(port_text)
    else:
        host = spec
    return user, host, port


def ssh_argv(ssh_config: str | None, *, connect_timeout: int, keepalive: int, alive_count: int, known_hosts: str,
             host_key_checking: str, port: int | None, user: str | None, key_file: str | None,
             proxy_command: str | None, extra: Sequence[str] = ()) -> list[str]:
    """OpenSSH's argv for one target: never prompts, bounded connect, keepalives, the project's
    known_hosts (``host_key_checking``: accept-new on first contact, yes once pinned), then ``extra``."""
    argv = ["ssh", "-F", ssh_config if ssh_config and os.path.isfile(ssh_config) else "/dev/null",
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", f"ServerAliveInterval={keepalive}", "-o", f"ServerAliveCountMax={alive_count}",
            "-o", f"StrictHostKeyChecking={host_key_checking}", "-o", f"UserKnownHostsFile={known_hosts}", *extra]
    if port:
        argv += ["-p", str(port)]
    if user:
        argv += ["-l", user]
    if key_file:
        argv += ["-i", os.path.expanduser(key_file), "-o", "IdentitiesOnly=yes"]
    if proxy_command:
        argv += ["-o", f"ProxyCommand={proxy_command}"]
    return argv


def __getattr__(name: str) -> Any:
    """The paramiko target moved to helpers/paramiko_ssh.py; old imports from here still work (lazily)."""
    if name in ("SSHTransport", "endpoint_from_ssh_config"):
        from helpers import paramiko_ssh

        return getattr(paramiko_ssh, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
