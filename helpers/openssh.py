"""The pod over OpenSSH's own client, one shared connection across invocations (ControlMaster).

The first command starts a master (``ssh -M -N -f``, ControlPersist=CONNECTION_PERSIST_SECS)
on a control socket in a private directory (``$XDG_RUNTIME_DIR`` or /tmp, ``workflow-ssh-<uid>``,
mode 0700, named by a hash of the target and every option that matters); every later command,
rsync included, rides it (``ssh -S socket``: no TCP connect, no key exchange, no login).
Host keys are pinned exactly as on the paramiko path: accept-new into OPS_KNOWN_HOSTS, then a
changed key is refused (exit 3). Never a hang: ConnectTimeout, ServerAlive keepalives, and a
master that does not answer its socket within a short bound is set aside and replaced; a stale
socket (dead master) is replaced the same way, without the user seeing an error.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import stat
import struct
import subprocess
from collections.abc import Sequence

from helpers.errors import ExitCode, WorkflowError
from helpers.transport import CommandResult, ConnectionLost, Sink, Transport, _pump, remote_command_string, ssh_argv

MUX_MSG_HELLO = 0x00000001  # OpenSSH PROTOCOL.mux: each side of a control connection first sends a hello
MAX_DIR_LENGTH = 60  # sun_path holds 107 bytes: dir + "/cm-<24 hex>" + ssh's ".<16 random>" while binding
HELLO_WAIT_SECS = 2.0  # a live master answers its socket at once; one that does not is replaced


def control_dir() -> str:
    """The private directory holding the control sockets (created 0700; must be ours)."""
    base = os.environ.get("WORKFLOW_SSH_CONTROL_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"workflow-ssh-{os.getuid()}")
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise WorkflowError(f"cannot create the SSH control directory {base}: {exc.strerror}", ExitCode.USAGE) from None
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise WorkflowError(f"{base} (SSH control sockets) is not a directory of yours; remove it or set "
                            "WORKFLOW_SSH_CONTROL_DIR", ExitCode.USAGE)
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(base, 0o700)
    if len(base) > MAX_DIR_LENGTH:
        raise WorkflowError(f"the SSH control directory {base} is too long for a Unix socket path (at most "
                            f"{MAX_DIR_LENGTH} characters); set WORKFLOW_SSH_CONTROL_DIR to a shorter one",
                            ExitCode.USAGE)
    return base


def master_answers(path: str, wait: float = HELLO_WAIT_SECS) -> bool | None:
    """True: a master listens and says hello; False: no socket or a stale one; None: it does not answer."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(wait)
    try:
        probe.connect(path)
        head = b""
        while len(head) < 8:
            chunk = probe.recv(8 - len(head))
            if not chunk:
                return False
            head += chunk
        return struct.unpack(">II", head)[1] == MUX_MSG_HELLO
    except socket.timeout:
        return None
    except OSError:
        return False
    finally:
        probe.close()


