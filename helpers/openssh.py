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
import os
import time
from collections.abc import Sequence
from typing import Any

from helpers.errors import ExitCode, WorkflowError
from helpers.prelaunch import Spawned, sha256
from helpers.ssh_control import (
    _file_digest,
    _is_encrypted,
    _last_line,
    _read_text,
    _touch_private,
    close_own_master,
    control_dir,
    master_answers,
)
from helpers.transport import CommandResult, ConnectionLost, Sink, Transport, _pump, remote_command_string, ssh_argv

OWN_MASTER_GUARD_SECS = 30  # CONNECTION_PERSIST_SECS=0: the command's master, should the command die unclosed


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
        self.prelaunched = False  # the first call's ssh was started by helpers/prelaunch.py
        self._first_call: list[str] | None = None  # its argv: what helpers/prelaunch.py may start next time
        self.open_with_first_call = False  # set for short calls (session.SHORT_CALLS): see _run_opening
        # a master serves exactly these options, and this ssh_config content (an edit means a new connection)
        identity = "\0".join(str(part) for part in (destination, port, user, key_file, known_hosts, ssh_config,
                                                     proxy_command, _file_digest(ssh_config)))
        self._name = "cm-" + sha256(identity.encode()).hexdigest()[:24]
        if persist_secs <= 0:  # no sharing across invocations: a master of this command's own, closed at exit
            self._name = "pc-" + sha256(f"{identity}\0{os.getpid()}".encode()).hexdigest()[:20]
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
            import subprocess

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
        control = f"ControlPath={self.control_path}"
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
        self._check_key()
        created = not os.path.exists(self.known_hosts)
        _touch_private(self.known_hosts)
        try:
            self._ensure_connected()
        except BaseException:
            if created and os.path.exists(self.known_hosts) and os.path.getsize(self.known_hosts) == 0:
                os.unlink(self.known_hosts)  # a failed first contact leaves no empty known_hosts behind
            raise
        self._ready = True

    def _check_key(self) -> None:
        if self.key_file and not os.path.isfile(os.path.expanduser(self.key_file)):
            raise WorkflowError(f"private key {self.key_file} for {self.description} does not exist; fix OPS_SSH_KEY "
                                "(or the IdentityFile in your ssh config)", ExitCode.TRANSPORT)

    @property
    def _persist(self) -> str:
        """ControlPersist: the shared master's idle time, or for a command's own master a bound on how
        long it could outlive a command killed before it closed it."""
        return f"{self.persist_secs}s" if self.persist_secs > 0 else f"{OWN_MASTER_GUARD_SECS}s"

    def _ensure_connected(self) -> None:
        path = self.control_path
        lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one master per socket, even with commands started at once
            if not self._master_usable(path):
                self._start_master()
                self._write_pins(path)
        finally:
            os.close(lock)

    def _master_usable(self, path: str) -> bool:
        """A live master whose login saw today's pins; anything else is set aside (the caller starts afresh)."""
        answer = master_answers(path)
        if answer is True and _read_text(path + ".pins") != _file_digest(self.known_hosts):
            # the pinned keys changed since this master logged in: it is never reused, a new login checks them
            import subprocess

            subprocess.run([*self._options(), "-O", "exit", "--", self.destination], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15, check=False)
            answer = False
        if answer is not True and os.path.exists(path):
            os.unlink(path)  # stale (dead master) or not answering: set it aside, start afresh
        return answer is True

    def _write_pins(self, path: str) -> None:
        with open(path + ".pins", "w", encoding="utf-8") as handle:
            handle.write(_file_digest(self.known_hosts))  # as they stand after this login (accept-new)

    def master_argv(self) -> list[str]:
        return [*self._options(), "-o", "ControlMaster=yes", "-o", f"ControlPersist={self._persist}",
                "-N", "-f", "--", self.destination]

    def _start_master(self) -> None:
        self._connect(self.master_argv())

    def prelaunch_record(self) -> dict[str, Any] | None:
        """What helpers/prelaunch.py needs to start this master the next time (a shared one only)."""
        if self.persist_secs <= 0 or not self._ready or self._first_call is None:
            return None
        return {"socket": self.control_path, "argv": self._opening_argv(self._first_call),
                "known_hosts": self.known_hosts, "ssh_config": self.ssh_config}

    def _opening_argv(self, argv: Sequence[str]) -> list[str]:
        return [*self._options(), "-o", "ControlMaster=yes", "-o", f"ControlPersist={self._persist}",
                "-T", "--", self.destination, remote_command_string(argv)]

    def _connect(self, argv: list[str]) -> None:
        import subprocess
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
        if self._first_call is None:
            self._first_call = list(argv)
        if self.open_with_first_call and not self._ready:
            opened = self._run_opening(argv, stdin, timeout, on_stdout, on_stderr)
            if opened is not None:
                return opened
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

        proc = Spawned(command)  # a subprocess.Popen with three pipes, without importing subprocess
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

    def _run_opening(self, argv: Sequence[str], stdin: bytes, timeout: float | None, on_stdout: Sink | None,
                     on_stderr: Sink | None) -> CommandResult | None:
        """A short call with no master yet: the command's own ssh becomes the shared master (ControlMaster=yes,
        ControlPersist), so a cold command costs one login, not a master's login and then the command.
        That ssh may already be running: helpers/prelaunch.py starts it while Python imports (the login
        overlaps them) when an earlier cold start recorded exactly this argv. Its stderr goes to a file:
        the master, backgrounded, keeps the stderr it started with. None: a master was there after all
        (the caller rides it)."""
        from helpers import prelaunch

        self._check_key()
        created = not os.path.exists(self.known_hosts)
        _touch_private(self.known_hosts)
        path = self.control_path
        command = self._opening_argv(argv)
        adopted = prelaunch.adopt(path, command)
        lock = adopted[1] if adopted else os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        proc: Any
        try:
            if adopted:
                proc, _, errors = adopted
                self.prelaunched = True
            else:
                fcntl.flock(lock, fcntl.LOCK_EX)  # commands started at once wait for this one's master
                if self._master_usable(path):
                    self._ready = True
                    return None
                import subprocess
                import tempfile

                errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the with below
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
            self.commands_run += 1
            with errors:
                assert proc.stdin and proc.stdout
                try:
                    proc.stdin.write(stdin)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                self._await_login(proc, path, created)
                try:
                    out, _ = _pump([(proc.stdout, on_stdout)], timeout, proc.kill)
                except WorkflowError:
                    proc.wait()
                    raise WorkflowError(f"command on {self.description} did not finish within {timeout:.0f}s",
                                        ExitCode.FAILED) from None
                code = proc.wait()
                errors.seek(0)
                err = errors.read()
            if code == 255 and master_answers(path) is not True:  # ssh's own failure: no login, no master
                if created and os.path.exists(self.known_hosts) and os.path.getsize(self.known_hosts) == 0:
                    os.unlink(self.known_hosts)
                raise self._login_error(err.decode(errors="replace"))
            self.connections += 1
            self._write_pins(path)
            self._ready = True
        finally:
            os.close(lock)
        if on_stderr is not None and err:
            on_stderr(err)
        return CommandResult(code, out, b"" if on_stderr is not None else err)

    def _await_login(self, proc: Any, path: str, created: bool) -> None:
        """The login is bounded as a master's is: its socket appears once it is in (then the call's own
        timeout runs), or ssh exits; neither within the connect timeout: give up, exit 3."""
        deadline = time.monotonic() + self.connect_timeout + 2
        while proc.poll() is None and not os.path.exists(path):
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                if created and os.path.exists(self.known_hosts) and os.path.getsize(self.known_hosts) == 0:
                    os.unlink(self.known_hosts)
                raise ConnectionLost(f"cannot reach {self.description}: no SSH login (waited at most "
                                     f"{self.connect_timeout}s); check that the pod is up and OPS_DEFAULT_HOST / "
                                     "LIUM_TARGET")
            time.sleep(0.005)

    def _connection_failed(self, stderr_tail: bytes) -> bool:
        """ssh exits 255 for its own failures (and when the remote command does): tell them apart."""
        text = stderr_tail.decode(errors="replace")
        markers = ("Connection", "connection", "closed", "Broken pipe", "mux_client", "Control socket",
                   "ssh:", "timed out", "Timeout")
        if any(marker in text for marker in markers):
            return True
        return master_answers(self.control_path) is not True

    def rsync_shell(self) -> list[str]:
        self._ensure_master()
        return [*self._options(), "-o", "ControlMaster=no", "--"]  # rsync appends the host: never an option

    def rsync_host(self) -> str:
        return f"[{self.destination}]" if ":" in self.destination else self.destination

    def disconnect(self) -> bool:
        """Close the shared connection, if one is open; True when there was one."""
        if self.persist_secs <= 0 or master_answers(self.control_path) is not True:
            return False
        import subprocess

        try:
            subprocess.run([*self._options(), "-O", "exit", "--", self.destination], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=15)
        except subprocess.TimeoutExpired:  # it stopped answering: set its socket aside (it dies on its keepalives)
            os.unlink(self.control_path)
        return True

    def close(self) -> None:
        """CONNECTION_PERSIST_SECS=0: the command's own master goes with it (a shared one stays)."""
        if self.persist_secs <= 0 and self._socket is not None and os.path.exists(self._socket):
            self._ready = False
            close_own_master(self._socket, [*self._options(), "-O", "exit", "--", self.destination])
