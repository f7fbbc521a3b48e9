"""The cold start of a short read-only command over OpenSSH: its login overlaps Python's imports.

helpers/launch.py calls ``start`` before it imports helpers.cli. A short call (fsm-status,
task-status, task-list, pod-status, sweep-status, sweep-list) that finds no shared master opens
it with its own first call (helpers/openssh.py ``_run_opening``); that ssh's argv (options, host
keys pinned as ever, the agent's path and op) is recorded after the command in
``.workflow/cache/prelaunch-<hash>.marshal``, keyed by the command and everything before it on the
command line (project, --env, --profile, --set, the python, the current directory). The next cold
start of that command, when everything the record was made from is unchanged (the same file and
environment marks the config cache checks, the ssh_config, the transport code) and the control
socket is not there, starts that very ssh at once, holding the socket's lock, with its stdin
open: login, the pod's session and the agent's start run while the client imports and loads its
config; the transport then ``adopt``s it (only if its own first call has exactly that argv),
writes the request to its stdin and reads the reply. One that differs is killed before it reads
a request. Anything unusual (no record, a stale one, an option after the command, --dry-run,
another command opening the master) starts nothing: the command connects as it always did.
WORKFLOW_PRELAUNCH=0 turns it off. Stdlib only; a warm command pays a small file read and a few stats.
"""

from __future__ import annotations

import io
import marshal
import os
import sys

try:  # the builtin sha256: hashlib would load OpenSSL first (~6 ms a command); the same digests
    from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Python 3.12+: _sha2; else hashlib
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]

SCHEMA_VERSION = 1
MAX_RECORDS = 32
# the short read-only calls (helpers/session.py SHORT_CALLS): their first call opens the connection
COMMANDS = frozenset({"fsm-status", "task-status", "task-list", "pod-status", "sweep-status", "sweep-list"})
VALUE_FLAGS = ("--env", "--profile", "--set")  # the global flags (helpers/cli.py), here so both scan them alike
PLAIN_FLAGS = ("--dry-run", "--json", "--debug")
_CODE = ("openssh.py", "ssh_control.py", "transport.py", "session.py", "prelaunch.py")
_HELPERS = os.path.dirname(os.path.abspath(__file__))

# no typing import here (it costs more than the rest of this module): builtin types only
_pending: dict[str, tuple[list[str], Spawned, int, io.BufferedRandom]] = {}  # socket -> the call started for it
found_record = False  # a current record was found (nothing to write after the command)


def file_mark(path: str, content: bool = False) -> list[int | str] | None:
    """What a file looks like now: mtime (ns), size, inode, and (``content``) a hash of its bytes, so an
    edit within the filesystem's timestamp granularity is seen too."""
    try:
        info = os.stat(path)
        mark: list[int | str] = [info.st_mtime_ns, info.st_size, info.st_ino]
        if content:
            with open(path, "rb") as handle:
                mark.append(sha256(handle.read()).hexdigest()[:24])
    except OSError:
        return None
    return mark


