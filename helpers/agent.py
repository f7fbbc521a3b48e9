"""The local side of the pod agent: ship helpers/pod as one versioned file, call its operations.

The agent is a zipapp built from helpers/pod/*.py and named by the hash of its content
(``_control/agent-<hash>.pyz`` under OPS_REMOTE_OUTPUTS_DIR). A call runs
``python3 -I -S <that file> <op>`` with a JSON request on stdin and reads one JSON reply from
stdout; progress lines arrive on stderr and are shown as they come. The first run unpacks the
bundle beside itself (``agent-<hash>.d/``); later calls run its ``entry.py`` as a plain script
(no zipimport, no runpy). When that is not there (python3 says "can't open file") the .pyz is
run, and when that is missing too it is uploaded once and the call repeated, so a read-only
command costs one round trip in the steady state.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers.errors import ExitCode, WorkflowError
from helpers.prelaunch import sha256

if TYPE_CHECKING:
    from helpers.resolved import Config
    from helpers.transport import Transport

POD_PACKAGE = Path(__file__).resolve().parent / "pod"
BUNDLE_FORMAT = 1
DEFAULT_TIMEOUT_SECS = 600.0  # no call waits on the pod without a bound (streams follow a bounded task)
_MAIN = b"""import os, sys
if sys.version_info < (3, 9):
    sys.stderr.write("workflow.sh agent: python3 >= 3.9 is needed on the pod, found %s\\n" % sys.version.split()[0])
    sys.exit(3)
# First run: unpack beside the .pyz so python can cache bytecode (imports from a zip never are).
archive = os.path.abspath(sys.argv[0])
unpacked = archive[:-len(".pyz")] + ".d"
if not os.path.isdir(unpacked):
    import shutil, tempfile, zipfile
    staging = None
    try:
        staging = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(archive))
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging, [n for n in bundle.namelist() if n.startswith("pod/") or n == "entry.py"])
        os.rename(staging, unpacked)
    except OSError:
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isdir(unpacked):
            unpacked = archive
