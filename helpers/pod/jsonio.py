"""JSON state files on the pod: written atomically (temp + fsync + rename) under a lock.

Readers never see a half-written file: a writer creates a temp file in the same directory and
renames it over the old one. Read-modify-write cycles hold an flock on a sibling ``.lock`` file.
An unreadable or corrupt file is an error (exit 6), never silently treated as empty.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
from typing import Any, Iterator, Optional

from .errors import DiskFullError, ExitCode, WorkflowError
from .schema import check

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def utc_now() -> str:
    """UTC timestamp with milliseconds, ISO 8601 with a Z."""
    return utc_at(None)


def utc_at(epoch: Optional[float]) -> str:
    """``epoch`` (seconds; None = now) as a UTC timestamp with milliseconds, ISO 8601 with a Z."""
    moment = _dt.datetime.now(_dt.timezone.utc) if epoch is None else _dt.datetime.fromtimestamp(
        epoch, _dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_utc(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        stamp = _dt.datetime.strptime(text.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        try:
            stamp = _dt.datetime.strptime(text.rstrip("Z"), "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            return None
    return stamp.replace(tzinfo=_dt.timezone.utc).timestamp()


def write_json(path: str, data: Any, mode: int = 0o644, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``data`` as JSON (``durable`` also fsyncs it)."""
    write_bytes(path, (json.dumps(data, indent=1, sort_keys=False) + "\n").encode("utf-8"), mode, durable)


def write_bytes(path: str, payload: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Atomically replace ``path``; a full filesystem is a DiskFullError naming it (exit 6)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        import tempfile  # only writers need it (random, shutil): not on the read-only path

        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise


def read_json(path: str, what: str = "state file") -> Optional[Any]:
    """The parsed file, None if it does not exist; a corrupt file raises exit 6."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WorkflowError(f"cannot read {what} {path}: {exc.strerror}", ExitCode.STATE_UNREADABLE) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        problem = "it is empty" if not raw.strip() else f"not JSON ({exc.__class__.__name__}: {str(exc)[:60]})"
        raise WorkflowError(f"{what} {path} is corrupt: {problem}; inspect it (workflow.sh never repairs it "
                            "silently)", ExitCode.STATE_UNREADABLE) from None
    return check(what, path, data)


def keep_corrupt(path: str) -> str:
    """Rename a corrupt file to ``<path>.corrupt-<UTC time>`` (before anything is written in its place)."""
    kept = f"{path}.corrupt-{utc_now().replace(':', '')}"
    os.replace(path, kept)
    return kept


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding ``path`` (its nearest existing parent)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while current != os.path.dirname(current) and not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def disk_full_error(path: str, exc: OSError) -> DiskFullError:
    """One line naming the full filesystem (exit 6: a state file cannot be written)."""
    where = mount_point(path)
    try:
        stat = os.statvfs(where)
        free = f"{stat.f_bavail * stat.f_frsize // 1024} KiB free of {stat.f_blocks * stat.f_frsize // 1024} KiB"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"the filesystem {where} on the pod is full ({exc.strerror}; {free}) so {path} cannot be "
                         "written; free space there (or move OPS_REMOTE_OUTPUTS_DIR), then try again", where,
                         int(exc.errno or errno.ENOSPC), exc.strerror or os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path + '.lock'`` (created if needed)."""
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def locked_dir(path: str) -> Iterator[None]:
    """Hold an exclusive flock on the directory ``path`` itself (no lock file is left behind)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_jsonl(path: str, record: Any) -> None:
    """Append one JSON line (O_APPEND writes of one line are atomic enough for logs)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise
    finally:
        os.close(fd)
