"""One real `mlflow server` on loopback for the tests: a sqlite backend and a served artifact root
under its own directory, on a free port. Used by the session fixture ``mlflow_server`` in conftest.py.
``stop()`` and ``start()`` let one test take the server down mid-run and bring it back on the same
port (same store: nothing is lost). A missing mlflow fails the test that asked for it (never skips)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

START_TIMEOUT = 120.0  # the first start imports a lot (alembic migrates the fresh sqlite store)


def mlflow_bin() -> Optional[str]:
    found = Path(sys.executable).with_name("mlflow")
    return str(found) if found.exists() else shutil.which("mlflow")


@dataclass
class MlflowServer:
    directory: Path
    port: int
    proc: Optional[subprocess.Popen] = None
    starts: List[float] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def start(self) -> None:
        binary = mlflow_bin()
        if not binary:
            raise RuntimeError("mlflow is not installed (pip install mlflow)")
        argv = [binary, "server", "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
                "--artifacts-destination", str(self.directory / "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1"]
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - handed to the server
        env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                     cwd=self.directory, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}): "
                                   f"{(self.directory / 'server.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT}s")
            time.sleep(0.2)
        self.starts.append(time.time())

    def stop(self) -> None:
        """Kill the server and everything it started (its workers), as a crash would, and wait until it no
        longer answers. The sqlite store keeps every committed request."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while self.answers() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.proc = None

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def start_server(directory: Path, port: int) -> MlflowServer:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "artifacts").mkdir(exist_ok=True)
    server = MlflowServer(directory, port)
    server.start()
    return server


def free_port_for_bench() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
