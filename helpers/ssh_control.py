"""The OpenSSH target's local side: the private control-socket directory, the master probe, and the
small file helpers (known_hosts created 0600, the pins digest) helpers/openssh.py uses."""

from __future__ import annotations

import _socket  # the C module: socket.py would import its enums (a read-only command's start)
import os
import stat
import struct

from helpers.errors import ExitCode, WorkflowError
from helpers.prelaunch import sha256

MUX_MSG_HELLO = 0x00000001  # OpenSSH PROTOCOL.mux: each side of a control connection first sends a hello
MUX_C_TERMINATE, MUX_S_OK = 0x10000005, 0x80000001  # "ssh -O exit", without starting an ssh
MUX_VERSION = 4
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
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
    except TimeoutError:  # socket.timeout
        return None
    except OSError:
        return False
    finally:
        probe.close()


def _read_packet(sock: _socket.socket) -> bytes:
    """One mux message: a uint32 length, then that many bytes."""
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise OSError("control socket closed")
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    return exactly(length)


def terminate_master(path: str, wait: float = HELLO_WAIT_SECS) -> bool:
    """Ask the master on ``path`` to exit (what ``ssh -O exit`` sends), in-process: True when it agreed."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(wait)
    try:
        sock.connect(path)
        sock.sendall(struct.pack(">III", 8, MUX_MSG_HELLO, MUX_VERSION))
        hello = _read_packet(sock)
        if struct.unpack(">I", hello[:4])[0] != MUX_MSG_HELLO:
            return False
        sock.sendall(struct.pack(">III", 8, MUX_C_TERMINATE, 1))
        try:
            reply = _read_packet(sock)
        except TimeoutError:
            return False
        except OSError:
            return True  # many versions exit at once, closing the socket without a reply
        return struct.unpack(">I", reply[:4])[0] == MUX_S_OK
    except (OSError, struct.error):
        return False
    finally:
        sock.close()


def close_own_master(path: str, exit_argv: list[str]) -> None:
    """A command's own master (CONNECTION_PERSIST_SECS=0) at its exit: asked to exit (``exit_argv``, ssh -O
    exit, if it does not agree in-process), its socket and side files removed."""
    if not terminate_master(path):
        import subprocess

        subprocess.run(exit_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=15, check=False)
    for leftover in (path, path + ".lock", path + ".pins"):
        try:
            os.unlink(leftover)
        except OSError:
            pass


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
            return sha256(handle.read()).hexdigest()
    except OSError:
        return ""


def _is_encrypted(key: str) -> bool:
    import subprocess

    try:
        probe = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", key], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode != 0 and "passphrase" in probe.stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