sys.path.insert(0, unpacked)
from pod.agent_main import main
sys.exit(main(sys.argv[1:]))
"""
# Later calls run the unpacked entry.py as a plain script: no zipimport, no runpy.
_ENTRY = b"""import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pod.agent_main import main
sys.exit(main(sys.argv[1:]))
"""
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
# How the .pyz is run (the unpacked entry.py was missing). Not `python3 agent.pyz`: python looks for a
# zip at that path, and when there is none yet it opens the path again as a script; if another
# command's upload lands in between (parallel first calls to a fresh pod), the zip is read as Python
# source ("source code cannot contain null bytes"). Here the archive is opened once: missing is said as
# python says it (the caller uploads it), present is complete (uploads are renamed into place).
_RUN_ARCHIVE = (
    "import sys, zipfile\n"
    "path = sys.argv[1]\n"
    "try:\n"
    "    main = zipfile.ZipFile(path).read('__main__.py')\n"
    "except FileNotFoundError:\n"
    "    sys.stderr.write(\"python3: can't open file %r: [Errno 2] No such file or directory\\n\" % path)\n"
    "    sys.exit(2)\n"
    "sys.argv = sys.argv[1:]\n"
    "exec(compile(main, path + '/__main__.py', 'exec'), {'__name__': '__main__'})\n"
)


def _sources() -> list[tuple[str, bytes]]:
    return [(f"pod/{path.relative_to(POD_PACKAGE).as_posix()}", path.read_bytes())
            for path in sorted(POD_PACKAGE.rglob("*.py"))]  # with subpackages (pod/executors/)


def bundle_hash(sources: list[tuple[str, bytes]] | None = None) -> str:
    digest = sha256(f"format {BUNDLE_FORMAT}\n".encode() + _MAIN + _ENTRY)
    for name, data in sources or _sources():
        digest.update(name.encode() + b"\0" + sha256(data).digest())
    return digest.hexdigest()[:16]


def _source_marks() -> dict[str, list[int]]:
    """Each pod source's mtime (ns), size and inode: what the cached hash was made from."""
    marks: dict[str, list[int]] = {}
    pending = [str(POD_PACKAGE)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(entry.path)
                elif entry.name.endswith(".py"):
                    info = entry.stat()
                    marks[entry.path] = [info.st_mtime_ns, info.st_size, info.st_ino]
    return marks


def cached_bundle_hash(cache_dir: Path) -> str:
    """bundle_hash(), kept in ``cache_dir`` while no pod source changed (stat, not a read of every file)."""
    path = cache_dir / "agent-bundle.json"
    marks = _source_marks()
    try:
        with open(path, encoding="utf-8") as handle:
            cached = json.load(handle)
        if cached["package"] == str(POD_PACKAGE) and cached["sources"] == marks and cached["format"] == BUNDLE_FORMAT:
            return str(cached["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = bundle_hash()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"package": str(POD_PACKAGE), "format": BUNDLE_FORMAT, "hash": digest,
                                   "sources": marks}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a cache only
    return digest


def build_bundle() -> bytes:
    """The agent zipapp, byte-for-byte reproducible."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in [("__main__.py", _MAIN), ("entry.py", _ENTRY), *_sources()]:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()


class Agent:
    """Calls operations of the pod agent over one transport."""

    def __init__(self, transport: Transport, cfg: Config, stderr: Callable[[bytes], None] | None = None) -> None:
        self.transport = transport
        self.cfg = cfg
        self.hash = cached_bundle_hash(Path(cfg.project_root) / ".workflow" / "cache")
        outputs = cfg.text("OPS_REMOTE_OUTPUTS_DIR").rstrip("/")
        self.path = f"{outputs}/_control/agent-{self.hash}.pyz"
        self.entry = f"{outputs}/_control/agent-{self.hash}.d/entry.py"  # unpacked by the .pyz's first run
        self._stderr = stderr or _write_stderr
        self.uploads = 0

    def argv(self, op: str, *extra: str, archive: bool = False) -> list[str]:
        if archive:  # the .pyz through _RUN_ARCHIVE: opened once, never read as a script (see there)
            return [self.transport.agent_python, "-I", "-S", "-c", _RUN_ARCHIVE, self.path, op, *extra]
        return [self.transport.agent_python, "-I", "-S", self.entry, op, *extra]

    def call(self, op: str, args: dict[str, Any] | None = None, *, sync_env: bool = False,
             timeout: float | None = None, on_stdout: Callable[[bytes], None] | None = None,
             on_stderr: Callable[[bytes], None] | None = None) -> Any:
        """Run ``op`` on the pod and return its result; a pod-side error is re-raised here.

        ``sync_env`` also writes the resolved config (secrets included) to REMOTE_ENV_PATH
        (mode 0600) when it changed. With ``on_stdout`` the op's stdout streams to it and the
        exit code is returned instead of a parsed reply.
        """
        # secrets travel only inside the env file's content, never in the config ops keep (manifests)
        request: dict[str, Any] = {"config": self.cfg.pod_values(include_secrets=False), "args": args or {}}
        if sync_env:
            request["env_file"] = env_file_text(self.cfg)
        payload = json.dumps(request).encode()
        for attempt in range(3):
            missing = _MissingWatcher(self._stderr, capture=on_stdout is not None, tap=on_stderr)
            bound = DEFAULT_TIMEOUT_SECS if timeout is None and on_stdout is None else timeout
            # the unpacked entry first; missing: the .pyz (it unpacks itself), uploaded if missing too
            result = self.transport.run(self.argv(op, archive=attempt > 0), stdin=payload, timeout=bound,
                                        on_stdout=on_stdout, on_stderr=missing)
            if missing.missing and attempt == 1:
                self.upload()
            if missing.missing and attempt < 2:
                continue
            if result.exit_code == 127:
                raise WorkflowError(f"python3 is not installed on {self.transport.description}; install it "
                                    "(3.9+), e.g. run bootstrap with AUTO_INSTALL_PREREQS=1", ExitCode.FAILED)
            if on_stdout is not None:
                if result.exit_code != 0 and missing.captured:
                    raise WorkflowError(missing.captured.decode(errors="replace").strip().splitlines()[-1],
                                        result.exit_code)
                return result.exit_code
            return _reply(result.stdout, result.exit_code, self.transport.description)
        raise AssertionError("unreachable")

    def upload(self) -> None:
        self.transport.put(build_bundle(), self.path, 0o644)
        self.uploads += 1


class _MissingWatcher:
    """Forwards the agent's stderr, but notices python's "can't open file" for a missing agent."""

    def __init__(self, forward: Callable[[bytes], None], capture: bool = False,
                 tap: Callable[[bytes], None] | None = None) -> None:
        self.forward = forward
        self.tap = tap  # also sees the op's stderr (task-logs -f: where its output began in the log)
        self.missing = False
        self._head = b""
        self.capture = capture  # streaming ops: stderr carries only an error message; keep it
        self.captured = b""

    def __call__(self, chunk: bytes) -> None:
        if not self._head:
            self._head = chunk[:400]
            if b"can't open file" in self._head and b"agent-" in self._head:
                self.missing = True
                return
        if self.missing:
            return
        if self.tap is not None:
            self.tap(chunk)
        if self.capture:
            self.captured += chunk
        else:
            self.forward(chunk)


def _write_stderr(chunk: bytes) -> None:
    sys.stderr.buffer.write(chunk)
    sys.stderr.buffer.flush()


def _reply(stdout: bytes, exit_code: int, where: str) -> Any:
    text = stdout.decode("utf-8", errors="replace").strip()
    try:
        reply = json.loads(text.splitlines()[-1]) if text else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise WorkflowError(f"the pod agent on {where} gave no answer (exit {exit_code}): {text[-200:]!r}",
                            ExitCode.FAILED)
    if not reply["ok"]:
        raise WorkflowError(str(reply.get("error", "unknown error")), int(reply.get("code", 1)))
    return reply.get("result")


def env_file_text(cfg: Config) -> dict[str, str]:
    """The pod env file (REMOTE_ENV_PATH): every resolved key, shell-quoted, secrets included."""
    import shlex

    from helpers.pod.context import ENV_FILE_MARKER

    lines = [f"{ENV_FILE_MARKER} from {cfg.env_file.name}"
             f"{' + profile ' + cfg.profile if cfg.profile else ''}; edit that file, not this one"]
    for key, value in sorted(cfg.pod_values(include_secrets=True).items()):
        lines.append(f"{key}={shlex.quote(value)}")
    return {"path": cfg.text("REMOTE_ENV_PATH"), "content": "\n".join(lines) + "\n"}