class OpenSSHTransport(Transport):
    kind = "ssh"

    def __init__(self, destination: str, *, port: int | None, user: str | None, key_file: str | None,
                 known_hosts: str, ssh_config: str | None, connect_timeout: int, keepalive: int,
                 persist_secs: int, proxy_command: str | None = None, label: str = "") -> None:
        self.destination = destination
        self.port, self.user, self.key_file = port, user, key_file
        self.known_hosts, self.ssh_config, self.proxy_command = known_hosts, ssh_config, proxy_command
        self.connect_timeout, self.keepalive, self.persist_secs = connect_timeout, keepalive, persist_secs
        self._label = label
        self._description = ""
        self.connections = 0  # TCP connections (masters) this invocation opened
        self._ready = False
        # a master serves exactly these options, and this ssh_config content (an edit means a new connection)
        identity = "\0".join(str(part) for part in (destination, port, user, key_file, known_hosts, ssh_config,
                                                     proxy_command, _file_digest(ssh_config)))
        self._name = "cm-" + hashlib.sha256(identity.encode()).hexdigest()[:24]
        self._socket: str | None = None

    @property
    def description(self) -> str:  # type: ignore[override]
        """user@host:port as ssh resolves it (an ssh_config alias is looked up with `ssh -G`, on demand)."""
        if not self._description:
            if self._label:
                self._description = self._label
            else:
                self._description = self._cached_description()
        return self._description

    def _cached_description(self) -> str:
        """``ssh -G`` once per master name (the name hashes the ssh_config's content): kept beside its socket."""
        keep = self.control_path + ".desc" if self.ssh_config and self.persist_secs > 0 else None
        known = _read_text(keep) if keep else None
        if known:
            return known
        user, host, port = self._resolved()
        shown = f"[{host}]" if ":" in host else host
        text = f"{user + '@' if user else ''}{shown}:{port}"
        if keep:
            try:
                with open(keep + f".{os.getpid()}", "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.replace(keep + f".{os.getpid()}", keep)
            except OSError:
                pass
        return text

    def _resolved(self) -> tuple[str | None, str, str]:
        user, host, port = self.user, self.destination, str(self.port or 22)
        if self.ssh_config and os.path.isfile(self.ssh_config):
            try:
                shown = subprocess.run([*self._options(), "-G", "--", self.destination], capture_output=True,
                                       text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                shown = ""
            for line in shown.splitlines():
                word, _, value = line.partition(" ")
                if word == "hostname":
                    host = value
                elif word == "port":
                    port = value
                elif word == "user" and self.user is None:
                    user = value
        return user, host, port

    @property
    def agent_python(self) -> str:
        return "python3"

    @property
    def reached(self) -> bool:
        return self._ready

    @property
    def control_path(self) -> str:
        if self._socket is None:
            self._socket = os.path.join(control_dir(), self._name)
        return self._socket

    def _options(self) -> list[str]:
        control = f"ControlPath={self.control_path}" if self.persist_secs > 0 else "ControlPath=none"
        return ssh_argv(self.ssh_config, connect_timeout=self.connect_timeout, keepalive=self.keepalive,
                        alive_count=3, known_hosts=self.known_hosts, host_key_checking="accept-new",
                        port=self.port, user=self.user, key_file=self.key_file, proxy_command=self.proxy_command,
                        extra=("-o", "GlobalKnownHostsFile=/dev/null", "-o", "HashKnownHosts=no",
                               "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no", "-o", "LogLevel=ERROR",
                               "-o", control))

    # -- the master
    def _ensure_master(self) -> None:
        if self._ready:
            return
        if self.key_file and not os.path.isfile(os.path.expanduser(self.key_file)):
            raise WorkflowError(f"private key {self.key_file} for {self.description} does not exist; fix OPS_SSH_KEY "
                                "(or the IdentityFile in your ssh config)", ExitCode.TRANSPORT)
        created = not os.path.exists(self.known_hosts)
        _touch_private(self.known_hosts)
        try:
            self._ensure_connected()
        except BaseException:
            if created and os.path.exists(self.known_hosts) and os.path.getsize(self.known_hosts) == 0:
                os.unlink(self.known_hosts)  # a failed first contact leaves no empty known_hosts behind
            raise
        self._ready = True

    def _ensure_connected(self) -> None:
        if self.persist_secs <= 0:  # no sharing: every command connects on its own
            self._check_login()
            return
        path = self.control_path
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one master per socket, even with commands started at once
            answer = master_answers(path)
            pins = _file_digest(self.known_hosts)
            if answer is True and _read_text(path + ".pins") != pins:
                # the pinned keys changed since this master logged in: it is never reused, a new login checks them
                subprocess.run([*self._options(), "-O", "exit", "--", self.destination], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15, check=False)
                answer = False
            if answer is not True:
                if os.path.exists(path):
                    os.unlink(path)  # stale (dead master) or not answering: set it aside, start afresh
                self._start_master()
                with open(path + ".pins", "w", encoding="utf-8") as handle:
                    handle.write(_file_digest(self.known_hosts))  # as they stand after this login (accept-new)
        finally:
            os.close(lock)

    def _start_master(self) -> None:
        argv = [*self._options(), "-o", "ControlMaster=yes", "-o", f"ControlPersist={self.persist_secs}s",
                "-N", "-f", "--", self.destination]
        self._connect(argv)

    def _check_login(self) -> None:
        self._connect([*self._options(), "-T", "--", self.destination, "true"])

    def _connect(self, argv: list[str]) -> None:
        import tempfile

        with tempfile.TemporaryFile() as errors:
            # the master lives on in the background: it must hold none of our pipes
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
            try:  # ConnectTimeout bounds the TCP connect and the banner; this bounds the login after it
                code = proc.wait(timeout=self.connect_timeout + 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise ConnectionLost(f"cannot reach {self.description}: no SSH login (waited at most "
                                     f"{self.connect_timeout}s); check that the pod is up and OPS_DEFAULT_HOST / "
                                     "LIUM_TARGET") from None
            errors.seek(0)
            text = errors.read().decode(errors="replace")
        self.connections += 1
        if code != 0:
            raise self._login_error(text)

    def _login_error(self, text: str) -> WorkflowError:
        where = self.description
        if "IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
            host = self._resolved_host()
            return WorkflowError(
                f"host key of {where} does not match the one pinned in {self.known_hosts} (a different machine "
                f"answers, or the pod was re-created); if you trust it, remove the old key: ssh-keygen -R "
                f"'{host}' -f {self.known_hosts}", ExitCode.TRANSPORT)
        if "Permission denied" in text:
            why = _last_line(text)
            if self.key_file and _is_encrypted(os.path.expanduser(self.key_file)):
                why = f"private key file {self.key_file} is encrypted (a passphrase; nothing may prompt here)"
            return WorkflowError(f"cannot log in to {where}: {why}; check OPS_SSH_KEY / IdentityFile "
                                 "and the pod's authorized_keys", ExitCode.TRANSPORT)
        return ConnectionLost(f"cannot reach {where}: {_last_line(text) or 'ssh failed'} (waited at most "
                              f"{self.connect_timeout}s); check that the pod is up and OPS_DEFAULT_HOST / LIUM_TARGET")

    def _resolved_host(self) -> str:
        """host[:port] as known_hosts names it."""
        _, host, port = self._resolved()
        return host if port == "22" else f"[{host}]:{port}"

    # -- commands
    def run(self, argv: Sequence[str], stdin: bytes = b"", timeout: float | None = None,
            on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> CommandResult:
        self._ensure_master()
        self.commands_run += 1
        command = [*self._options(), "-o", "ControlMaster=no", "-T", "--", self.destination,
                   remote_command_string(argv)]
        tail, collected = bytearray(), bytearray()

        def keep_tail(chunk: bytes) -> None:
            tail.extend(chunk)
            del tail[:-4096]
            if on_stderr is not None:
                on_stderr(chunk)
            else:
                collected.extend(chunk)

        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin and proc.stdout and proc.stderr
        if stdin:
            try:
                proc.stdin.write(stdin)
            except BrokenPipeError:
                pass
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            out, _ = _pump([(proc.stdout, on_stdout), (proc.stderr, keep_tail)], timeout, proc.kill)
        except WorkflowError:
            proc.wait()
            raise WorkflowError(f"command on {self.description} did not finish within {timeout:.0f}s",
                                ExitCode.FAILED) from None
        code = proc.wait()
        if code == 255 and self._connection_failed(bytes(tail)):
            self._ready = False
            raise ConnectionLost(f"lost the connection to {self.description}"
                                 f"{': ' + _last_line(tail.decode(errors='replace')) if tail.strip() else ''}")
        return CommandResult(code, out, bytes(collected))

    def _connection_failed(self, stderr_tail: bytes) -> bool:
        """ssh exits 255 for its own failures (and when the remote command does): tell them apart."""
        text = stderr_tail.decode(errors="replace")
        markers = ("Connection", "connection", "closed", "Broken pipe", "mux_client", "Control socket",
                   "ssh:", "timed out", "Timeout")
        if any(marker in text for marker in markers):
            return True
        return self.persist_secs > 0 and master_answers(self.control_path) is not True

    def rsync_shell(self) -> list[str]:
        self._ensure_master()
        return [*self._options(), "-o", "ControlMaster=no", "--"]  # rsync appends the host: never an option

    def rsync_host(self) -> str:
        return f"[{self.destination}]" if ":" in self.destination else self.destination

    def disconnect(self) -> bool:
        """Close the shared connection, if one is open; True when there was one."""
        if self.persist_secs <= 0 or master_answers(self.control_path) is not True:
            return False
        try:
            subprocess.run([*self._options(), "-O", "exit", "--", self.destination], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15)
        except subprocess.TimeoutExpired:  # it stopped answering: set its socket aside (it dies on its keepalives)
            os.unlink(self.control_path)
        return True


def _touch_private(path: str) -> None:
    """known_hosts is created 0600 (ssh itself would make it world-readable)."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _file_digest(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return ""


def _is_encrypted(key: str) -> bool:
    try:
        probe = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", key], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode != 0 and "passphrase" in probe.stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
