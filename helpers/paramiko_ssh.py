"""The pod over paramiko: one SSH connection per invocation (SSH_CLIENT=paramiko, or no OpenSSH client).

ssh_config is read with paramiko's parser (ProxyCommand supported, ProxyJump refused with a
hint); TCP_NODELAY is set on our own socket before the handshake; host keys are accepted on
first use (appended to the known_hosts file under a lock) and pinned after that (a changed key
is refused, exit 3). rsync runs OpenSSH's client with the same pins (transport.ssh_argv).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.endpoint import SSHEndpoint
from helpers.errors import ExitCode, WorkflowError
from helpers.transport import (
    CommandResult,
    ConnectionLost,
    Sink,
    Transport,
    parse_host,
    remote_command_string,
    ssh_argv,
)

if TYPE_CHECKING:
    import paramiko


def endpoint_from_ssh_config(spec: str, ssh_config: Path | None, known_hosts: Path,
                             key_file: Path | None) -> SSHEndpoint:
    """Resolve OPS_DEFAULT_HOST through ssh_config like `ssh` would (explicit parts win)."""
    user, alias, port = parse_host(spec)
    options: dict[str, Any] = {}
    if ssh_config is not None and ssh_config.is_file():
        _import_paramiko()
        import paramiko

        try:
            options = paramiko.SSHConfig.from_path(str(ssh_config)).lookup(alias)
        except Exception as exc:  # paramiko raises several types for bad configs
            raise WorkflowError(f"cannot read ssh config {ssh_config}: {exc}", ExitCode.USAGE) from None
    if options.get("proxyjump"):
        raise WorkflowError(f"{ssh_config}: ProxyJump for {alias} is not supported; use "
                            "ProxyCommand ssh -W %h:%p <jumphost> instead", ExitCode.USAGE)
    identity = str(key_file) if key_file else None
    if identity is None and options.get("identityfile"):
        identity = os.path.expanduser(options["identityfile"][0])
    return SSHEndpoint(
        host=options.get("hostname", alias),
        port=port or int(options.get("port", 22)),
        user=user or options.get("user"),
        key_filename=identity,
        known_hosts=str(known_hosts),
        ssh_alias=alias,
        proxy_command=options.get("proxycommand"),
    )


_paramiko_imported = False


def _import_paramiko() -> None:
    """Import paramiko without its two slow side trips (~150 ms of a ~600 ms command):
    `invoke` (only for ssh_config `Match exec`) and `importlib.metadata`, which paramiko/__init__
    uses just to read its own version; that version is taken from its dist-info directory name."""
    global _paramiko_imported
    if _paramiko_imported:
        return
    sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
    import logging

    quiet = logging.getLogger("paramiko")  # its transport thread would print tracebacks; we report one line
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    if "importlib.metadata" in sys.modules:
        import paramiko  # noqa: F401
    else:
        import importlib
        import types

        stub = types.ModuleType("importlib.metadata")
        stub.version = _paramiko_version  # type: ignore[attr-defined]
        sys.modules["importlib.metadata"] = stub
        try:
            import paramiko  # noqa: F401
        finally:
            del sys.modules["importlib.metadata"]
            if getattr(importlib, "metadata", None) is stub:
                delattr(importlib, "metadata")
    _paramiko_imported = True


def _paramiko_version(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec and spec.origin:
        site = Path(spec.origin).parent.parent
        for entry in site.glob(f"{name}-*.dist-info"):
            return entry.name[len(name) + 1:-len(".dist-info")]
    return "0"


def _append_known_host(path: str, hostname: str, key_type: str, key_b64: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{hostname} {key_type} {key_b64}\n".encode())
    finally:
        os.close(fd)


class SSHTransport(Transport):
    kind = "ssh"

    def __init__(self, endpoint: SSHEndpoint, connect_timeout: int, keepalive: int,
                 ssh_config: Path | None = None) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.ssh_config = ssh_config
        self.description = endpoint.display()
        self._client: paramiko.SSHClient | None = None
        self.connections = 0

    @property
    def agent_python(self) -> str:
        return "python3"

    def _connect(self) -> paramiko.SSHClient:
        if self._client is not None:
            return self._client
        _import_paramiko()
        import paramiko

        ep = self.endpoint
        known_hosts = ep.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        client = paramiko.SSHClient()
        if os.path.exists(known_hosts):
            try:
                client.load_host_keys(known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise WorkflowError(f"cannot read known_hosts {known_hosts}: {exc}", ExitCode.USAGE) from None

        class AcceptNew(paramiko.MissingHostKeyPolicy):
            def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
                _append_known_host(known_hosts, hostname, key.get_name(), key.get_base64())
                client.get_host_keys().add(hostname, key.get_name(), key)

        client.set_missing_host_key_policy(AcceptNew())
        sock: Any = paramiko.ProxyCommand(ep.proxy_command) if ep.proxy_command else None
        kwargs: dict[str, Any] = dict(
            hostname=ep.host, port=ep.port, username=ep.user or _local_user(), timeout=self.connect_timeout,
            banner_timeout=self.connect_timeout, auth_timeout=self.connect_timeout, sock=sock,
        )
        if ep.key_filename:
            if not os.path.isfile(os.path.expanduser(ep.key_filename)):
                raise WorkflowError(f"private key {ep.key_filename} for {ep.display()} does not exist; fix OPS_SSH_KEY "
                                    "(or the IdentityFile in your ssh config)", ExitCode.TRANSPORT)
            kwargs.update(key_filename=os.path.expanduser(ep.key_filename), look_for_keys=False,
                          allow_agent=False)
        where = ep.display()
        try:
            if sock is None:  # our own socket, so TCP_NODELAY is set before the handshake (~40 ms less)
                sock = socket.create_connection((ep.host, ep.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                kwargs["sock"] = sock
            client.connect(**kwargs)
        except paramiko.BadHostKeyException:
            host = ep.host if ep.port == 22 else f"[{ep.host}]:{ep.port}"
            raise WorkflowError(
                f"host key of {where} does not match the one pinned in {known_hosts} (a different machine "
                f"answers, or the pod was re-created); if you trust it, remove the old key: ssh-keygen -R "
                f"'{host}' -f {known_hosts}", ExitCode.TRANSPORT) from None
        except paramiko.AuthenticationException as exc:
            raise WorkflowError(f"cannot log in to {where}: {exc}; check OPS_SSH_KEY / IdentityFile and the "
                                "pod's authorized_keys", ExitCode.TRANSPORT) from None
        except (OSError, socket.timeout, paramiko.SSHException, EOFError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise ConnectionLost(f"cannot reach {where}: {reason} (waited at most {self.connect_timeout}s); "
                                 "check that the pod is up and OPS_DEFAULT_HOST / LIUM_TARGET") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(self.keepalive)
        self.connections += 1
        self._client = client
        return client

    def run(self, argv: Sequence[str], stdin: bytes = b"", timeout: float | None = None,
            on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> CommandResult:
        client = self._connect()
        transport = client.get_transport()
        assert transport is not None
        import paramiko

        self.commands_run += 1
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
            channel.exec_command(remote_command_string(argv))
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop()
            raise ConnectionLost(f"lost the connection to {self.description}: {exc or type(exc).__name__}") from None
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                got = False
                while channel.recv_ready():
                    chunk = channel.recv(65536)
                    got = True
                    on_stdout(chunk) if on_stdout else out.extend(chunk)
                while channel.recv_stderr_ready():
                    chunk = channel.recv_stderr(65536)
                    got = True
                    on_stderr(chunk) if on_stderr else err.extend(chunk)
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if not transport.is_active():
                    self._drop()
                    raise ConnectionLost(f"lost the connection to {self.description}")
                if deadline is not None and time.monotonic() > deadline:
                    channel.close()
                    raise WorkflowError(f"command on {self.description} did not finish within {timeout:.0f}s",
                                        ExitCode.FAILED)
                if not got:
                    channel.status_event.wait(0.01)
            code = channel.recv_exit_status()
        finally:
            channel.close()
        if code < 0:  # the channel closed without an exit status: the connection went away
            self._drop()
            raise ConnectionLost(f"lost the connection to {self.description} (the command's end was not seen)")
        return CommandResult(code, bytes(out), bytes(err))

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def rsync_shell(self) -> list[str]:
        ep = self.endpoint
        argv = ssh_argv(str(self.ssh_config) if self.ssh_config else None, connect_timeout=self.connect_timeout,
                        keepalive=self.keepalive, alive_count=4, known_hosts=str(ep.known_hosts),
                        host_key_checking="yes", port=ep.port, user=ep.user, key_file=ep.key_filename,
                        proxy_command=ep.proxy_command)
        return [*argv, "--"]  # rsync appends the host: after "--" it is never read as an ssh option

    def rsync_host(self) -> str:
        host = self.endpoint.ssh_alias or self.endpoint.host
        return f"[{host}]" if ":" in host else host

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _local_user() -> str:
    import getpass

    return getpass.getuser()