def env_mark(name: str, secret: bool) -> str:
    value = os.environ.get(name)
    if value is None:
        return "-"
    if secret:  # a secret's value is never written, not even hashed: only that it is set
        return "set"
    return "h:" + sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def command_index(argv: list[str]) -> int:
    """Where the command word is: after only the exact global flags (len(argv) when there is none)."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in VALUE_FLAGS:
            index += 2
        elif word in PLAIN_FLAGS or word.partition("=")[0] in VALUE_FLAGS:
            index += 1
        else:
            return index
    return len(argv)


def command_prefix(argv: list[str]) -> tuple[str, list[str]] | None:
    """(the command, the global words before it) of a plain read-only command line, else None."""
    index = command_index(argv)
    if index >= len(argv) or argv[index] not in COMMANDS:
        return None
    rest = argv[index + 1:]
    if any(w.partition("=")[0] in (*VALUE_FLAGS, "--dry-run", "--help", "-h") for w in rest) or "--dry-run" in argv:
        return None  # the config or the mode could differ from what the record was made for
    return argv[index], argv[:index]


def record_path(root: str, prefix: list[str], command: str) -> tuple[str, list[str]]:
    """(the record's file, the identity it must hold)."""
    identity = [root, *prefix, "\0", command, sys.executable, os.getcwd(), os.environ.get("WORKFLOW_ENV", ""),
                os.environ.get("WORKFLOW_PROFILE", "")]
    digest = sha256("\0".join(identity).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return os.path.join(root, ".workflow", "cache", f"prelaunch-{digest}.marshal"), identity


def _current(record: dict[str, object], identity: list[str]) -> bool:
    files, env = record.get("files"), record.get("env")
    if record.get("schema_version") != SCHEMA_VERSION or record.get("identity") != identity or not isinstance(
            files, dict) or not isinstance(env, dict):
        return False
    for name, mark in files.items():
        if file_mark(name, content=mark is not None and len(mark) > 3) != mark:
            return False
    return all(env_mark(name, mark == "set") == mark for name, mark in env.items())


def start(argv: list[str]) -> None:
    """Start the command's first call in the background when a current record says how (never raises)."""
    global found_record
    if os.environ.get("WORKFLOW_PRELAUNCH", "1") == "0":
        return
    try:
        parsed = command_prefix(argv)
        root = os.environ.get("WORKFLOW_ROOT")
        if parsed is None or not root:
            return
        path, identity = record_path(root, parsed[1], parsed[0])
        with open(path, "rb") as handle:  # marshal: built in, nothing to import before the login can begin
            record = marshal.loads(handle.read())
        if not isinstance(record, dict) or not _current(record, identity):
            return
        found_record = True
        socket_path = record["socket"]
        if os.path.exists(socket_path) or not os.path.exists(record["known_hosts"]):
            return  # a master is there (the transport checks it), or first contact: the usual path
        _launch(socket_path, [str(word) for word in record["argv"]])
    except Exception:  # noqa: BLE001 - an optimisation only: the command connects as ever
        return


class Spawned:
    """An ssh with piped stdin/stdout: what helpers/openssh.py uses of a subprocess.Popen (posix_spawn, so
    that no subprocess module is imported: before the login begins, and on a warm call). ``stderr_fd``:
    where its stderr goes; None: a pipe too (``.stderr``). Our own descriptors are close-on-exec (PEP 446),
    so the child holds only these three; ssh sets its own SIGPIPE handling."""

    def __init__(self, argv: list[str], stderr_fd: int | None = None) -> None:
        child_in, self_in = os.pipe()
        self_out, child_out = os.pipe()
        self_err, child_err = os.pipe() if stderr_fd is None else (-1, stderr_fd)
        try:
            self.pid = os.posix_spawnp(argv[0], argv, dict(os.environ), file_actions=[
                (os.POSIX_SPAWN_DUP2, child_in, 0), (os.POSIX_SPAWN_DUP2, child_out, 1),
                (os.POSIX_SPAWN_DUP2, child_err, 2)])
        except OSError:
            for fd in (child_in, self_in, self_out, child_out, *((self_err, child_err) if self_err >= 0 else ())):
                os.close(fd)
            raise
        os.close(child_in)
        os.close(child_out)
        self.stdin = os.fdopen(self_in, "wb")
        self.stdout = os.fdopen(self_out, "rb")
        self.stderr = None
        if self_err >= 0:
            os.close(child_err)
            self.stderr = os.fdopen(self_err, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        self.stdout.close()
        if self.stderr is not None:
            self.stderr.close()
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass


def _launch(socket_path: str, argv: list[str]) -> None:
    import fcntl

    lock = os.open(socket_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)  # close-on-exec: ssh never holds it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another command is opening the master right now: it will be there
        os.close(lock)
        return
    if os.path.exists(socket_path):
        os.close(lock)
        return
    errors_path = f"{socket_path}.err-{os.getpid()}"
    try:  # the call's stderr: an unnamed file (the master, backgrounded, keeps the stderr it started with)
        errors = os.fdopen(os.open(errors_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), "w+b")
        os.unlink(errors_path)
        proc = Spawned(argv, errors.fileno())
    except OSError:
        os.close(lock)
        return
    _pending[socket_path] = (argv, proc, lock, errors)


def adopt(socket_path: str, argv: list[str]) -> tuple[Spawned, int, io.BufferedRandom] | None:
    """The call started here for ``socket_path``: (process, the socket's lock fd, its stderr file) when it
    is exactly ``argv`` (the caller feeds its stdin, reads it, and releases the lock), else None (one that
    differs is killed before it reads a request; the caller connects as ever)."""
    entry = _pending.pop(socket_path, None)
    if entry is None:
        return None
    started, proc, lock, errors = entry
    if started == argv:
        return proc, lock, errors
    global found_record
    found_record = False  # the record is out of date: the command writes a new one
    proc.kill()
    proc.stdin.close()
    proc.wait()
    errors.close()
    os.close(lock)
    return None


def remember(config_cache_file: str, socket: str, argv: list[str], known_hosts: str, ssh_config: str | None) -> None:
    """After a read-only command used the shared master: the record the next cold start uses."""
    root = os.environ.get("WORKFLOW_ROOT")
    parsed = command_prefix(sys.argv[1:])
    if found_record or os.environ.get("WORKFLOW_PRELAUNCH", "1") == "0" or parsed is None or not root:
        return
    import json

    try:
        with open(config_cache_file, encoding="utf-8") as handle:
            cached = json.load(handle)
        files = dict(cached["files"])
        if ssh_config:
            files[ssh_config] = file_mark(ssh_config, content=True)
        for name in _CODE:  # the code that makes the argv: an upgrade never runs an old one
            files[os.path.join(_HELPERS, name)] = file_mark(os.path.join(_HELPERS, name))
        path, identity = record_path(root, parsed[1], parsed[0])
        data = {"schema_version": SCHEMA_VERSION, "identity": identity, "files": files, "env": cached["env"],
                "socket": socket, "argv": list(argv), "known_hosts": known_hosts}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(marshal.dumps(data))
        os.replace(tmp, path)
        _prune(os.path.dirname(path))
    except (OSError, ValueError, KeyError, TypeError):
        return


def _prune(directory: str) -> None:
    """Keep the MAX_RECORDS newest records (one per command and command line prefix)."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("prelaunch-") and entry.name.endswith(".marshal"):
                found.append((entry.stat().st_mtime_ns, entry.path))
    for _, old in sorted(found)[:-MAX_RECORDS]:
        try:
            os.unlink(old)
        except OSError:
            pass
